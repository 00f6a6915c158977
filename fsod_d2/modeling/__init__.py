"""Model: FsodRCNN meta-architecture, attention-RPN, multi-relation ROI heads, tiny backbone."""

from .attention_rpn import AttentionRPN, AttentionRPNHead
from .backbone import build_fsod_tiny_backbone
from .meta_arch import FsodRCNN
from .relation_head import MultiRelationROIHeads
from .support import PrototypeSet
from .torchvision_backbone import build_torchvision_backbone

__all__ = [
    "AttentionRPN",
    "AttentionRPNHead",
    "FsodRCNN",
    "MultiRelationROIHeads",
    "PrototypeSet",
    "build_fsod_tiny_backbone",
    "build_torchvision_backbone",
]
