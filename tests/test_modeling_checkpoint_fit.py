"""Weights of another config are refused with one line naming the weights and the config;
backbone-only files (ImageNet weights) load and are reported as such; unreadable files are one
line (fsod_d2.modeling.checkpoint, and tools/train_net.py before it starts any work)."""

import logging
import pickle

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from fsod_d2.modeling.checkpoint import (
    FsodCheckpointer,
    WeightsFileError,
    WeightsMismatchError,
    load_checkpoint,
)

from .common import TINY_CONFIG, get_tiny_cfg, load_tool

# the tiny config with a torchvision MobileNetV2 backbone (random weights: nothing downloaded)
MNV2 = ("MODEL.BACKBONE.NAME", "build_torchvision_backbone", "MODEL.TORCHVISION.WEIGHTS", "")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A checkpoint of the tiny model and one of the tiny model on MobileNetV2."""
    root = tmp_path_factory.mktemp("fit")
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(get_tiny_cfg()), save_dir=str(root)).save("tiny")
    DetectionCheckpointer(build_model(get_tiny_cfg(*MNV2)), save_dir=str(root)).save("mnv2")
    return root


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def checkpoint_log():
    handler = _Records()
    names = ("fsod_d2.modeling.checkpoint", "fvcore.common.checkpoint")
    for name in names:
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    yield handler.messages
    for name in names:
        logging.getLogger(name).removeHandler(handler)


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("weights, opts", [("mnv2.pth", ()), ("tiny.pth", MNV2)])
def test_weights_of_another_config_are_refused_with_one_line(checkpoints, weights, opts):
    model = build_model(get_tiny_cfg(*opts))
    path = str(checkpoints / weights)
    with pytest.raises(WeightsMismatchError) as err:
        load_checkpoint(model, path, config_file="configs/x.yaml")
    msg = _one_line(err)
    assert f"the weights {path} do not fit the model of configs/x.yaml" in msg
    assert "tensors in the file are not in the model or have another shape" in msg
    assert "give the config file these weights were trained with" in msg


def test_weights_of_the_same_config_load(checkpoints, checkpoint_log):
    model = build_model(get_tiny_cfg())
    load_checkpoint(model, str(checkpoints / "tiny.pth"))
    saved = torch.load(checkpoints / "tiny.pth", weights_only=False)["model"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert not any("backbone weights only" in m for m in checkpoint_log)


def test_backbone_only_file_is_allowed_and_reported(checkpoints, tmp_path, checkpoint_log):
    saved = torch.load(checkpoints / "tiny.pth", weights_only=False)["model"]
    backbone = {k: v for k, v in saved.items() if k.startswith(("backbone.", "roi_heads.res5."))}
    torch.save({"model": backbone}, tmp_path / "backbone.pth")
    torch.manual_seed(5)
    model = build_model(get_tiny_cfg())
    head = {k: v.clone() for k, v in model.state_dict().items() if k not in backbone}
    load_checkpoint(model, str(tmp_path / "backbone.pth"))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in backbone.items())
    assert all(torch.equal(state[k], v) for k, v in head.items())  # initialisation kept
    (line,) = [m for m in checkpoint_log if "backbone weights only" in m]
    assert str(tmp_path / "backbone.pth") in line
    assert "backbone, roi_heads.res5" in line and "proposal_generator.rpn_head" in line


def _caffe2_name(key: str) -> str:
    """detectron2's model key -> the name an ImageNet Caffe2 .pkl uses for it (the inverse of
    detectron2.checkpoint.c2_model_loading.convert_basic_c2_names for these keys)."""
    key = key.split(".", 1)[1] if key.startswith("backbone.") else key
    key = key.replace("roi_heads.", "", 1)
    for new, old in (("conv1", "branch2a"), ("conv2", "branch2b"), ("conv3", "branch2c")):
        key = key.replace(f".{new}.", f".{old}.")
    key = key.replace(".shortcut.", ".branch1.")
    key = key.replace("norm.weight", "gn.s").replace("norm.bias", "gn.bias")
    key = key.replace(".weight", ".w").replace(".bias", ".b")
    return key.replace(".", "_")


def test_imagenet_caffe2_pkl_is_allowed_and_reported(checkpoints, tmp_path, checkpoint_log):
    """An ImageNet classification .pkl (Caffe2 names, detectron2's name matching, plus the
    classifier that the detector does not use) loads into the backbone and res5."""
    saved = torch.load(checkpoints / "tiny.pth", weights_only=False)["model"]
    backbone = {k: v for k, v in saved.items() if k.startswith(("backbone.", "roi_heads.res5."))}
    blobs = {_caffe2_name(k): v.numpy() for k, v in backbone.items()}
    blobs.update(fc1000_w=torch.zeros(10, 4).numpy(), fc1000_b=torch.zeros(10).numpy())
    with open(tmp_path / "R-tiny.pkl", "wb") as f:
        pickle.dump(blobs, f)
    torch.manual_seed(5)
    model = build_model(get_tiny_cfg())
    FsodCheckpointer(model).load(str(tmp_path / "R-tiny.pkl"))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in backbone.items())
    assert any("backbone weights only" in m for m in checkpoint_log)


def test_truncated_missing_and_empty_weights_files(checkpoints, tmp_path):
    model = build_model(get_tiny_cfg())
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((checkpoints / "tiny.pth").read_bytes()[:4000])
    with pytest.raises(WeightsFileError) as err:
        load_checkpoint(model, str(truncated))
    assert f"weights file {truncated} cannot be read" in _one_line(err)
    assert "truncated or not a checkpoint" in str(err.value)
    with pytest.raises(WeightsFileError) as err:
        load_checkpoint(model, str(tmp_path / "nope.pth"))
    assert "does not exist" in _one_line(err)
    torch.save({"model": {}}, tmp_path / "empty.pth")
    with pytest.raises(WeightsFileError, match="holds no model weights"):
        load_checkpoint(model, str(tmp_path / "empty.pth"))


@pytest.fixture(scope="module")
def train_net():
    return load_tool("train_net")


def test_train_net_refuses_weights_of_another_config_before_any_work(
    train_net, checkpoints, tmp_path
):
    out = tmp_path / "out"
    argv = ["--config-file", str(TINY_CONFIG), "OUTPUT_DIR", str(out)]
    with pytest.raises(SystemExit) as e:
        train_net.run([*argv, "MODEL.WEIGHTS", str(checkpoints / "mnv2.pth")])
    msg = e.value.code
    assert isinstance(msg, str) and "\n" not in msg
    assert msg.startswith("train_net.py: error: the weights ")
    assert f"do not fit the model of {TINY_CONFIG}" in msg
    assert not any(out.iterdir())  # nothing written: no log, no config dump, no checkpoint
    with pytest.raises(SystemExit) as e:
        train_net.run([*argv, "MODEL.WEIGHTS", str(tmp_path / "nope.pth")])
    assert e.value.code == (
        f"train_net.py: error: MODEL.WEIGHTS {tmp_path / 'nope.pth'}: no such file; give the "
        "model_final.pth that tools/train_net.py wrote to its OUTPUT_DIR"
    )
