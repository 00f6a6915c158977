"""RPN training and proposal selection over all (image, class) pairs at once, without host syncs.

detectron2's RPN loops over images: per image an IoU matrix, a ``Matcher`` call, a
``subsample_labels`` call (``nonzero`` + ``randperm``), boolean-mask indexing and an NMS, each of
which makes a GPU wait for the host. The attention RPN has B x N such "images" (pairs), so those
waits grow with the batch. The functions here do the same work as tensors with a pair dimension:

* anchor labelling: one (P, G, A) IoU tensor against the padded ground truth of every pair,
  the ``Matcher`` rule (thresholds, labels, low-quality matches) as masks;
* fixed-size sampling: the ``subsample_labels`` rule (at most ``fraction * num`` positives, the
  rest negatives, uniformly at random) as a top-k over random keys, so that the sampled set is a
  mask and no variable-length index ever exists;
* losses: masked sums instead of boolean indexing;
* proposal selection: batched top-k per level, one NMS call for all pairs and levels (the pair
  and level are the NMS group), then a per-pair top-k of the survivors into a fixed-size,
  padded result with a validity mask.

The one data-dependent size left is the NMS output: one sync per step, whatever B and N.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import cat
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from fvcore.nn import giou_loss, smooth_l1_loss
from torch import Tensor
from torch.profiler import record_function

from .detections import grouped_nms

# name of the profiler range around an explicit host read (counted by benchmarks/count_syncs.py)
HOST_SYNC_LABEL = "fsod::host_sync"


def read_host(t: Tensor) -> List:
    """The values of a small tensor as Python numbers: one device sync, however many values.
    Marked with a profiler range so that the CPU sync counter sees it."""
    with record_function(HOST_SYNC_LABEL):
        return t.tolist()


def pad_targets(targets: Sequence[Instances], device: torch.device) -> Tuple[Tensor, Tensor]:
    """Per-image ground truth -> (B, G, 4) boxes and (B, G) classes, G >= 1; padding and
    classes < 0 (outside the episode) have class -1."""
    boxes = [t.gt_boxes.tensor for t in targets]
    classes = [t.gt_classes for t in targets]
    if max(len(b) for b in boxes) == 0:  # shapes, no sync
        num = len(targets)
        return torch.zeros(num, 1, 4, device=device), torch.full((num, 1), -1, device=device)
    boxes = torch.nn.utils.rnn.pad_sequence(boxes, batch_first=True).to(device, torch.float32)
    classes = torch.nn.utils.rnn.pad_sequence(classes, batch_first=True, padding_value=-1)
    return boxes, classes.to(device).clamp(min=-1)


def pair_targets(gt_boxes: Tensor, gt_classes: Tensor, num_classes: int) -> Tuple[Tensor, Tensor]:
    """Per-image padded ground truth (B, G, 4), (B, G) -> per (image, class) pair: boxes
    (B*N, G, 4) and validity (B*N, G) (the boxes of class n in image b, row ``b * N + n``)."""
    classes = torch.arange(num_classes, device=gt_classes.device)
    valid = gt_classes[:, None, :] == classes[None, :, None]  # (B, N, G)
    boxes = gt_boxes[:, None].expand(-1, num_classes, -1, -1)
    return boxes.flatten(0, 1), valid.flatten(0, 1)


def batched_pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of (..., M, 4) with (..., K, 4) boxes (XYXY) -> (..., M, K); as detectron2's
    ``pairwise_iou`` (0 where boxes do not intersect)."""
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    lt = torch.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = torch.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    union = area1[..., :, None] + area2[..., None, :] - inter
    return torch.where(inter > 0, inter / union, torch.zeros_like(inter))


