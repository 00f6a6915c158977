"""Draw detections on an image: one colour per class, labels "name 0.87" inside the image.

Torch-free (numpy and OpenCV only): ``tools/predict.py``, the app and the exported runtime draw
the same pictures. Labels are laid out so that they stay readable:

* every label lies entirely inside the image (moved in from the edges; a name too long for the
  image is shortened with "..");
* a label goes above its box, else inside its top edge, below it or inside its bottom edge,
  else the nearest free place next to the labels already placed; better scores are placed
  first, and drawn last (on top) when no free place is left;
* the label's text is black or white, whichever reads better on the class colour.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import cv2
import numpy as np

__all__ = [
    "class_color",
    "draw_detections",
    "label_layout",
    "label_text",
    "nothing_drawn_message",
]

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_GOLDEN = 0.618033988749895


def class_color(class_id: int) -> tuple[int, int, int]:
    """The RGB colour of a class: hues spread by the golden ratio, so neighbouring ids differ."""
    r, g, b = colorsys.hsv_to_rgb((int(class_id) * _GOLDEN) % 1.0, 0.8, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def label_text(name: str, score: float) -> str:
    """ "name 0.87"."""
    return f"{name} {score:.2f}"


def _style(height: int, width: int) -> tuple[float, int, int]:
    """Font scale, text thickness and box thickness for an image of this size."""
    side = min(height, width)
    scale = float(np.clip(side / 640.0, 0.35, 1.2))
    return scale, 1 if scale < 0.8 else 2, max(1, round(side / 320))


def _text_size(text: str, scale: float, thickness: int) -> tuple[int, int, int]:
    (w, h), baseline = cv2.getTextSize(text, _FONT, scale, thickness)
    return w, h, baseline


def _fit(text: str, max_width: int, scale: float, thickness: int) -> str:
    """``text`` shortened (name cut, "..", score kept) until it is at most ``max_width`` wide."""
    if _text_size(text, scale, thickness)[0] <= max_width:
        return text
    name, _, score = text.rpartition(" ")
    while name:
        name = name[:-1]
        short = f"{name}.. {score}" if name else score
        if _text_size(short, scale, thickness)[0] <= max_width:
            return short
    return score


def _overlaps(rect: np.ndarray, placed: list[np.ndarray]) -> bool:
    return any(
        rect[0] < p[2] and p[0] < rect[2] and rect[1] < p[3] and p[1] < rect[3] for p in placed
    )


def label_layout(
    image_shape: Sequence[int],
    boxes: np.ndarray,
    sizes: Sequence[tuple[int, int]],
    order: Sequence[int] | None = None,
) -> np.ndarray:
    """Where each label goes: (N, 4) int XYXY rectangles inside the image.

    Args:
        image_shape: (H, W, ...) of the image.
        boxes: (N, 4) XYXY boxes the labels belong to.
        sizes: (width, height) of each label in pixels (at most the image's size).
        order: the order in which labels choose their place (default: as given); a label
            placed earlier gets the place nearest its box.
    """
    h, w = int(image_shape[0]), int(image_shape[1])
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    rects = np.zeros((len(boxes), 4), dtype=np.int64)
    placed: list[np.ndarray] = []
    for i in range(len(boxes)) if order is None else order:
        lw, lh = min(int(sizes[i][0]), w), min(int(sizes[i][1]), h)
        x0, y0, x1, y1 = boxes[i]
        xs = [int(np.clip(round(x0), 0, w - lw)), int(np.clip(round(x1) - lw, 0, w - lw))]
        # above the box, inside its top edge, below it, inside its bottom edge
        preferred = [round(y0) - lh, round(y0), round(y1), round(y1) - lh]
        ys = list(dict.fromkeys(int(np.clip(y, 0, h - lh)) for y in preferred))
        beside = {int(y) for p in placed for y in (p[3], p[1] - lh) if 0 <= y <= h - lh}
        ys += sorted(beside - set(ys), key=lambda y: (abs(y - ys[0]), y))  # next to others
        choice = None
        for y in ys:
            for x in xs:
                rect = np.array([x, y, x + lw, y + lh])
                if not _overlaps(rect, placed):
                    choice = rect
                    break
            if choice is not None:
                break
        if choice is None:  # no free place: above the box (drawn in score order, best on top)
            choice = np.array([xs[0], ys[0], xs[0] + lw, ys[0] + lh])
        rects[i] = choice
        placed.append(choice)
    return rects


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    class_names: Sequence[str],
    *,
    channel_order: str = "RGB",
) -> np.ndarray:
    """A copy of ``image`` with the detections drawn: boxes in their class's colour, labels
    "name 0.87" (see the module docstring for the layout).

    Args:
        image: (H, W, 3) uint8 image.
        boxes: (N, 4) XYXY boxes in pixels.
        scores: (N,) scores.
        classes: (N,) class ids, indices into ``class_names`` (an id without a name is drawn
            as "class <id>").
        class_names: the name of each class id.
        channel_order: "RGB" or "BGR", the image's channel order (the colours are the same
            either way).

    Returns:
        The drawn (H, W, 3) uint8 image; ``image`` is not changed.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"draw_detections draws on (H, W, 3) uint8 images, not {image.dtype} {image.shape}"
        )
    if channel_order not in ("RGB", "BGR"):
        raise ValueError(f"channel_order must be 'RGB' or 'BGR', not {channel_order!r}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    classes = np.asarray(classes).reshape(-1).astype(np.int64)
    if not len(boxes) == len(scores) == len(classes):
        raise ValueError(
            f"{len(boxes)} boxes, {len(scores)} scores and {len(classes)} classes: one of each "
            "per detection"
        )
    out = np.ascontiguousarray(image.copy())
    if not len(boxes):
        return out
    h, w = out.shape[:2]
    scale, text_thickness, box_thickness = _style(h, w)
    pad = max(1, text_thickness + 1)

    def color(c: int) -> tuple[int, int, int]:
        rgb = class_color(c)
        return rgb if channel_order == "RGB" else rgb[::-1]

    def name(c: int) -> str:
        return str(class_names[c]) if 0 <= c < len(class_names) else f"class {c}"

    order = np.argsort(-scores, kind="stable")
    for i in order[::-1]:  # best box last: on top
        x0, y0, x1, y1 = (int(round(v)) for v in boxes[i])
        cv2.rectangle(out, (x0, y0), (x1, y1), color(classes[i]), box_thickness)

    texts, sizes = [], []
    for i in range(len(boxes)):
        text = _fit(label_text(name(classes[i]), scores[i]), w - 2 * pad, scale, text_thickness)
        tw, th, baseline = _text_size(text, scale, text_thickness)
        texts.append((text, th, baseline))
        sizes.append((tw + 2 * pad, th + baseline + 2 * pad))
    rects = label_layout(out.shape, boxes, sizes, order=order.tolist())
    for i in order[::-1]:
        lx0, ly0, lx1, ly1 = (int(v) for v in rects[i])
        bg = color(classes[i])
        cv2.rectangle(out, (lx0, ly0), (lx1 - 1, ly1 - 1), bg, cv2.FILLED)
        r, g, b = bg if channel_order == "RGB" else bg[::-1]
        ink = (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)
        text, th, _ = texts[i]
        cv2.putText(
            out, text, (lx0 + pad, ly0 + pad + th), _FONT, scale, ink, text_thickness, cv2.LINE_AA
        )
    return out


def nothing_drawn_message(
    best_score: float | None,
    best_image: str,
    threshold: float,
    option: str = "--confidence-threshold",
) -> str:
    """What to tell the user when no detection reached the drawing threshold: the highest
    score and where, and the two ways forward (a lower threshold, or a model that knows this
    kind of object). ``best_score`` None: the model returned no detection at all."""
    if best_score is None:
        return (
            "the model returned no detection at all; it may not know this kind of object "
            "(a base model finds what resembles its training classes: see "
            "docs/troubleshooting.md)"
        )
    lower = max(0.01, np.floor(best_score * 100) / 100)
    return (
        f"no detection reached {option} {threshold:.2f} (the highest score is "
        f"{best_score:.2f}, in {best_image}); lower it ({option} {lower:.2f}) to see the best "
        "ones, but low scores are often wrong: the model may not know this kind of object "
        "(see docs/troubleshooting.md)"
    )
