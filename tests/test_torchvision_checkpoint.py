"""A torchvision backbone with MODEL.WEIGHTS set to a full checkpoint: built without
torchvision's ImageNet file (an empty TORCH_HOME, no network), weights from the checkpoint; a
checkpoint without them is refused; the split registry; the frozen-stages message only when
training starts."""

import logging
import os
import subprocess
import sys

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.registry import Registry

from fsod_d2 import setup_cfg
from fsod_d2.modeling import torchvision_backbone as tvb

from .common import CONFIG_DIR, REPO_ROOT, get_tiny_cfg

RECIPE = CONFIG_DIR / "fsod_mnv2_cpu.yaml"

# Runs with TORCH_HOME empty; any download attempt fails the run.
OFFLINE_BUILD = """
import sys
import torch, torch.hub
from detectron2.modeling import build_model

def no_network(*args, **kwargs):
    raise AssertionError("tried to download " + str(args[:1]))

torch.hub.download_url_to_file = no_network
torch.hub.load_state_dict_from_url = no_network

from fsod_d2 import setup_cfg
from fsod_d2.modeling.checkpoint import WeightsMismatchError, load_checkpoint

recipe, weights, head_only = sys.argv[1:4]
cfg = setup_cfg(recipe, ["MODEL.WEIGHTS", weights])
model = build_model(cfg)
load_checkpoint(model, weights, config_file=recipe)
saved = torch.load(weights, weights_only=True)["model"]
state = model.state_dict()
assert set(saved) == set(state), set(saved) ^ set(state)
assert all(torch.equal(state[k], v) for k, v in saved.items())
try:
    load_checkpoint(build_model(cfg), head_only, config_file=recipe)
except WeightsMismatchError as e:
    print("REFUSED", e)
print("LOADED", len(state))
"""


def test_full_checkpoint_needs_no_imagenet_file(tmp_path):
    """The recipe's model (MobileNetV2, IMAGENET1K_V1 named in the config) with MODEL.WEIGHTS a
    checkpoint of that model, in a process whose torchvision cache is empty."""
    cfg = setup_cfg(str(RECIPE), ["MODEL.TORCHVISION.WEIGHTS", ""], freeze=False)
    torch.manual_seed(0)
    state = build_model(cfg).state_dict()
    torch.save({"model": state}, tmp_path / "model_final.pth")
    head = {k: v for k, v in state.items() if not k.startswith(("backbone.", "roi_heads.res5."))}
    torch.save({"model": head}, tmp_path / "head_only.pth")
    empty = tmp_path / "torch_home"
    empty.mkdir()
    env = dict(os.environ, TORCH_HOME=str(empty), PYTHONPATH=str(REPO_ROOT))
    args = [str(RECIPE), str(tmp_path / "model_final.pth"), str(tmp_path / "head_only.pth")]
    proc = subprocess.run(
        [sys.executable, "-c", OFFLINE_BUILD, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"LOADED {len(state)}" in proc.stdout
    refused = [line for line in proc.stdout.splitlines() if line.startswith("REFUSED")]
    assert len(refused) == 1 and "have no weights for backbone" in refused[0]
    assert "MODEL.WEIGHTS '' to start from the pretrained weights" in refused[0]
    assert not any(empty.rglob("*.pth"))  # nothing was downloaded into the cache


def test_without_model_weights_the_imagenet_weights_are_requested(monkeypatch):
    """MODEL.WEIGHTS "" keeps loading the named torchvision weights (the training start)."""
    asked = []

    def fake_get_model(arch, weights=None):
        asked.append((arch, None if weights is None else weights.name))
        return tvb.torchvision.models.mobilenet_v2()

    monkeypatch.setattr(tvb.torchvision.models, "get_model", fake_get_model)
    opts = ("MODEL.BACKBONE.NAME", "build_torchvision_backbone", "MODEL.WEIGHTS", "")
    build_model(get_tiny_cfg(*opts))
    assert asked and set(asked) == {("mobilenet_v2", "IMAGENET1K_V1")}
    asked.clear()
    build_model(get_tiny_cfg(*opts[:2], "MODEL.WEIGHTS", "model_final.pth"))
    assert asked and set(asked) == {("mobilenet_v2", None)}


def test_split_registry_is_a_detectron2_registry():
    assert isinstance(tvb.TORCHVISION_SPLIT_REGISTRY, Registry)
    assert {"mobilenet_v2", "resnet18", "resnet50"} <= set(tvb.known_archs())

    @tvb.register_split("test_arch_a", "test_arch_b")
    def split_test(model):
        return [model], model

    for arch in ("test_arch_a", "test_arch_b"):
        stages, head = tvb.TORCHVISION_SPLIT_REGISTRY.get(arch)("m")
        assert (stages, head) == (["m"], "m")
    with pytest.raises(ValueError, match=r"has no C4 split; known: \[.*'mobilenet_v2'"):
        tvb.load_torchvision_model("vgg16", "")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_frozen_stages_are_reported_when_training_starts_not_at_inference():
    handler = _Records()
    log = logging.getLogger(tvb.__name__)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        opts = ("MODEL.BACKBONE.NAME", "build_torchvision_backbone")
        model = build_model(get_tiny_cfg(*opts, "MODEL.TORCHVISION.WEIGHTS", ""))
        model.eval()
        assert not any("frozen" in m for m in handler.messages)
        model.train()
        model.train()
        frozen = [m for m in handler.messages if "frozen" in m]
        assert frozen == ["Backbone: first 0 of 4 stages frozen (MODEL.BACKBONE.FREEZE_AT)"]
    finally:
        log.removeHandler(handler)