def match_anchors(
    iou: Tensor,
    valid: Tensor,
    thresholds: Sequence[float],
    labels: Sequence[int],
    allow_low_quality_matches: bool,
) -> Tuple[Tensor, Tensor]:
    """detectron2's ``Matcher`` for a batch: ``iou`` (P, G, A) with ``valid`` (P, G) ground
    truth -> matched gt index (P, A) and label (P, A, int8). A pair without valid ground truth
    matches nothing: every anchor gets ``labels[0]`` (as the Matcher does for no gt)."""
    iou = torch.where(valid[:, :, None], iou, torch.full_like(iou, -1.0))
    matched_vals, matches = iou.max(dim=1)
    match_labels = torch.ones_like(matches, dtype=torch.int8)
    for label, low, high in zip(labels, thresholds[:-1], thresholds[1:]):
        in_range = (matched_vals >= low) & (matched_vals < high)
        match_labels = torch.where(in_range, torch.full_like(match_labels, label), match_labels)
    match_labels = torch.where(valid.any(dim=1, keepdim=True), match_labels, labels[0])
    if allow_low_quality_matches:
        # anchors with the highest IoU of some gt (ties included) become positive
        best = iou.max(dim=2, keepdim=True).values
        low_quality = ((iou == best) & valid[:, :, None]).any(dim=1)
        match_labels = torch.where(low_quality, torch.ones_like(match_labels), match_labels)
    return matches, match_labels


def pick_random(
    mask: Tensor, keys: Tensor, num: int, limit: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor]:
    """Per row of ``mask`` (R, L), a uniformly random subset of its True entries of size
    ``min(count, num[, limit])`` (``limit``: (R,) per-row caps), as indices (R, k) with a
    validity mask (R, k), k = min(num, L). ``keys``: (R, L) uniform random numbers in [0, 1).
    The subset is the entries with the k smallest keys: a fixed-size top-k, no ``nonzero``."""
    k = min(int(num), mask.shape[1])
    masked = torch.where(mask, keys, torch.full_like(keys, 2.0))
    values, idx = masked.topk(k, dim=1, largest=False, sorted=True)
    ok = values < 2.0
    if limit is not None:
        ok &= torch.arange(k, device=mask.device)[None] < limit[:, None]
    return idx, ok


def subsample_labels(labels: Tensor, num_samples: int, positive_fraction: float) -> Tensor:
    """detectron2's ``subsample_labels`` for every row of ``labels`` (R, L) in {-1, 0, 1} at
    once: at most ``int(num_samples * positive_fraction)`` positives, then negatives up to
    ``num_samples`` in all, uniformly at random. Returns the labels with the unsampled set to
    -1."""
    keys = torch.rand(labels.shape, device=labels.device)
    pos_idx, pos_ok = pick_random(labels == 1, keys, int(num_samples * positive_fraction))
    num_neg = num_samples - pos_ok.sum(dim=1)
    neg_idx, neg_ok = pick_random(labels == 0, keys, num_samples, limit=num_neg)
    out = torch.full_like(labels, -1)
    out.scatter_(1, pos_idx, torch.where(pos_ok, 1, -1).to(out.dtype))
    # negatives never share an index with a sampled positive; unsampled slots write -1 only
    # where no positive was written (a top-k row's indices are distinct)
    neg_val = torch.where(neg_ok, 0, -1).to(out.dtype)
    out = torch.maximum(out, torch.full_like(out, -1).scatter_(1, neg_idx, neg_val))
    return out


def masked_box_loss(
    box2box_transform: Box2BoxTransform,
    src_boxes: Tensor,
    pred_deltas: Tensor,
    target_boxes: Tensor,
    mask: Tensor,
    loss_type: str = "smooth_l1",
    smooth_l1_beta: float = 0.0,
) -> Tensor:
    """Sum over ``mask`` of the box regression loss of (M, 4) predictions, as detectron2's
    ``_dense_box_regression_loss`` (``smooth_l1`` or ``giou``), without indexing by the mask.
    Unmasked rows regress to their own source box (finite targets), then count zero."""
    target_boxes = torch.where(mask[:, None], target_boxes.to(src_boxes.dtype), src_boxes)
    if loss_type == "smooth_l1":
        deltas = box2box_transform.get_deltas(src_boxes, target_boxes)
        loss = smooth_l1_loss(pred_deltas, deltas, beta=smooth_l1_beta, reduction="none").sum(1)
    elif loss_type == "giou":
        pred_boxes = box2box_transform.apply_deltas(pred_deltas, src_boxes)
        loss = giou_loss(pred_boxes, target_boxes, reduction="none")
    else:
        raise ValueError(
            f"box regression loss type {loss_type!r} is not supported by the batched losses "
            "(MODEL.RPN.BBOX_REG_LOSS_TYPE / MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE: "
            "smooth_l1 or giou)"
        )
    return torch.where(mask, loss, torch.zeros_like(loss)).sum()


