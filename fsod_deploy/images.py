"""Reading, resizing and cropping images as the model's data path does, without PyTorch.

Each function matches the detectron2 / fsod_d2 step it replaces pixel for pixel (the tests
compare them): :func:`read_image` is detectron2's ``read_image`` (EXIF orientation, RGB or BGR),
:func:`resize_for_test` its ``ResizeShortestEdge`` test resize (Pillow, bilinear),
:func:`crop_support` the support crop of training, evaluation and ``tools/predict.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "IMAGE_READ_ERRORS",
    "convert_bgr",
    "crop_content",
    "crop_support",
    "read_image",
    "resize_for_test",
    "resized_shape",
]

# What reading an image raises when the file is the problem: missing or unreadable (OSError),
# not an image (PIL.UnidentifiedImageError, an OSError), truncated (OSError), broken data that
# PIL's decoders report as SyntaxError, or a decompression bomb.
IMAGE_READ_ERRORS = (OSError, SyntaxError, Image.DecompressionBombError)

_FORMATS = ("BGR", "RGB")


def read_image(path: str, image_format: str = "BGR") -> np.ndarray:
    """An HWC uint8 image in ``image_format`` ("BGR" or "RGB"), rotated and flipped as its
    EXIF orientation says (detectron2's ``read_image``).

    Raises:
        one of :data:`IMAGE_READ_ERRORS` if the file cannot be read as an image.
    """
    if image_format not in _FORMATS:
        raise ValueError(f"image format must be one of {_FORMATS}, not {image_format!r}")
    with open(path, "rb") as f:
        image = Image.open(f)
        try:
            image = ImageOps.exif_transpose(image)
        except Exception:  # a broken EXIF block: the pixels as stored, as detectron2 does
            pass
        rgb = np.asarray(image.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1]) if image_format == "BGR" else rgb


def convert_bgr(image: np.ndarray, image_format: str) -> np.ndarray:
    """Convert a BGR HWC/NHWC image to ``image_format`` ("BGR" or "RGB")."""
    if image_format == "BGR":
        return image
    if image_format == "RGB":
        return np.ascontiguousarray(image[..., ::-1])
    raise ValueError(f"support crops support INPUT.FORMAT 'BGR' or 'RGB', not {image_format!r}")


def resized_shape(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """(h, w) after resizing the shorter side to ``short`` with the longer side at most
    ``max_size`` (detectron2's ``ResizeShortestEdge.get_output_shape``; INPUT.MIN_SIZE_TEST,
    INPUT.MAX_SIZE_TEST)."""
    scale = short * 1.0 / min(height, width)
    if height < width:
        new_h, new_w = short * 1.0, scale * width
    else:
        new_h, new_w = scale * height, short * 1.0
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_for_test(image: np.ndarray, short: int, max_size: int) -> np.ndarray:
    """The test-time resize of an HWC uint8 image (Pillow bilinear, as detectron2 resizes
    uint8 images); ``short`` 0 keeps the image as it is."""
    if short <= 0:
        return image
    h, w = image.shape[:2]
    new_h, new_w = resized_shape(h, w, short, max_size)
    if (new_h, new_w) == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))


def crop_content(
    image: np.ndarray, box_xyxy: Sequence[float], size: int, context: int
) -> tuple[np.ndarray, np.ndarray]:
    """The resized crop without padding (longer side == ``size``) and the box in it."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    x0, x1 = min(max(x0, 0.0), w), min(max(x1, 0.0), w)
    y0, y1 = min(max(y0, 0.0), h), min(max(y1, 0.0), h)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {list(box_xyxy)} has no area inside the {w}x{h} image")
    cx0, cy0 = max(math.floor(x0 - context), 0), max(math.floor(y0 - context), 0)
    cx1, cy1 = min(math.ceil(x1 + context), w), min(math.ceil(y1 + context), h)
    region = image[cy0:cy1, cx0:cx1]
    rh, rw = region.shape[:2]
    scale = size / max(rh, rw)
    nh, nw = max(1, min(size, round(rh * scale))), max(1, min(size, round(rw * scale)))
    # INTER_AREA when shrinking avoids aliasing; INTER_LINEAR when enlarging.
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    content = cv2.resize(region, (nw, nh), interpolation=interp)
    if image.ndim == 3 and content.ndim == 2:  # cv2 drops a single channel axis
        content = content[:, :, None]
    sx, sy = nw / rw, nh / rh
    box = np.array(
        [(x0 - cx0) * sx, (y0 - cy0) * sy, (x1 - cx0) * sx, (y1 - cy0) * sy], dtype=np.float32
    )
    box[0::2] = box[0::2].clip(0, nw)
    box[1::2] = box[1::2].clip(0, nh)
    return content, box


def crop_support(
    image: np.ndarray, box_xyxy: Sequence[float], size: int, context: int
) -> tuple[np.ndarray, np.ndarray]:
    """Crop one support example: the object box plus ``context`` pixels on each side (clipped
    to the image), resized so that its longer side is ``size`` (aspect ratio kept) and
    zero-padded at the bottom/right to ``size x size``.

    Args:
        image: HWC uint8 image (any channel order; it is kept).
        box_xyxy: object box in image pixels (XYXY, absolute); clipped to the image.
        size: side of the square output.
        context: pixels added on every side of the box before cropping (clipped to the image).

    Returns:
        ``(crop, box)``: the ``(size, size, C)`` uint8 crop, content at the top-left and zeros
        elsewhere, and the object box (float32 XYXY) in crop pixels.

    Raises:
        ValueError: if the box has no area inside the image.
    """
    content, box = crop_content(image, box_xyxy, size, context)
    crop = np.zeros((size, size) + image.shape[2:], dtype=np.uint8)
    crop[: content.shape[0], : content.shape[1]] = content
    return crop, box
