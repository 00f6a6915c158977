"""Attention-RPN: class-conditioned proposals for all N support classes in one batched pass.

The support kernel of a class is its pooled res4 support feature (a C-vector). For a 1x1 kernel
the depth-wise correlation of the paper is a channel-wise product, so the N class-conditioned
query maps of B images form one (B*N, C, H, W) batch and detectron2's RPN machinery (anchors,
matching, losses, NMS) runs on it. Its per-image loops are replaced by tensor passes over all
pairs (:mod:`fsod_d2.modeling.batched_rpn`), so a training step's host syncs do not grow with B
and N.
"""

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d
from detectron2.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY, RPN
from detectron2.modeling.proposal_generator.rpn import RPN_HEAD_REGISTRY, StandardRPNHead
from detectron2.structures import Boxes, ImageList, Instances
from torch import Tensor

from . import batched_rpn

_CONDITIONING = ("early", "late")


def _fp16_autocast(device_type: str) -> bool:
    return torch.is_autocast_enabled(device_type) and (
        torch.get_autocast_dtype(device_type) == torch.float16
    )


@RPN_HEAD_REGISTRY.register()
class AttentionRPNHead(StandardRPNHead):
    """detectron2's RPN head, conditioned on per-class support kernels.

    ``early`` (paper): the RPN conv runs on ``query * kernel`` for every class.
    ``late``: the RPN conv and the box deltas run once per image (class-agnostic); only the
    objectness layer sees ``hidden * kernel``, so extra classes cost a 1x1 conv each.
    """

    @configurable
    def __init__(self, *, conditioning: str = "early", **kwargs):
        super().__init__(**kwargs)
        if conditioning not in _CONDITIONING:
            raise ValueError(
                f"MODEL.FSOD.RPN_CONDITIONING must be one of {_CONDITIONING}, got {conditioning!r}"
            )
        self.conditioning = conditioning

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["conditioning"] = cfg.MODEL.FSOD.RPN_CONDITIONING
        return ret

    def forward(self, features: List[Tensor], kernels: Tensor) -> Tuple[List[Tensor], List[Tensor]]:
        """
        Args:
            features: per level, a (B, C, H, W) query map.
            kernels: (B, N, C) support kernels of the N classes of each image.

        Returns:
            objectness logits (B*N, A, H, W) and anchor deltas (B*N, A*box_dim, H, W) per level;
            row ``b * N + n`` is image b conditioned on class n.
        """
        num_classes = kernels.shape[1]
        kernels = kernels[..., None, None]
        logits, deltas = [], []
        for x in features:
            if self.conditioning == "early" and _fp16_autocast(x.device.type):
                s, d = self._early_scaled((x[:, None] * kernels).flatten(0, 1))
                logits.append(s)
                deltas.append(d)
            elif self.conditioning == "early":
                hidden = self.conv((x[:, None] * kernels).flatten(0, 1))
                logits.append(self.objectness_logits(hidden))
                deltas.append(self.anchor_deltas(hidden))
            else:
                hidden = self.conv(x)
                logits.append(self._late_objectness(hidden, kernels[..., 0, 0]))
                # class-agnostic deltas, shared by reference (expand) rather than recomputed
                d = self.anchor_deltas(hidden)
                deltas.append(d[:, None].expand(-1, num_classes, -1, -1, -1).flatten(0, 1))
        return logits, deltas

    def _early_scaled(self, z: Tensor) -> Tuple[Tensor, Tensor]:
        """The early head on ``z = query * kernel`` under float16 autocast, without overflow.

        ``z`` is a product of two feature maps: its values reach the square of feature
        magnitudes and can exceed float16's 65504, so the 3x3 conv's float16 input would hold
        inf (then NaN boxes: "Training has diverged"). The product is formed in float32 and
        each pair's map divided by its largest magnitude ``m``; every layer of the head is
        linear up to a ReLU, which commutes with a positive scale, so with ``c`` the 3x3 conv
        without bias: ``hidden / m = relu(c(z / m) + b / m)`` and each 1x1 layer ``l`` gives
        ``l(hidden) = m * l_nobias(hidden / m) + bias``. The float16 convs see values of order
        one; the outputs are rescaled in float32. Same result as float32 up to rounding.
        """
        z = z.float()
        conv = self.conv
        if not (isinstance(conv, Conv2d) and conv.norm is None and conv.bias is not None):
            # other head layouts (MODEL.RPN.CONV_DIMS with several convs): all in float32
            with torch.autocast(z.device.type, enabled=False):
                hidden = conv(z)
                return self.objectness_logits(hidden), self.anchor_deltas(hidden)
        m = z.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1.0)
        h = F.conv2d(z / m, conv.weight, None, conv.stride, conv.padding, conv.dilation)
        hidden = F.relu(h.float() + conv.bias.float()[None, :, None, None] / m)
        outs = []
        for layer in (self.objectness_logits, self.anchor_deltas):
            out = F.conv2d(hidden, layer.weight, None, layer.stride, layer.padding)
            outs.append(out.float() * m + layer.bias.float()[None, :, None, None])
        return outs[0], outs[1]

    def _late_objectness(self, hidden: Tensor, kernels: Tensor) -> Tensor:
        """``objectness_logits(hidden * kernel_n)`` for every class n, computed as one matmul
        with per-class weights ``W * kernel_n`` instead of materialising N copies of the
        (C, H, W) hidden map. Returns (B*N, A, H, W)."""
        layer = self.objectness_logits
        weight = kernels[:, :, None, :] * layer.weight[:, :, 0, 0]  # (B, N, A, C)
        out = torch.einsum("bnac,bchw->bnahw", weight, hidden)
        return (out + layer.bias[:, None, None]).flatten(0, 1)