def label_and_sample_anchors(
    rpn,
    anchors: List[Boxes],
    gt_boxes: Tensor,
    gt_valid: Tensor,
    image_sizes: List[Tuple[int, int]],
) -> Tuple[Tensor, Tensor]:
    """``RPN.label_and_sample_anchors`` for P pairs at once.

    Args:
        rpn: the detectron2 RPN (its matcher, sampling and boundary settings).
        anchors: per level anchors.
        gt_boxes, gt_valid: (P, G, 4) and (P, G) ground truth of each pair.
        image_sizes: P (h, w).

    Returns:
        labels (P, A) in {-1, 0, 1} and matched gt boxes (P, A, 4) (undefined where not 1).
    """
    anchors = Boxes.cat(anchors).tensor
    iou = batched_pairwise_iou(gt_boxes, anchors[None])  # (P, G, A)
    matcher = rpn.anchor_matcher
    matches, labels = match_anchors(
        iou, gt_valid, matcher.thresholds, matcher.labels, matcher.allow_low_quality_matches
    )
    del iou
    labels = labels.to(torch.long)
    if rpn.anchor_boundary_thresh >= 0:
        sizes = torch.tensor(image_sizes, device=anchors.device, dtype=anchors.dtype)
        t = rpn.anchor_boundary_thresh
        inside = (
            (anchors[None, :, 0] >= -t)
            & (anchors[None, :, 1] >= -t)
            & (anchors[None, :, 2] < sizes[:, 1:2] + t)
            & (anchors[None, :, 3] < sizes[:, 0:1] + t)
        )
        labels = torch.where(inside, labels, torch.full_like(labels, -1))
    labels = subsample_labels(labels, rpn.batch_size_per_image, rpn.positive_fraction)
    matched = gt_boxes.gather(1, matches[..., None].expand(-1, -1, 4))
    return labels, matched


def rpn_losses(
    rpn,
    anchors: List[Boxes],
    pred_objectness_logits: List[Tensor],
    gt_labels: Tensor,
    pred_anchor_deltas: List[Tensor],
    gt_boxes: Tensor,
) -> Dict[str, Tensor]:
    """``RPN.losses`` on the stacked (P, A) labels / (P, A, 4) boxes of
    :func:`label_and_sample_anchors`, with masked sums instead of boolean indexing; the same
    values and normalizer. Logs the mean sampled positive/negative anchors (one host read)."""
    from detectron2.utils.events import get_event_storage

    num_pairs = gt_labels.shape[0]
    pos_mask = gt_labels == 1
    valid_mask = gt_labels >= 0
    counts = torch.stack([pos_mask.sum(), (gt_labels == 0).sum()])
    num_pos, num_neg = read_host(counts)
    storage = get_event_storage()
    storage.put_scalar("rpn/num_pos_anchors", num_pos / num_pairs)
    storage.put_scalar("rpn/num_neg_anchors", num_neg / num_pairs)

    anchors_t = Boxes.cat(anchors).tensor
    deltas = cat(pred_anchor_deltas, dim=1)  # (P, A, 4)
    src = anchors_t[None].expand(num_pairs, -1, -1).reshape(-1, anchors_t.shape[1])
    localization_loss = masked_box_loss(
        rpn.box2box_transform,
        src,
        deltas.reshape(-1, deltas.shape[-1]).float(),
        gt_boxes.reshape(-1, gt_boxes.shape[-1]),
        pos_mask.flatten(),
        rpn.box_reg_loss_type,
        rpn.smooth_l1_beta,
    )
    logits = cat(pred_objectness_logits, dim=1)
    bce = F.binary_cross_entropy_with_logits(
        logits.float(), gt_labels.clamp(min=0).float(), reduction="none"
    )
    objectness_loss = torch.where(valid_mask, bce, torch.zeros_like(bce)).sum()
    normalizer = rpn.batch_size_per_image * num_pairs
    losses = {
        "loss_rpn_cls": objectness_loss / normalizer,
        "loss_rpn_loc": localization_loss / normalizer,
    }
    return {k: v * rpn.loss_weight.get(k, 1.0) for k, v in losses.items()}


