"""Every tool turns a user's mistake into one line, "<tool>: error: ...", and exit code 1,
before any work: a misspelled config key ("did you mean"), a config file that does not exist
(close matches), an --output that is empty, a file or cannot be written. Library checks of
fsod_d2.utils.cli and fsod_d2.config behind them."""

import json
import logging

import pytest
import torch

from fsod_d2.config import ConfigLoadError, setup_cfg
from fsod_d2.utils.cli import (
    UsageError,
    check_output_dir,
    check_output_file,
    check_prototype_file,
    check_weights_file,
)
from fsod_d2.utils.text import count

from .common import CONFIG_DIR, REPO_ROOT, TINY_CONFIG, load_tool

DEMO = CONFIG_DIR / "demo" / "fsod_toy_base.yaml"


@pytest.fixture(scope="module")
def tools():
    return {
        name: load_tool(name)
        for name in (
            "train_net",
            "visualize_episodes",
            "prepare_fewshot_splits",
            "aggregate_seeds",
            "make_toy_dataset",
        )
    }


def _error(tool, argv) -> str:
    main = getattr(tool, "run", None) or tool.main
    with pytest.raises(SystemExit) as e:
        main(argv)
    msg = e.value.code
    assert isinstance(msg, str), msg  # SystemExit(str): printed to stderr, exit code 1
    assert "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------------------- config mistakes
@pytest.mark.parametrize("name", ["train_net", "visualize_episodes"])
def test_misspelled_config_key(tools, name, tmp_path):
    argv = ["--config-file", str(TINY_CONFIG), "MODEL.FSOD.RELATON_DIM", "8"]
    if name == "visualize_episodes":
        argv[2:2] = ["--output", str(tmp_path)]
    assert _error(tools[name], argv) == (
        f"{name}.py: error: config override: MODEL.FSOD.RELATON_DIM is not a config key; "
        "did you mean MODEL.FSOD.RELATION_DIM?"
    )