@PROPOSAL_GENERATOR_REGISTRY.register()
class AttentionRPN(RPN):
    """detectron2's RPN over (image, support class) pairs; see the module docstring.

    Proposals come per (image, class) pair, or, with ``merge_classes``, per image: every anchor
    keeps the objectness and deltas of its best class and one NMS runs per image, so the cost of
    proposal selection does not grow with the number of classes.
    """

    @staticmethod
    def support_kernels(pooled: Tensor) -> Tensor:
        """The attention kernel of each support: its ROI-pooled backbone map (S, C, r, r)
        averaged over positions, (S, C). Class kernels are the mean over a class's shots."""
        return pooled.mean(dim=(2, 3))

    def forward(
        self,
        images: ImageList,
        features: Dict[str, Tensor],
        kernels: Tensor,
        gt_instances: Optional[List[Instances]] = None,
        merge_classes: bool = False,
    ) -> Tuple[List[Instances], Dict[str, Tensor]]:
        """
        Args:
            images: B query images.
            features: backbone features of the queries.
            kernels: (B, N, C) support kernels.
            gt_instances: training only; B Instances with ``gt_boxes`` and ``gt_classes`` in
                0..N-1 (-1: ignored); pair (b, n) is trained on the boxes of class n in image b.
            merge_classes: return one proposal set per image instead of one per pair.

        Returns:
            proposals (B*N or B Instances with ``proposal_boxes`` and ``objectness_logits``)
            and the RPN losses (empty at test time).
        """
        num_images, num_classes = kernels.shape[:2]
        feats = [features[f] for f in self.in_features]
        anchors = self.anchor_generator(feats)
        logits, deltas = self.rpn_head(feats, kernels)
        box_dim = self.anchor_generator.box_dim
        # same layout as RPN.forward: (N_pairs, Hi*Wi*A) and (N_pairs, Hi*Wi*A, box_dim)
        logits = [s.permute(0, 2, 3, 1).flatten(1) for s in logits]
        deltas = [
            d.view(d.shape[0], -1, box_dim, d.shape[-2], d.shape[-1])
            .permute(0, 3, 4, 1, 2)
            .flatten(1, -2)
            for d in deltas
        ]
        losses = {}
        if self.training:
            gt_labels, gt_boxes = self.label_and_sample_anchors(
                anchors, gt_instances, num_classes, images.image_sizes
            )
            losses = self.losses(anchors, logits, gt_labels, deltas, gt_boxes)

        if merge_classes:
            logits, deltas = _best_class_per_anchor(logits, deltas, num_images, num_classes)
            image_sizes = images.image_sizes
        else:
            image_sizes = [s for s in images.image_sizes for _ in range(num_classes)]
        proposals = self.predict_proposals(anchors, logits, deltas, image_sizes)
        return proposals, losses

    @torch.no_grad()
    def label_and_sample_anchors(
        self,
        anchors: List[Boxes],
        gt_instances: List[Instances],
        num_classes: int = 1,
        image_sizes: Optional[List[Tuple[int, int]]] = None,
    ) -> Tuple[Tensor, Tensor]:
        """Anchor labels (B*N, A) and matched boxes (B*N, A, 4) of every (image, class) pair
        in tensor passes (detectron2's matching and sampling rules; no per-pair loop)."""
        gt_boxes, gt_classes = batched_rpn.pad_targets(gt_instances, anchors[0].device)
        boxes, valid = batched_rpn.pair_targets(gt_boxes, gt_classes, num_classes)
        sizes = image_sizes or [t.image_size for t in gt_instances]
        sizes = [s for s in sizes for _ in range(num_classes)]
        return batched_rpn.label_and_sample_anchors(self, anchors, boxes, valid, sizes)

    def losses(self, anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        """detectron2's RPN losses on stacked pair labels, masked instead of indexed."""
        return batched_rpn.rpn_losses(
            self, anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes
        )

    def predict_proposals(self, anchors, pred_objectness_logits, pred_anchor_deltas, image_sizes):
        """detectron2's proposal selection for all pairs at once, as fixed-size Instances
        (``post_nms_topk`` rows) with a ``proposal_valid`` mask; the valid rows are the
        proposals detectron2 returns, in its order."""
        with torch.no_grad():
            pred_proposals = self._decode_proposals(anchors, pred_anchor_deltas)
            boxes, scores, valid = batched_rpn.find_top_proposals(
                pred_proposals,
                pred_objectness_logits,
                image_sizes,
                self.nms_thresh,
                self.pre_nms_topk[self.training],
                self.post_nms_topk[self.training],
                self.min_box_size,
                self.training,
            )
            return batched_rpn.proposals_to_instances(boxes, scores, valid, image_sizes)


@torch.no_grad()
def _best_class_per_anchor(
    logits: List[Tensor], deltas: List[Tensor], num_images: int, num_classes: int
) -> Tuple[List[Tensor], List[Tensor]]:
    """Per level, reduce (B*N, L) logits / (B*N, L, D) deltas to the best class per anchor."""
    merged_logits, merged_deltas = [], []
    for s, d in zip(logits, deltas):
        s = s.detach().view(num_images, num_classes, -1)
        best, idx = s.max(dim=1)
        d = d.detach().view(num_images, num_classes, d.shape[1], d.shape[2])
        idx = idx[:, None, :, None].expand(-1, 1, -1, d.shape[-1])
        merged_logits.append(best)
        merged_deltas.append(d.gather(1, idx).squeeze(1))
    return merged_logits, merged_deltas