@torch.no_grad()
def find_top_proposals(
    proposals: List[Tensor],
    pred_objectness_logits: List[Tensor],
    image_sizes: List[Tuple[int, int]],
    nms_thresh: float,
    pre_nms_topk: int,
    post_nms_topk: int,
    min_box_size: float,
    training: bool,
) -> Tuple[Tensor, Tensor, Tensor]:
    """detectron2's ``find_top_rpn_proposals`` for P pairs in tensor passes.

    Per level the ``pre_nms_topk`` best anchors of every pair (one top-k), then invalid and
    empty boxes masked, boxes clipped to each pair's image, one NMS over all pairs and levels
    (group = pair x level, as detectron2's per-image ``batched_nms`` over levels), and per pair
    the ``post_nms_topk`` best survivors in descending score.

    Returns:
        boxes (P, k, 4), objectness logits (P, k) and validity (P, k): pair p's proposals are
        ``boxes[p][valid[p]]``, the same as detectron2's, in the same order.
    """
    num_pairs = len(image_sizes)
    device = proposals[0].device
    scores, boxes, levels = [], [], []
    for level, (props, logits) in enumerate(zip(proposals, pred_objectness_logits)):
        k = min(logits.shape[1], pre_nms_topk)
        s, idx = logits.topk(k, dim=1)
        scores.append(s)
        boxes.append(props.gather(1, idx[..., None].expand(-1, -1, props.shape[-1])))
        levels.append(torch.full((k,), level, dtype=torch.int64, device=device))
    scores, boxes, levels = cat(scores, dim=1), cat(boxes, dim=1), cat(levels)

    finite = torch.isfinite(boxes).all(dim=2) & torch.isfinite(scores)
    if training and not bool(finite.all()):
        raise FloatingPointError(
            "Predicted boxes or scores contain Inf/NaN. Training has diverged."
        )
    boxes = torch.where(finite[..., None], boxes, torch.zeros_like(boxes))
    sizes = torch.tensor(image_sizes, dtype=boxes.dtype).to(device, non_blocking=True)
    h, w = sizes[:, 0, None], sizes[:, 1, None]
    x0, y0, x1, y1 = boxes.unbind(dim=2)
    boxes = torch.stack(
        [x0.clamp(min=0).minimum(w), y0.clamp(min=0).minimum(h)]
        + [x1.clamp(min=0).minimum(w), y1.clamp(min=0).minimum(h)],
        dim=2,
    )
    valid = finite & (boxes[..., 2] - boxes[..., 0] > min_box_size)
    valid &= boxes[..., 3] - boxes[..., 1] > min_box_size

    # one NMS for all (pair, level) groups
    flat_boxes = boxes.reshape(-1, 4)
    group = torch.arange(num_pairs, device=device)[:, None] * len(proposals) + levels[None]
    nms_scores = torch.where(
        valid, scores.float(), torch.full_like(scores, float("-inf"), dtype=torch.float32)
    )
    keep = grouped_nms(
        flat_boxes, nms_scores.reshape(-1), group.reshape(-1), nms_thresh, flat_boxes.max() + 1
    )
    kept = torch.zeros(flat_boxes.shape[0], dtype=torch.bool, device=device)
    kept[keep] = True
    kept = kept.view(num_pairs, -1) & valid

    ranked = torch.where(kept, nms_scores, torch.full_like(nms_scores, float("-inf")))
    k = min(post_nms_topk, ranked.shape[1])
    top, idx = ranked.topk(k, dim=1)
    out_valid = top > float("-inf")
    out_boxes = boxes.gather(1, idx[..., None].expand(-1, -1, 4))
    return out_boxes, scores.gather(1, idx), out_valid


def proposals_to_instances(
    boxes: Tensor, scores: Tensor, valid: Tensor, image_sizes: List[Tuple[int, int]]
) -> List[Instances]:
    """Per pair Instances with ``proposal_boxes``, ``objectness_logits`` and a
    ``proposal_valid`` mask: every pair keeps all k rows (fixed shapes, no host sync; the ROI
    heads ignore invalid rows)."""
    out = []
    for b, s, v, size in zip(boxes, scores, valid, image_sizes):
        inst = Instances(size)
        inst.proposal_boxes, inst.objectness_logits, inst.proposal_valid = Boxes(b), s, v
        out.append(inst)
    return out
