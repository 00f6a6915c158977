"""Frozen BatchNorm folded into the convolution it follows (training speed, same outputs).

detectron2's ``FrozenBatchNorm2d`` is a per-channel affine map. On an input that needs
gradients (every layer after the first trainable one) it runs as ``x * scale + shift``: two
elementwise passes over the activation forward and one more backward, the largest cost of an
R-50-C4 training step after the convolutions themselves (see benchmarks/README.md, *Profile*).
Folding it into the convolution (weight * scale, bias = shift) makes it free. The norm module and
its buffers stay where they are, so ``state_dict`` keys, checkpoints and prototype fingerprints
do not change; only the forward computation does.
"""

import contextlib
from typing import Iterator

import torch.nn.functional as F
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn


class FrozenBNConv2d(Conv2d):
    """A detectron2 ``Conv2d`` whose ``norm`` is ``FrozenBatchNorm2d``, run as one convolution.

    Instances are made by :func:`fold_frozen_bn` from existing ``Conv2d`` modules.
    """

    def forward(self, x):
        # The same arithmetic as torch.nn.utils.fusion.fuse_conv_bn_weights, which cannot be
        # used here: it returns new leaf nn.Parameters (detached from the conv weight), so in
        # training no gradient would reach the trainable convolutions. The fold is recomputed
        # per call because the conv weight changes with every optimizer step.
        norm = self.norm
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        shift = norm.bias - norm.running_mean * scale
        if self.bias is not None:
            shift = shift + self.bias * scale
        weight = self.weight * scale.reshape(-1, 1, 1, 1).to(self.weight.dtype)
        x = F.conv2d(
            x, weight, shift.to(weight.dtype), self.stride, self.padding, self.dilation, self.groups
        )
        if self.activation is not None:
            x = self.activation(x)
        return x


def fold_frozen_bn(module: nn.Module) -> int:
    """Make every ``Conv2d`` + ``FrozenBatchNorm2d`` in ``module`` a :class:`FrozenBNConv2d`
    (in place; parameters and buffers untouched). Returns how many were folded."""
    folded = 0
    for m in module.modules():
        if type(m) is Conv2d and isinstance(m.norm, FrozenBatchNorm2d):
            m.__class__ = FrozenBNConv2d
            folded += 1
    return folded


@contextlib.contextmanager
def frozen_bn_unfolded(module: nn.Module) -> Iterator[nn.Module]:
    """Temporarily run the norms of folded convs as modules of their own (e.g. for forward
    hooks on ``FrozenBatchNorm2d``), then fold them again."""
    folded = [m for m in module.modules() if type(m) is FrozenBNConv2d]
    for m in folded:
        m.__class__ = Conv2d
    try:
        yield module
    finally:
        for m in folded:
            m.__class__ = FrozenBNConv2d
