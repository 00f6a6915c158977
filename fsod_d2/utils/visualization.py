"""Drawing helpers: an episode as one image (query with ground truth | N x K support grid)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

__all__ = ["draw_episode", "class_color"]

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_color(class_id: int) -> tuple[int, int, int]:
    """A stable, distinct RGB colour per class id (golden-ratio hue walk)."""
    hue = int((class_id * 0.618033988749895 % 1.0) * 180)
    hsv = np.uint8([[[hue, 200, 230]]])
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def _to_rgb(chw: torch.Tensor | np.ndarray, image_format: str) -> np.ndarray:
    img = chw.numpy() if isinstance(chw, torch.Tensor) else np.asarray(chw)
    img = np.ascontiguousarray(img.transpose(1, 2, 0))
    return np.ascontiguousarray(img[..., ::-1]) if image_format == "BGR" else img


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float, color, thick=1) -> None:
    cv2.putText(img, text, org, _FONT, scale, (255, 255, 255), thick + 2, cv2.LINE_AA)
    cv2.putText(img, text, org, _FONT, scale, color, thick, cv2.LINE_AA)


def _resize_h(img: np.ndarray, height: int) -> np.ndarray:
    scale = height / img.shape[0]
    w = max(1, round(img.shape[1] * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(img, (w, height), interpolation=interp)


def draw_episode(
    episode: dict[str, Any],
    class_names: Sequence[str],
    *,
    image_format: str = "BGR",
    tile: int = 112,
    title: str = "",
) -> np.ndarray:
    """Render an episode from :class:`EpisodicDatasetMapper` as one RGB uint8 image.

    Left: the (augmented) query with its ground-truth boxes and class names. Right: one row per
    episode class (label, "present"/"absent" in the query) with its K support crops and their
    boxes, in the episode's order.
    """
    query = _to_rgb(episode["image"], image_format)
    classes = episode["support_classes"].tolist()
    n = len(classes)
    k = len(episode["support_images"]) // max(n, 1)
    inst = episode["instances"]
    gt_classes = inst.gt_classes.tolist()
    present = set(gt_classes)

    pad, label_w, head = 6, 205, 28
    grid_h = n * (tile + pad) + pad
    qh = max(grid_h, 256)
    scale = qh / query.shape[0]
    q = _resize_h(query, qh)
    for box, c in zip(inst.gt_boxes.tensor.tolist(), gt_classes):
        x0, y0, x1, y1 = (int(round(v * scale)) for v in box)
        color = class_color(c)
        cv2.rectangle(q, (x0, y0), (x1, y1), color, 2)
        _text(q, class_names[c][:28], (x0 + 2, max(y0 - 4, 12)), 0.45, color)

    width = q.shape[1] + pad + label_w + k * (tile + pad) + pad
    canvas = np.full((head + max(qh, grid_h) + pad, width, 3), 255, dtype=np.uint8)
    canvas[head : head + qh, : q.shape[1]] = q
    _text(canvas, title[:120], (pad, 19), 0.5, (0, 0, 0))

    gx = q.shape[1] + pad
    supports = episode["support_images"]
    boxes = episode["support_boxes"].tolist()
    s = supports.shape[-1]
    for row, c in enumerate(classes):
        y = head + pad + row * (tile + pad)
        color = class_color(c)
        state = "present" if c in present else "absent"
        _text(canvas, f"{c}: {class_names[c][:22]}", (gx, y + tile // 2 - 4), 0.45, color)
        state_color = (0, 130, 0) if c in present else (0, 0, 0)
        _text(canvas, state, (gx, y + tile // 2 + 14), 0.45, state_color)
        for j in range(k):
            i = row * k + j
            crop = cv2.resize(_to_rgb(supports[i], image_format), (tile, tile))
            x0, y0, x1, y1 = (int(round(v * tile / s)) for v in boxes[i])
            cv2.rectangle(crop, (x0, y0), (x1, y1), color, 2)
            x = gx + label_w + j * (tile + pad)
            canvas[y : y + tile, x : x + tile] = crop
    return canvas
