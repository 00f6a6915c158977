"""fsod_d2.utils and the config builder: the one datasets-root reader, atomic write, sample std,
setup_cfg."""

import json
import math
import os

import pytest

from fsod_d2 import setup_cfg
from fsod_d2.data.datasets import datasets_root as data_datasets_root
from fsod_d2.data.datasets.coco_fewshot import parse_register_entry
from fsod_d2.utils import atomic_write, datasets_root, expand_path, mean_std

from .common import TINY_CONFIG


def test_datasets_root_expands_user_and_variables(monkeypatch, tmp_path):
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    assert datasets_root() == "datasets"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DATA_DISK", "/mnt/disk")
    monkeypatch.setenv("DETECTRON2_DATASETS", "~/d2")
    assert datasets_root() == str(tmp_path / "d2")
    monkeypatch.setenv("DETECTRON2_DATASETS", "$DATA_DISK/d2")
    assert datasets_root() == "/mnt/disk/d2"
    assert data_datasets_root is datasets_root  # one reader, re-exported


def test_expand_path_gives_the_datasets_root_when_the_variable_is_unset(monkeypatch, tmp_path):
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert expand_path("$DETECTRON2_DATASETS/parts/train.json") == "datasets/parts/train.json"
    assert expand_path("${DETECTRON2_DATASETS}/a") == "datasets/a"
    # another name that starts the same, and other unset variables, are left alone
    assert expand_path("$DETECTRON2_DATASETS_X/a") == "$DETECTRON2_DATASETS_X/a"
    assert expand_path("$NOT_SET_ANYWHERE/a") == "$NOT_SET_ANYWHERE/a"
    assert expand_path("~/a") == str(tmp_path / "a")
    monkeypatch.setenv("DETECTRON2_DATASETS", "~/d2")
    assert expand_path("$DETECTRON2_DATASETS/parts") == str(tmp_path / "d2" / "parts")
    # FSOD.REGISTER entries use it for every path
    monkeypatch.delenv("DETECTRON2_DATASETS")
    entry = parse_register_entry(
        "name=p;json=$DETECTRON2_DATASETS/p/train.json;images=${DETECTRON2_DATASETS}/p/images;"
        "base=a"
    )
    assert (entry["json"], entry["images"]) == ("datasets/p/train.json", "datasets/p/images")


def test_atomic_write_replaces_whole_files_only(tmp_path):
    path = tmp_path / "sub" / "a.json"
    with atomic_write(path) as f:
        json.dump({"v": 1}, f)
    assert json.loads(path.read_text()) == {"v": 1}
    assert os.stat(path).st_mode & 0o777 == 0o644
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write('{"v": 2, "trunc')
            raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"v": 1}  # the previous file is intact
    assert os.listdir(path.parent) == ["a.json"]  # no temporary file left
    with atomic_write(path, "wb") as f:
        f.write(b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    with pytest.raises(ValueError, match="for writing"):
        with atomic_write(path, "a"):
            pass


def test_mean_std_is_the_sample_std_over_finite_values():
    assert mean_std([10.0, 14.0, 12.0]) == {"mean": 12.0, "std": 2.0, "n": 3}
    assert mean_std([4.0, float("nan"), None, 6.0]) == {
        "mean": 5.0,
        "std": pytest.approx(math.sqrt(2.0)),
        "n": 2,
    }
    one = mean_std([3.0])
    assert one["mean"] == 3.0 and math.isnan(one["std"]) and one["n"] == 1
    empty = mean_std([float("nan")])
    assert math.isnan(empty["mean"]) and math.isnan(empty["std"]) and empty["n"] == 0


def test_setup_cfg_merges_file_and_overrides():
    cfg = setup_cfg(str(TINY_CONFIG), ["FSOD.N_WAY", "4", "FSOD.K_SHOT", 5])
    assert cfg.is_frozen() and (cfg.FSOD.N_WAY, cfg.FSOD.K_SHOT) == (4, 5)
    assert cfg.MODEL.META_ARCHITECTURE == "FsodRCNN" and cfg.FSOD.SUPPORT.SIZE == 64
    assert not setup_cfg(str(TINY_CONFIG), freeze=False).is_frozen()
    with pytest.raises(KeyError, match="FSOD.NO_SUCH_KEY is not a config key; the keys are"):
        setup_cfg(str(TINY_CONFIG), ["FSOD.NO_SUCH_KEY", "1"])
