"""A tiny stride-16 backbone for CPU tests and the demo.

It stands in for ResNet res2-res4 in the C4 layout: one feature map named
``MODEL.RESNETS.OUT_FEATURES[0]`` with ``RES2_OUT_CHANNELS * 4`` channels, so detectron2's res5
ROI block (built from ``MODEL.RESNETS``) fits on top exactly as it does for ResNet-50 C4.
"""

from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn


class TinyBackbone(Backbone):
    """Four stride-2 stages of two 3x3 conv-norm-ReLU layers; output stride 16."""

    def __init__(
        self, in_channels: int, stem_channels: int, out_channels: int, norm: str, out_feature: str
    ):
        super().__init__()
        widths = [stem_channels, stem_channels, out_channels, out_channels]
        layers = []
        for width in widths:
            for stride in (2, 1):
                layers.append(
                    Conv2d(
                        in_channels,
                        width,
                        3,
                        stride=stride,
                        padding=1,
                        bias=not norm,
                        norm=get_norm(norm, width),
                        activation=nn.ReLU(inplace=True),
                    )
                )
                in_channels = width
        self.body = nn.Sequential(*layers)
        self._out_feature = out_feature
        self._out_features = [out_feature]  # detectron2's Backbone.output_shape reads these
        self._out_feature_channels = {out_feature: out_channels}
        self._out_feature_strides = {out_feature: 2 ** len(widths)}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return {self._out_feature: self.body(x)}


@BACKBONE_REGISTRY.register()
def build_fsod_tiny_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """Tiny C4-style backbone (see module docstring)."""
    out_features = cfg.MODEL.RESNETS.OUT_FEATURES
    if len(out_features) != 1:
        raise ValueError(
            f"build_fsod_tiny_backbone has one output; MODEL.RESNETS.OUT_FEATURES={out_features}"
        )
    return TinyBackbone(
        in_channels=input_shape.channels,
        stem_channels=cfg.MODEL.FSOD.TINY_BACKBONE.STEM_CHANNELS,
        out_channels=cfg.MODEL.RESNETS.RES2_OUT_CHANNELS * 4,
        norm=cfg.MODEL.RESNETS.NORM,
        out_feature=out_features[0],
    )
