"""Every YAML under configs/ loads with setup_cfg; its datasets are registered names;
CPU-sized ones build a model."""

import os
import re

import pytest
import yaml
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from fsod_d2 import setup_cfg

from .common import CONFIG_DIR, REPO_ROOT

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


# where the product names configs that a user or script runs
NAMING_FILES = ["README.md", "datasets/README.md", "benchmarks/README.md", "Makefile"]
NAMING_GLOBS = [
    "docs/*.md",
    "scripts/*",
    "tools/*.py",
    "benchmarks/*.py",
    "fsod_d2/**/*.py",
    "configs/**/*.yaml",
]


def test_every_config_the_docs_and_tools_name_exists():
    """A config named in the READMEs, the Makefile, scripts, tools, code or config comments
    (``configs/....yaml``, globs allowed) exists: renaming or removing one breaks no command."""
    files = [REPO_ROOT / f for f in NAMING_FILES]
    files += [f for g in NAMING_GLOBS for f in sorted(REPO_ROOT.glob(g)) if f.is_file()]
    named = {}
    for f in files:
        for m in re.finditer(r"configs/[\w./*-]+\.yaml", f.read_text(encoding="utf-8")):
            named.setdefault(m.group(0), f.relative_to(REPO_ROOT))
    assert len(named) >= 10 and "configs/fsod_5way3shot.yaml" in named
    missing = {n: str(f) for n, f in named.items() if not list(REPO_ROOT.glob(n))}
    assert not missing, f"configs named but not in the tree (name: where): {missing}"


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


def _flat(cfg, prefix=""):
    out = {}
    for k, v in cfg.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@pytest.mark.parametrize(
    "variant, changed",
    [
        ("fsod_5way3shot_s384.yaml", {"FSOD.SUPPORT.SIZE", "OUTPUT_DIR"}),
        ("fsod_5way4shot_s384.yaml", {"FSOD.K_SHOT", "FSOD.SUPPORT.SIZE", "OUTPUT_DIR"}),
    ],
)
def test_headline_variants_change_only_what_they_say(variant, changed):
    """The headline is the paper's setting (5-way 3-shot, 320 px supports, R-50 from ImageNet);
    its variants differ from it in exactly the keys their comments name, so their numbers
    compare with the headline's (same data, model, schedule and evaluation)."""
    head = _load(CONFIG_DIR / "fsod_5way3shot.yaml")
    assert (head.FSOD.N_WAY, head.FSOD.K_SHOT, head.FSOD.SUPPORT.SIZE) == (5, 3, 320)
    assert head.MODEL.WEIGHTS.startswith("detectron2://ImageNetPretrained/")
    a, b = _flat(head), _flat(_load(CONFIG_DIR / variant))
    assert {k for k in a if a[k] != b[k]} == changed


FINETUNE = [
    p for p in ALL_CONFIGS if p.stem.endswith("_finetune") and p.parent.name != "benchmarks"
]


@pytest.mark.parametrize("path", FINETUNE, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_finetune_configs_start_from_their_base_training(path):
    """A ``*_finetune`` config loads the weights its ``_BASE_`` training writes, trains on a
    registered novel K-shot set at a lower LR, and writes elsewhere."""
    base_path = path.parent / yaml.safe_load(path.read_text())["_BASE_"]
    base, ft = _load(base_path), _load(path)
    assert ft.MODEL.WEIGHTS == os.path.join(base.OUTPUT_DIR, "model_final.pth")
    (train,) = ft.DATASETS.TRAIN
    assert re.search(r"_\d+shot_seed\d+_novel$", train) and train in DatasetCatalog
    assert ft.SOLVER.BASE_LR < base.SOLVER.BASE_LR and ft.OUTPUT_DIR != base.OUTPUT_DIR


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


MNV2_RECIPES = ["Base-FSOD-MobileNetV2.yaml", "fsod_mnv2_cpu.yaml", "demo/fsod_toy_mnv2.yaml"]


@pytest.mark.parametrize("name", MNV2_RECIPES)
def test_mobilenet_v2_recipes_build_pretrained_and_detect(name):
    """The pretrained recipes as shipped (no training): the model builds with torchvision's
    ImageNet weights in both the shared trunk and the ROI stage (from torchvision's cache, which
    `make install` seeds), freezes the early stages, and runs inference from K-shot prototypes."""
    import numpy as np
    import torch
    import torchvision

    from .common import synthetic_query, synthetic_supports

    cfg = _load(CONFIG_DIR / name)
    cfg.MODEL.DEVICE = "cpu"
    tv = cfg.MODEL.TORCHVISION
    assert (tv.ARCH, tv.WEIGHTS) == ("mobilenet_v2", "IMAGENET1K_V1")
    model = build_model(cfg).eval()
    assert type(model).__name__ == "FsodRCNN"
    ref = torchvision.models.get_model(tv.ARCH, weights=tv.WEIGHTS).state_dict()
    stem, last = ref["features.0.0.weight"], ref["features.18.0.weight"]  # first / last conv
    trunk = [p for p in model.backbone.parameters() if p.shape == stem.shape]
    assert len(trunk) == 1 and torch.equal(trunk[0], stem) and not trunk[0].requires_grad
    head = [p for p in model.roi_heads.parameters() if p.shape == last.shape]
    assert len(head) == 1 and torch.equal(head[0], last) and head[0].requires_grad

    rng = np.random.default_rng(0)
    images, boxes = synthetic_supports(rng, [0, 1, 2], cfg.FSOD.TEST.K_SHOT, cfg.FSOD.SUPPORT.SIZE)
    model.set_prototypes(model.compute_prototypes(images, boxes, [0, 1, 2], ["a", "b", "c"]))
    query, _ = synthetic_query(rng, [0, 2], size=(192, 256))
    with torch.no_grad():
        (out,) = model([{"image": query, "height": 192, "width": 256}])
    inst = out["instances"]
    assert inst.image_size == (192, 256) and set(inst.pred_classes.tolist()) <= {0, 1, 2}
    assert torch.isfinite(inst.scores).all() and torch.isfinite(inst.pred_boxes.tensor).all()
