"""``import fsod_d2`` stays lean: no generator (fsod_datagen), no scikit-image, no matplotlib."""

import subprocess
import sys

import pytest

CHECK = """
import sys
import fsod_d2
from detectron2.data import DatasetCatalog, MetadataCatalog
assert "fsod_toy_train" in DatasetCatalog.list()  # the toy data is registered ...
assert len(MetadataCatalog.get("fsod_toy_train").base_ids) == 20
print(sorted(m for m in sys.modules if m.split(".")[0] in {MODULES}))
"""


def test_import_fsod_d2_does_not_import_fixtures_or_demo_dependencies():
    modules = {"fsod_datagen", "skimage", "matplotlib"}
    out = subprocess.run(
        [sys.executable, "-c", CHECK.replace("{MODULES}", repr(modules))],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


@pytest.mark.parametrize("module", ["fsod_d2", "fsod_datagen", "benchmarks"])
def test_no_sys_path_edits_or_tests_imports_outside_tests(module):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = list((root / module).rglob("*.py")) + list((root / "tools").glob("*.py"))
    assert files
    for f in files:
        text = f.read_text()
        assert "sys.path.insert" not in text and "sys.path.append" not in text, f
        assert "from tests" not in text and "import tests" not in text, f


def test_tests_import_the_tools_one_way():
    """tools/*.py are scripts: tests load them with tests.common.load_tool (by file path) or run
    them as subprocesses, never through sys.path edits or their own importlib code."""
    from pathlib import Path

    here = Path(__file__).resolve()
    files = [f for f in here.parent.glob("*.py") if f not in (here, here.parent / "common.py")]
    assert len(files) > 10
    for f in files:
        text = f.read_text()
        assert "sys.path.insert" not in text and "sys.path.append" not in text, f
        assert "spec_from_file_location" not in text, f
