"""Test-time detection selection as tensors in, tensors out (the eager and the exported path).

:func:`select_detections` is detectron2's ``fast_rcnn_inference_single_image`` for a
class-agnostic box regressor: clip, score threshold, NMS per class, top-k. It is written without
Python branches on data-dependent sizes (``Instances``/``Boxes`` construction, ``if not
valid.all()``, ``boxes.numel()`` tests), so ``torch.export`` traces it and the detector exported
to ONNX runs the same selection as the model in PyTorch.
"""

from typing import Tuple

import torch
from torch import Tensor
from torchvision.ops import nms

__all__ = ["grouped_nms", "select_detections"]


def grouped_nms(
    boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float, span
) -> Tensor:
    """NMS within each group: indices of the kept boxes in decreasing score order.

    Boxes of group ``g`` are shifted by ``g * span`` so that boxes of different groups never
    overlap; ``span`` must exceed every box coordinate (e.g. the image's longer side + 1 for
    boxes clipped to it). This is the offset branch of ``torchvision.ops.batched_nms``, used for
    every input size: above 4000 box coordinates on CPU, ``batched_nms`` switches to a loop over
    ``torch.unique(groups)``, one host sync and one NMS call per group (per (image, class) pair
    in a training step), which ``torch.export`` cannot trace either.
    """
    shifted = boxes + (groups.to(boxes.dtype) * span)[:, None]
    return nms(shifted, scores, iou_threshold)


def select_detections(
    boxes: Tensor,
    scores: Tensor,
    image_size: Tuple[int, int],
    score_thresh: float,
    nms_thresh: float,
    topk: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Detections of one image from ROI boxes and per-class scores.

    Args:
        boxes: (R, 4) predicted boxes (XYXY, the ROI's class-agnostic regression).
        scores: (R, C) score of every ROI for every class; non-finite scores or boxes drop the
            pair.
        image_size: (h, w) that boxes are clipped to.
        score_thresh: keep pairs scoring strictly above it.
        nms_thresh: IoU above which a box suppresses lower-scoring boxes of its class.
        topk: at most this many detections (highest scores first); < 0 = all.

    Returns:
        boxes (D, 4), scores (D,) and class indices (D,) into the columns of ``scores``,
        in decreasing score order.
    """
    h, w = image_size
    finite = torch.isfinite(boxes).all(dim=1, keepdim=True)
    x0, y0, x1, y1 = boxes.unbind(dim=1)
    boxes = torch.stack(
        [x0.clamp(min=0, max=w), y0.clamp(min=0, max=h)]
        + [x1.clamp(min=0, max=w), y1.clamp(min=0, max=h)],
        dim=1,
    )
    keep = (scores > score_thresh) & torch.isfinite(scores) & finite
    rows, classes = keep.nonzero(as_tuple=True)
    boxes, scores = boxes[rows], scores[rows, classes]
    kept = grouped_nms(boxes, scores, classes, nms_thresh, max(h, w) + 1)
    if topk >= 0:
        kept = kept[:topk]
    return boxes[kept], scores[kept], classes[kept]
