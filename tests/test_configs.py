"""Every YAML under configs/ loads with setup_cfg; its datasets are registered names;
CPU-sized ones build a model."""

import pytest
import yaml
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from fsod_d2 import setup_cfg

from .common import CONFIG_DIR

ALL_CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))
IDS = [str(p.relative_to(CONFIG_DIR)) for p in ALL_CONFIGS]
# folders whose configs use datasets that their script registers at run time
SCRIPT_REGISTERED = {"benchmarks"}
# overlays without _BASE_, merged by their script onto an already loaded config (a _BASE_ would
# reset what the script set in between): overlay -> the config it is merged onto
OVERLAYS = {"benchmarks/tfa_mnv2_cpu_finetune.yaml": "benchmarks/tfa_mnv2_cpu.yaml"}


def _load(path):
    base = OVERLAYS.get(str(path.relative_to(CONFIG_DIR)))
    cfg = setup_cfg(str(CONFIG_DIR / base) if base else "", freeze=False)
    cfg.merge_from_file(str(path))
    return cfg


def _is_cpu_sized(cfg) -> bool:
    return cfg.MODEL.BACKBONE.NAME == "build_fsod_tiny_backbone"


def test_config_tree_is_complete():
    names = set(IDS)
    for required in (
        "Base-FSOD-C4.yaml",
        "fsod_5way3shot.yaml",
        "fsod_5way3shot_finetune.yaml",
        "fsod_5way4shot_s384.yaml",
        "demo/fsod_toy_base.yaml",
        "quick_schedules/fsod_tiny_cpu.yaml",
        "voc/fsod_split1_5way3shot.yaml",
    ):
        assert required in names


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=IDS)
def test_config_loads(path):
    cfg = _load(path)
    # the benchmarks' TFA baseline is a plain detectron2 Faster R-CNN; every other config FsodRCNN
    baseline = path.parent.name == "benchmarks" and path.name.startswith("tfa_")
    assert cfg.MODEL.META_ARCHITECTURE == ("GeneralizedRCNN" if baseline else "FsodRCNN")
    with open(path) as f:
        raw = yaml.safe_load(f)
    if path.name != "Base-FSOD-C4.yaml":
        overlay = str(path.relative_to(CONFIG_DIR)) in OVERLAYS
        assert ("_BASE_" in raw) != overlay, "leaves inherit and set only what differs"
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    names += [cfg.FSOD.TEST.SUPPORT_DATASET] if cfg.FSOD.TEST.SUPPORT_DATASET else []
    unknown = [n for n in names if n not in DatasetCatalog]
    if path.parent.name not in SCRIPT_REGISTERED:
        assert not unknown, f"{path}: datasets not registered: {unknown}"
    if cfg.DATASETS.TEST:
        assert cfg.FSOD.TEST.SUPPORT_DATASET, "evaluation needs FSOD.TEST.SUPPORT_DATASET"


def test_headline_config():
    cfg = _load(CONFIG_DIR / "fsod_5way3shot.yaml")
    assert (cfg.FSOD.N_WAY, cfg.FSOD.K_SHOT, cfg.FSOD.SUPPORT.SIZE) == (5, 3, 320)
    assert cfg.MODEL.WEIGHTS.startswith("detectron2://ImageNetPretrained/")
    assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.SOLVER.REFERENCE_WORLD_SIZE > 0
    assert _load(CONFIG_DIR / "fsod_5way3shot_s384.yaml").FSOD.SUPPORT.SIZE == 384
    # the recommended setting: 5-way 4-shot, 384 px supports, the headline's data and schedule
    rec = _load(CONFIG_DIR / "fsod_5way4shot_s384.yaml")
    assert (rec.FSOD.N_WAY, rec.FSOD.K_SHOT, rec.FSOD.SUPPORT.SIZE) == (5, 4, 384)
    assert rec.DATASETS.TRAIN == cfg.DATASETS.TRAIN and rec.SOLVER.MAX_ITER == cfg.SOLVER.MAX_ITER
    ft = _load(CONFIG_DIR / "fsod_5way3shot_finetune.yaml")
    assert ft.DATASETS.TRAIN[0].endswith("_novel") and ft.SOLVER.BASE_LR < cfg.SOLVER.BASE_LR


@pytest.mark.parametrize(
    "path", [p for p in ALL_CONFIGS if _is_cpu_sized(_load(p))], ids=lambda p: p.name
)
def test_cpu_sized_config_builds_a_model(path):
    cfg = _load(path)
    cfg.MODEL.DEVICE = "cpu"
    if cfg.MODEL.FSOD.BASE_CLASSIFIER.WEIGHT > 0:  # its class count comes from the dataset,
        cfg.MODEL.FSOD.BASE_CLASSIFIER.NUM_CLASSES = 7  # registered only by its benchmark
    model = build_model(cfg)
    assert type(model).__name__ == "FsodRCNN"
