"""Do two backends detect the same? The parity contract of an exported detector.

Two runs agree when every detection of either scoring at least ``min_score`` has a detection of
the same class in the other with IoU >= ``min_iou`` and a score within ``score_tol`` (the
tests and ``benchmarks/export_latency.py`` check ONNX Runtime against eager PyTorch with it).
Detections just below ``min_score`` on one side may be just above on the other; they are
matched against all of the other side's detections, so they are not counted twice.
"""

from __future__ import annotations

import numpy as np

from .detector import Detections

__all__ = ["box_iou", "compare_detections"]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of (N, 4) with (M, 4) XYXY boxes -> (N, M)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _unmatched(x: Detections, y: Detections, min_score, min_iou, score_tol) -> tuple[int, float]:
    """Detections of ``x`` scoring >= ``min_score`` without a partner in ``y``; the largest
    score difference of the matched ones."""
    iou = box_iou(x.boxes, y.boxes)
    same = x.class_ids[:, None] == y.class_ids[None, :]
    close = np.abs(x.scores[:, None] - y.scores[None, :]) <= score_tol
    ok = (iou >= min_iou) & same & close
    wanted = x.scores >= min_score
    missing = int((wanted & ~ok.any(axis=1)).sum())
    diffs = np.where(ok, np.abs(x.scores[:, None] - y.scores[None, :]), np.inf).min(axis=1)
    matched = diffs[wanted & ok.any(axis=1)]
    return missing, float(matched.max()) if len(matched) else 0.0


def compare_detections(
    a: Detections,
    b: Detections,
    *,
    min_score: float,
    min_iou: float = 0.99,
    score_tol: float = 1e-3,
    max_detections: int = 0,
) -> dict:
    """How far ``a`` and ``b`` (one image) agree: ``unmatched`` (detections >= ``min_score``
    of either without a partner), ``max_score_diff`` of the matched ones, and the counts.
    ``max_detections``: the model's detections per image; a list that long was cut by score,
    so detections within ``score_tol`` of the cut may be on one side only and are not
    required to match."""
    for d in (a, b):
        if max_detections and len(d.scores) >= max_detections:
            min_score = max(min_score, float(d.scores.min()) + score_tol)
    miss_a, diff_a = _unmatched(a, b, min_score, min_iou, score_tol)
    miss_b, diff_b = _unmatched(b, a, min_score, min_iou, score_tol)
    return {
        "unmatched": miss_a + miss_b,
        "max_score_diff": max(diff_a, diff_b),
        "compared": int((a.scores >= min_score).sum() + (b.scores >= min_score).sum()),
    }
