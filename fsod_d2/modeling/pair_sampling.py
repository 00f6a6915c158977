"""Training (ROI, class) pairs of the relation head, labelled and sampled for all images at once.

The pair types and the sampling rule are those of :class:`MultiRelationROIHeads`: candidates are
the proposals (each with its own class, or with every class when proposals are shared) and every
ground-truth box with every class; a pair is *positive* when its box overlaps (IoU >= the
ROI_HEADS foreground threshold) a ground-truth box of its class (the box's best match),
*background* when its class is present in the image otherwise, *negative-class* when its class is
absent from the image. Per image at most ``round(pairs_per_image * fraction)`` pairs of each type
are drawn uniformly at random.

Here the images are a batch dimension (padded proposals and ground truth with validity masks),
the draw is a top-k over random keys, and ROI features are computed once per sampled box over
the whole batch; the only host read is the number of those boxes and pairs (one sync).
"""

from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from detectron2.layers import cat
from detectron2.structures import Instances
from torch import Tensor

from .batched_rpn import batched_pairwise_iou, pad_targets, pick_random


class SampledPairs(NamedTuple):
    """Sampled pairs of B images; candidate boxes are proposals then ground truth.

    boxes: (B, C, 4) candidate boxes. box_idx, classes, labels, valid: (B, S) per slot, the
    candidate index, class (0..N-1), positive or not, and whether the slot holds a pair.
    fg: (B, C) candidate overlaps a ground-truth box (IoU >= threshold). matched_boxes:
    (B, C, 4) its best-matching ground-truth box. matched_classes: (B, C) that box's class.
    """

    boxes: Tensor
    box_idx: Tensor
    classes: Tensor
    labels: Tensor
    valid: Tensor
    fg: Tensor
    matched_boxes: Tensor
    matched_classes: Tensor


def stack_proposals(proposals: Sequence[Instances]) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Per-image proposals of equal length (padded, see ``proposal_valid``) -> boxes (B, K, 4),
    validity (B, K) and classes (B, K) (None when proposals are shared by all classes)."""
    lengths = {len(p) for p in proposals}
    if len(lengths) != 1:
        raise ValueError(
            f"batched pair sampling needs padded proposals of one length per image, got {lengths}"
        )
    boxes = torch.stack([p.proposal_boxes.tensor for p in proposals])
    if proposals[0].has("proposal_valid"):
        valid = torch.stack([p.proposal_valid for p in proposals])
    else:
        valid = torch.ones(boxes.shape[:2], dtype=torch.bool, device=boxes.device)
    classes = None
    if proposals[0].has("proposal_classes"):
        classes = torch.stack([p.proposal_classes for p in proposals])
    return boxes, valid, classes


@torch.no_grad()
def label_and_sample_pairs(
    proposals: Sequence[Instances],
    targets: Sequence[Instances],
    num_classes: int,
    fg_threshold: float,
    pairs_per_image: int,
    fractions: Sequence[float],
) -> SampledPairs:
    """Candidate (box, class) pairs of every image, labelled by type and sampled per image and
    type (see the module docstring); targets' ``gt_classes`` are 0..N-1, -1 = ignored."""
    prop_boxes, prop_valid, prop_classes = stack_proposals(proposals)
    device = prop_boxes.device
    gt_boxes, gt_classes = pad_targets(targets, device)
    num_images, num_props = prop_boxes.shape[:2]
    num_gt = gt_boxes.shape[1]
    boxes = cat([prop_boxes.to(gt_boxes.dtype), gt_boxes], dim=1)  # (B, C, 4)
    gt_valid = gt_classes >= 0
    cand_valid = cat([prop_valid, gt_valid], dim=1)

    all_classes = torch.arange(num_classes, device=device)
    gt_rows = torch.arange(num_props, num_props + num_gt, device=device)
    if prop_classes is None:  # every candidate with every class
        box_idx = torch.arange(num_props + num_gt, device=device).repeat_interleave(num_classes)
        classes = all_classes.repeat(num_props + num_gt)[None].expand(num_images, -1)
    else:  # proposals with their own class, ground truth with every class
        box_idx = cat(
            [torch.arange(num_props, device=device), gt_rows.repeat_interleave(num_classes)]
        )
        classes = cat([prop_classes, all_classes.repeat(num_gt)[None].expand(num_images, -1)], 1)
    box_idx = box_idx[None].expand(num_images, -1)
    pair_valid = cand_valid.gather(1, box_idx)

    iou = batched_pairwise_iou(boxes, gt_boxes)  # (B, C, G)
    iou = torch.where(gt_valid[:, None, :], iou, torch.full_like(iou, -1.0))
    best, matched = iou.max(dim=2)
    fg = best >= fg_threshold
    matched_classes = gt_classes.gather(1, matched)
    matched_boxes = gt_boxes.gather(1, matched[..., None].expand(-1, -1, 4))

    labels = fg.gather(1, box_idx) & (matched_classes.gather(1, box_idx) == classes) & pair_valid
    present = (gt_classes[:, :, None] == all_classes).any(dim=1)  # (B, N)
    class_present = present.gather(1, classes)
    kinds = [labels, ~labels & class_present & pair_valid, ~labels & ~class_present & pair_valid]
    keys = torch.rand(labels.shape, device=device)
    slots, ok = [], []
    for kind, frac in zip(kinds, fractions):
        idx, valid = pick_random(kind, keys, int(round(pairs_per_image * frac)))
        slots.append(idx)
        ok.append(valid)
    slots, ok = cat(slots, dim=1), cat(ok, dim=1)
    return SampledPairs(
        boxes=boxes,
        box_idx=box_idx.gather(1, slots),
        classes=classes.gather(1, slots),
        labels=labels.gather(1, slots),
        valid=ok,
        fg=fg,
        matched_boxes=matched_boxes,
        matched_classes=matched_classes,
    )


def used_boxes(pairs: SampledPairs) -> Tuple[Tensor, Tensor]:
    """Which candidates some sampled pair uses (B, C), and each candidate's row among the used
    ones in flattened (image, candidate) order (B, C) (meaningful where used)."""
    counts = torch.zeros(pairs.boxes.shape[:2], dtype=torch.long, device=pairs.boxes.device)
    used = counts.scatter_add_(1, pairs.box_idx, pairs.valid.long()) > 0
    rows = used.flatten().long().cumsum(0).view(used.shape) - 1
    return used, rows


def first_true(mask: Tensor, count: int) -> Tensor:
    """Indices of the True entries of a 1-d mask in increasing order, given their ``count``
    (read once on the host): a stable sort instead of ``nonzero``."""
    return torch.sort(mask.to(torch.uint8), descending=True, stable=True).indices[:count]


def pooler_rois(batch_idx: Tensor, boxes: Tensor) -> Tensor:
    """(M,) image indices and (M, 4) boxes -> the (M, 5) format of detectron2's ROI poolers.

    detectron2's ``convert_boxes_to_pooler_format`` does not fit this layout: it takes one
    ``Boxes`` per image (splitting these flat tensors per image needs the counts on the host)
    and rebuilds the image index with ``repeat_interleave`` over the per-image counts, which on
    a GPU synchronises to size its output. Here the image index of each box is already a device
    tensor, in pair order (not grouped by image), so only the concatenation is left.
    """
    return cat([batch_idx[:, None].to(boxes.dtype), boxes], dim=1)


__all__: List[str] = [
    "SampledPairs",
    "first_true",
    "label_and_sample_pairs",
    "pooler_rois",
    "stack_proposals",
    "used_boxes",
]
