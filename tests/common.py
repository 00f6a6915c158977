"""Shared test helpers: tiny CPU configs and synthetic inputs (from :mod:`fsod_datagen.synthetic`,
which the benchmarks use too), and the one way tests import the command-line tools."""

import functools
import importlib.util
from types import ModuleType

from fsod_datagen.synthetic import (  # noqa: F401
    CONFIG_DIR,
    REPO_ROOT,
    SHAPE_COLORS,
    TINY_CONFIG,
    draw_shape,
    get_tiny_cfg,
    make_coco_dataset,
    synthetic_episode,
    synthetic_query,
    synthetic_supports,
)

TOOLS_DIR = REPO_ROOT / "tools"


@functools.cache
def load_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` as a module (the tools are scripts, not a package), imported once by
    file path: no ``sys.path`` edits."""
    path = TOOLS_DIR / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"fsod_tools_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