@pytest.mark.parametrize("name", ["train_net", "visualize_episodes"])
def test_config_file_that_does_not_exist(tools, name, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    msg = _error(tools[name], ["--config-file", "configs/demo/fsod_toy_bse.yaml"])
    assert msg.startswith(
        f"{name}.py: error: config file configs/demo/fsod_toy_bse.yaml does not exist; "
        "did you mean configs/demo/fsod_toy_base.yaml"
    )


def test_config_errors_name_the_file_and_the_fix(tmp_path, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{TINY_CONFIG}"\nMODEL:\n  FSOD:\n    RELATON_DIM: 8\n')
    with pytest.raises(ConfigLoadError) as e:
        setup_cfg(str(bad))
    assert str(e.value) == (
        f"config file {bad}: MODEL.FSOD.RELATON_DIM is not a config key; did you mean "
        "MODEL.FSOD.RELATION_DIM?"
    )
    bad.write_text("MODEL:\n  FSOD: [\n")
    with pytest.raises(ConfigLoadError, match=rf"config file {bad}: not valid YAML \(.*line 3"):
        setup_cfg(str(bad))
    bad.write_text("_BASE_: nothere.yaml\n")
    with pytest.raises(ConfigLoadError, match=r"the file it inherits \(_BASE_\) .*nothere.yaml"):
        setup_cfg(str(bad))
    with pytest.raises(ConfigLoadError) as e:
        setup_cfg(str(TINY_CONFIG), ["MODEL.FSOD.RELATION_DIM", "wide"])
    assert str(e.value) == (
        "config override: MODEL.FSOD.RELATION_DIM takes a value of int (like 32), not 'wide' (str)"
    )
    with pytest.raises(ConfigLoadError, match="KEY VALUE pairs; got an odd number of words"):
        setup_cfg(str(TINY_CONFIG), ["MODEL.FSOD.RELATION_DIM"])
    with pytest.raises(ConfigLoadError, match="FSOD.REGISTER entry 'garbage'"):
        setup_cfg(str(TINY_CONFIG), ["FSOD.REGISTER", "['garbage']"])
    monkeypatch.chdir(tmp_path)  # no configs/ here: the checkout's are searched
    with pytest.raises(ConfigLoadError, match=r"did you mean .*fsod_toy_base\.yaml"):
        setup_cfg("configs/demo/fsod_toy_base.yml")


# ---------------------------------------------------------------------------- CPU configs
def _setup_warnings(config, monkeypatch, cuda: bool) -> list:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda r: records.append(r.getMessage())
    log = logging.getLogger("fsod_d2.config")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        cfg = setup_cfg(str(config))
    finally:
        log.removeHandler(handler)
    return cfg, records


@pytest.mark.parametrize(
    "config", ["fsod_mnv2_cpu.yaml", "demo/fsod_toy_mnv2.yaml", "demo/fsod_toy_base.yaml"]
)
def test_cpu_configs_say_cpu_and_do_not_warn(config, monkeypatch):
    cfg, records = _setup_warnings(CONFIG_DIR / config, monkeypatch, cuda=False)
    assert cfg.MODEL.DEVICE == "cpu"
    assert not any("CUDA is not available" in r for r in records)


def test_gpu_configs_fall_back_to_the_cpu_with_a_warning(monkeypatch):
    cfg, records = _setup_warnings(CONFIG_DIR / "fsod_5way3shot.yaml", monkeypatch, cuda=False)
    assert cfg.MODEL.DEVICE == "cpu"
    assert records == ["MODEL.DEVICE=cuda but CUDA is not available: using the CPU"]


# ---------------------------------------------------------------------------- output folders
def _output_cases(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return [
        ("", "is empty; give the folder to write to"),
        (str(a_file), f"{a_file} is a file, not a folder"),
        (str(a_file / "sub"), f"{a_file / 'sub'} cannot be written"),
    ]


def test_output_checks(tmp_path):
    for path, expected in _output_cases(tmp_path):
        with pytest.raises(UsageError) as e:
            check_output_dir(path, "--output")
        assert str(e.value).startswith("--output ") and expected in str(e.value)
    assert check_output_dir(str(tmp_path / "new" / "dir")) == str(tmp_path / "new" / "dir")
    assert (tmp_path / "new" / "dir").is_dir() and not any((tmp_path / "new" / "dir").iterdir())
    with pytest.raises(UsageError, match="is a folder; give a file name"):
        check_output_file(str(tmp_path), "--json")
    with pytest.raises(UsageError, match="a_file is a file, not a folder"):
        check_output_file(str(tmp_path / "a_file" / "x.json"), "--json")


@pytest.mark.parametrize(
    "name, argv",
    [
        ("visualize_episodes", ["--config-file", str(TINY_CONFIG), "--output", "{out}"]),
        ("prepare_fewshot_splits", ["json", "--input", "{coco}", "--output-dir", "{out}"]),
        ("make_toy_dataset", ["--root", "{out}"]),
        ("train_net", ["--config-file", str(TINY_CONFIG), "OUTPUT_DIR", "{out}"]),
    ],
)
def test_tools_refuse_unusable_output_folders(tools, name, argv, tmp_path):
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    option = {"prepare_fewshot_splits": "--output-dir", "make_toy_dataset": "--root"}
    option = option.get(name, "OUTPUT_DIR" if name == "train_net" else "--output")
    for path, expected in _output_cases(tmp_path):
        args = [a.replace("{out}", path).replace("{coco}", str(coco)) for a in argv]
        msg = _error(tools[name], args)
        assert msg.startswith(f"{name}.py: error: {option} "), msg
        assert expected in msg, msg


# ---------------------------------------------------------------------------- other tools
def test_prepare_fewshot_splits_bad_inputs(tools, tmp_path):
    tool = tools["prepare_fewshot_splits"]
    out = str(tmp_path / "splits")
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    assert "not valid JSON (line 1" in _error(
        tool, ["json", "--input", str(broken), "--output-dir", out]
    )
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    assert "is not a COCO annotation file" in _error(
        tool, ["json", "--input", str(listing), "--output-dir", out]
    )
    assert _error(tool, ["json", "--input", str(listing)]) == (
        "prepare_fewshot_splits.py: error: json mode needs --input FILE and --output-dir DIR"
    )
    msg = _error(tool, ["coco17", "--root", str(tmp_path)])
    assert "coco/annotations/instances_train2017.json not found under" in msg


def test_make_toy_dataset_bad_counts(tools, tmp_path):
    msg = _error(tools["make_toy_dataset"], ["--root", str(tmp_path / "t"), "--num-train", "0"])
    assert msg == "make_toy_dataset.py: error: num_train and num_val must be >= 1"


# ---------------------------------------------------------------------------- files given
def test_weights_and_prototype_file_checks(tmp_path):
    with pytest.raises(UsageError, match="no model weights"):
        check_weights_file("", "--weights")
    with pytest.raises(UsageError, match=f"--weights {tmp_path / 'w.pth'}: no such file"):
        check_weights_file(str(tmp_path / "w.pth"), "--weights")
    (tmp_path / "w.pth").write_bytes(b"")
    with pytest.raises(UsageError, match=r"is empty \(0 bytes\)"):
        check_weights_file(str(tmp_path / "w.pth"), "--weights")
    check_weights_file("detectron2://ImageNetPretrained/MSRA/R-50.pkl")  # left to detectron2

    from fsod_d2.modeling.support import PrototypeSet

    protos = PrototypeSet(torch.tensor([0, 1]), torch.zeros(2, 4), torch.zeros(2, 4, 2, 2))
    protos.save(str(tmp_path / "p.pth"))
    check_prototype_file(str(tmp_path / "p.pth"))
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((tmp_path / "p.pth").read_bytes()[:300])
    with pytest.raises(UsageError) as e:
        check_prototype_file(str(truncated))
    assert "\n" not in str(e.value)
    assert f"--prototypes {truncated} cannot be read" in str(e.value)
    assert "compute the prototypes again with --supports DIR" in str(e.value)
    torch.save({"model": {"w": torch.zeros(1)}}, tmp_path / "weights.pth")
    with pytest.raises(UsageError, match="not a prototype file .*looks like model weights"):
        check_prototype_file(str(tmp_path / "weights.pth"))
    with pytest.raises(UsageError, match="no such file"):
        check_prototype_file(str(tmp_path / "nope.pth"))


def test_count_says_one_class_and_two_classes():
    assert [count(n, "class") for n in (0, 1, 2)] == ["0 classes", "1 class", "2 classes"]
    assert [count(n, "shot") for n in (1, 3)] == ["1 shot", "3 shots"]
    assert count(2, "box") == "2 boxes" and count(2, "query", "queries") == "2 queries"
