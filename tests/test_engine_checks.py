"""Fail fast: a config that would fail at the first evaluation (after training) or evaluate the
wrong classes is refused before anything is built, with the config key and the fix. One test
per message; tiny registered datasets, no training."""

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from fsod_d2.data import build_episodic_train_loader, register_fewshot_coco
from fsod_d2.engine import ConfigError, FsodTrainer, check_config

from .common import get_tiny_cfg, make_coco_dataset

NAMES = ("t_chk", "t_chk_other", "t_chk_voc")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """``t_chk``: classes 3, 7 base and 11 novel (+ _base/_novel variants); ``t_chk_other``:
    other classes; ``t_chk_voc``: evaluator_type "pascal_voc"."""
    root = tmp_path_factory.mktemp("checks")
    json_path, image_root, _ = make_coco_dataset(root / "a", num_images=8, category_ids=(3, 7, 11))
    register_fewshot_coco("t_chk", json_path, image_root, ["class3", "class7"])
    register_fewshot_coco(
        "t_chk_voc", json_path, image_root, ["class3"], evaluator_type="pascal_voc"
    )
    other, other_root, _ = make_coco_dataset(root / "b", num_images=4, category_ids=(3, 7, 12))
    register_fewshot_coco("t_chk_other", other, other_root, ["class3", "class7"])
    yield root
    for name in NAMES:
        for v in (name, name + "_base", name + "_novel"):
            DatasetCatalog.remove(v)
            MetadataCatalog.remove(v)


def _cfg(root, *opts):
    return get_tiny_cfg(
        "DATASETS.TRAIN", "('t_chk_base',)", "DATASETS.TEST", "('t_chk',)",
        "FSOD.TEST.SUPPORT_DATASET", "t_chk", "OUTPUT_DIR", str(root / "out"), *opts,
    )  # fmt: skip


def test_a_consistent_config_passes(data):
    check_config(_cfg(data))
    check_config(_cfg(data, "DATASETS.TEST", "('t_chk_novel',)", "FSOD.TEST.SUPPORT_DATASET",
                      "t_chk_novel"))  # fmt: skip


def test_test_set_without_support_set(data):
    with pytest.raises(ConfigError) as e:
        check_config(_cfg(data, "FSOD.TEST.SUPPORT_DATASET", ""))
    msg = str(e.value)
    assert "DATASETS.TEST is ('t_chk',) but FSOD.TEST.SUPPORT_DATASET is empty" in msg
    assert "Set FSOD.TEST.SUPPORT_DATASET" in msg and 'DATASETS.TEST "()"' in msg


def test_support_set_lacking_test_classes(data):
    # the base variant has no novel annotation: class11 would be silently left out of nAP
    with pytest.raises(ConfigError) as e:
        check_config(_cfg(data, "FSOD.TEST.SUPPORT_DATASET", "t_chk_base"))
    msg = str(e.value)
    assert "FSOD.TEST.SUPPORT_DATASET 't_chk_base' has no usable support box" in msg
    assert "['class11']" in msg and "DATASETS.TEST 't_chk'" in msg


def test_support_set_with_other_classes(data):
    with pytest.raises(ConfigError) as e:
        check_config(_cfg(data, "FSOD.TEST.SUPPORT_DATASET", "t_chk_other"))
    assert "'t_chk_other' and DATASETS.TEST 't_chk' have different classes" in str(e.value)


def test_test_k_above_the_shots_without_fallback(data):
    cfg = _cfg(data, "FSOD.TEST.K_SHOT", 100, "FSOD.STRICT_SHOTS", True)
    with pytest.raises(ConfigError) as e:
        check_config(cfg)
    msg = str(e.value)
    assert msg.startswith("FSOD.TEST.K_SHOT=100 but FSOD.TEST.SUPPORT_DATASET 't_chk' has fewer")
    assert "Lower FSOD.TEST.K_SHOT to" in msg and "FSOD.STRICT_SHOTS False" in msg
    assert "usable boxes for 3 classes: [('class3'," in msg
    novel = ("DATASETS.TEST", "('t_chk_novel',)", "FSOD.TEST.SUPPORT_DATASET", "t_chk_novel")
    with pytest.raises(ConfigError, match=r"usable boxes for 1 class: \[\('class11', "):
        check_config(_cfg(data, *novel, "FSOD.TEST.K_SHOT", 100, "FSOD.STRICT_SHOTS", True))
    check_config(_cfg(data, "FSOD.TEST.K_SHOT", 100))  # the fallback: sampled with replacement
    with pytest.raises(ConfigError, match="FSOD.TEST.K_SHOT must be >= 1"):
        check_config(_cfg(data, "FSOD.TEST.K_SHOT", 0))


def test_training_k_above_the_shots_without_fallback(data, tmp_path, monkeypatch):
    cache = tmp_path / "support_cache"  # where the support crops would go
    monkeypatch.setenv("FSOD_SUPPORT_CACHE", str(cache))
    cfg = _cfg(data, "FSOD.K_SHOT", 100, "FSOD.STRICT_SHOTS", True)
    with pytest.raises(ValueError) as e:
        build_episodic_train_loader(cfg)
    msg = str(e.value)
    assert msg.startswith("FSOD.K_SHOT=100 but 2 classes of DATASETS.TRAIN ['t_chk_base']")
    assert "FSOD.STRICT_SHOTS False" in msg
    assert not cache.exists()  # refused before cropping anything
    build_episodic_train_loader(_cfg(data, "FSOD.K_SHOT", 100, "FSOD.N_WAY", 2))  # crops
    assert any(cache.iterdir())


@pytest.mark.parametrize(
    "key, value, where",
    [
        ("DATASETS.TRAIN", "('t_chk_bse',)", "DATASETS.TRAIN"),
        ("DATASETS.TEST", "('t_chk_nvel',)", "DATASETS.TEST"),
        ("FSOD.TEST.SUPPORT_DATASET", "t_chk_base_", "FSOD.TEST.SUPPORT_DATASET"),
    ],
)
def test_unknown_dataset_names(data, key, value, where):
    with pytest.raises(ConfigError) as e:
        check_config(_cfg(data, key, value))
    msg = str(e.value)
    assert msg.startswith(f"{where}: no dataset named ") and "is registered. Did you mean" in msg
    assert "FSOD.REGISTER" in msg


def test_test_set_of_an_evaluator_type_without_evaluator(data):
    cfg = _cfg(data, "DATASETS.TEST", "('t_chk_voc',)")
    with pytest.raises(ConfigError) as e:
        check_config(cfg)
    assert "dataset 't_chk_voc' has evaluator_type 'pascal_voc'" in str(e.value)


def test_trainer_refuses_before_building_anything(data, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("built before the config was checked")

    monkeypatch.setattr(FsodTrainer, "build_model", classmethod(fail))
    monkeypatch.setattr(FsodTrainer, "build_train_loader", classmethod(fail))
    with pytest.raises(ConfigError, match="FSOD.TEST.SUPPORT_DATASET is empty"):
        FsodTrainer(_cfg(data, "FSOD.TEST.SUPPORT_DATASET", ""))
