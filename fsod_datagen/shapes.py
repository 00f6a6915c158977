"""Deterministic toy few-shot detection dataset ("shapes"): drawn objects on real photos.

The category names and ids are defined in :mod:`fsod_d2.data.datasets.toy_categories` (which
registration reads without this generator).

Every category is a fixed combination of a *shape* (circle, star, arrow, heart, ...), a *pattern*
(solid, striped, checkered, dotted, split two-tone, bordered) and a *colour scheme* (primary +
secondary colour). The first 25 categories all have different shapes; categories 25-49 reuse those
shapes with a different pattern *and* a different colour, so any two categories differ in at least
two of the three attributes. Instances vary in scale, aspect ratio, rotation, colour and texture;
scale and position are drawn independently of the category, so identity is learnable only from
appearance. Backgrounds are random crops of the photos that ship with scikit-image (no download).

``difficulty="hard"`` widens every jitter (scale range 6x, rotation, colour/texture), and adds
clutter that is *not* an annotated category (photo-textured blobs, noise blobs, scribbles), part of
it placed over objects so that they are partially occluded.

The layout (COCO format, ``file_name`` relative to ``image_root``)::

    root/train.json  root/val.json  root/meta.json  root/images/{train,val}/NNNNNN.jpg

Category ids are ``2 * TOY_CATEGORIES.index(name) + 1``: non-contiguous on purpose (so downstream
code must map ids) and stable across splits of different sizes. Output is a function of the
parameters only (same seed -> byte-identical JSON; JPEGs at a fixed quality).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fsod_d2.data.datasets.toy_categories import (
    COLOUR_NAMES,
    SHAPE_NAMES,
    TOY_CATEGORIES,
    TOY_STYLES,
    ToyStyle,
    toy_category_id,
    toy_split,
)
from fsod_d2.utils.files import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["TOY_CATEGORIES", "generate_toy_dataset", "toy_category_id", "toy_split"]

# Bump when the drawing changes: an existing dataset with an older version is regenerated.
GENERATOR_VERSION = 1
_JPEG_QUALITY = 90
_SUPERSAMPLE = 3  # objects are drawn at 3x and area-downsampled: anti-aliased edges
_ALPHA_VISIBLE = 0.5  # a pixel belongs to an object (for its box) where its alpha exceeds this
_MIN_LONG_SIDE = 8.0  # pixels; smaller objects are not useful even as hard examples
_PLACEMENT_TRIES = 60

# ---------------------------------------------------------------------------------------------
# Shapes: lists of (polygon in unit coordinates, fill?) drawn in order; fill=False erases (holes).
# Each shape is centred and scaled (keeping its proportions) so that its filled polygons span
# [-1, 1] along their longer axis (y points down).


def _ellipse(cx: float = 0.0, cy: float = 0.0, rx: float = 1.0, ry: float = 1.0) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, 96, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _star(points: int, inner: float, start_deg: float = -90.0) -> np.ndarray:
    """Regular polygon (inner=1) or star with ``points`` tips."""
    k = np.arange(2 * points)
    angles = np.deg2rad(start_deg) + np.pi * k / points
    radius = np.where(k % 2 == 0, 1.0, inner)
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _polygon(n: int) -> np.ndarray:
    angles = np.deg2rad(-90.0) + 2.0 * np.pi * np.arange(n) / n
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _heart() -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, 120, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y], axis=1)


def _droplet() -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, 120, endpoint=False)
    # Teardrop with its tip at the top.
    return np.stack([np.sin(t) * np.sin(t / 2.0), -np.cos(t)], axis=1)


def _u_shape() -> np.ndarray:
    outer = np.linspace(np.pi, 0.0, 48)
    inner = np.linspace(0.0, np.pi, 48)
    pts = [(-1.0, -1.0)]
    pts += [(math.cos(t), math.sin(t)) for t in outer]
    pts += [(1.0, -1.0), (0.42, -1.0)]
    pts += [(0.42 * math.cos(t), 0.42 * math.sin(t)) for t in inner]
    pts += [(-0.42, -1.0)]
    return np.asarray(pts)


def _scaled(poly: np.ndarray, s: float, center: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    c = np.asarray(center)
    return c + s * (poly - c)


_SQUARE = np.array([(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)])
_TRIANGLE = np.array([(0.0, -1.0), (1.0, 1.0), (-1.0, 1.0)])


def _raw_shapes() -> dict[str, list[tuple[np.ndarray, bool]]]:
    a = np.asarray
    return {
        "circle": [(_ellipse(), True)],
        "ring": [(_ellipse(), True), (_ellipse(rx=0.55, ry=0.55), False)],
        "triangle": [(_TRIANGLE, True)],
        "square": [(_SQUARE, True)],
        "pentagon": [(_polygon(5), True)],
        "hexagon": [(_polygon(6), True)],
        "star5": [(_star(5, 0.42), True)],
        "star8": [(_star(8, 0.55), True)],
        "plus": [
            (
                a([(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1)]
                  + [(-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)]),
                True,
            )
        ],
        "arrow": [
            (a([(-1, -0.3), (0.1, -0.3), (0.1, -1), (1, 0), (0.1, 1), (0.1, 0.3), (-1, 0.3)]), True)
        ],
        "crescent": [(_ellipse(), True), (_ellipse(0.45, -0.1, 0.85, 0.85), False)],
        "heart": [(_heart(), True)],
        "semicircle": [(_ellipse()[48:], True)],  # lower half of the parametrisation: y <= 0
        "l_shape": [
            (a([(-1, -1), (-0.3, -1), (-0.3, 0.4), (1, 0.4), (1, 1), (-1, 1)]), True),
        ],
        "t_shape": [
            (
                a([(-1, -1), (1, -1), (1, -0.4), (0.3, -0.4), (0.3, 1), (-0.3, 1), (-0.3, -0.4)]
                  + [(-1, -0.4)]),
                True,
            )
        ],
        "trapezoid": [(a([(-0.45, -1), (0.45, -1), (1, 1), (-1, 1)]), True)],
        "hourglass": [(a([(-1, -1), (1, -1), (0.15, 0), (1, 1), (-1, 1), (-0.15, 0)]), True)],
        "chevron": [(a([(-1, -1), (-0.45, -1), (0, 0.2), (0.45, -1), (1, -1), (0, 1)]), True)],
        "bolt": [
            (
                a([(-0.1, -1), (0.6, -1), (0.1, -0.15), (0.7, -0.15), (-0.4, 1), (-0.05, 0.15)]
                  + [(-0.6, 0.15)]),
                True,
            )
        ],
        "droplet": [(_droplet(), True)],
        "square_frame": [(_SQUARE, True), (_scaled(_SQUARE, 0.55), False)],
        "triangle_frame": [(_TRIANGLE, True), (_scaled(_TRIANGLE, 0.42, (0.0, 1.0 / 3.0)), False)],
        "u_shape": [(_u_shape(), True)],
        "flower": [
            *[
                (_ellipse(0.5 * math.cos(t), 0.5 * math.sin(t), 0.5, 0.5), True)
                for t in np.deg2rad(-90.0 + 72.0 * np.arange(5))
            ],
            (_ellipse(rx=0.45, ry=0.45), True),
        ],
        "stairs": [
            (a([(-1, 1), (1, 1), (1, -1), (0.33, -1), (0.33, -0.33), (-0.33, -0.33)]
               + [(-0.33, 0.33), (-1, 0.33)]), True)
        ],
    }  # fmt: skip


def _normalise(shape: list[tuple[np.ndarray, bool]]) -> list[tuple[np.ndarray, bool]]:
    filled = np.concatenate([np.asarray(p, dtype=np.float64) for p, fill in shape if fill])
    lo, hi = filled.min(axis=0), filled.max(axis=0)
    center, scale = (lo + hi) / 2.0, 2.0 / float((hi - lo).max())  # isotropic: keep proportions
    return [((np.asarray(p, np.float64) - center) * scale, fill) for p, fill in shape]


_SHAPES: dict[str, list[tuple[np.ndarray, bool]]] = {
    name: _normalise(shape) for name, shape in _raw_shapes().items()
}
# name -> (primary RGB, secondary RGB). Primary hues are spread so that hue jitter keeps them apart.
_COLOURS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "red": ((215, 35, 35), (245, 245, 245)),
    "orange": ((245, 130, 20), (30, 60, 200)),
    "yellow": ((245, 215, 30), (25, 25, 25)),
    "green": ((40, 160, 60), (245, 215, 30)),
    "cyan": ((20, 190, 210), (125, 45, 185)),
    "blue": ((35, 70, 210), (245, 245, 245)),
    "purple": ((125, 45, 185), (245, 215, 30)),
    "pink": ((235, 90, 175), (25, 25, 25)),
    "white": ((240, 240, 240), (215, 35, 35)),
    "black": ((30, 30, 30), (20, 190, 210)),
}


if tuple(_SHAPES) != SHAPE_NAMES or tuple(_COLOURS) != COLOUR_NAMES:  # one list of names
    raise ImportError("fsod_datagen.shapes: shapes/colours differ from fsod_d2's toy categories")
_STYLES = TOY_STYLES


# ---------------------------------------------------------------------------------------------
# Difficulty presets.


@dataclass(frozen=True)
class _Difficulty:
    scale: tuple[float, float]  # object long side as a fraction of min(H, W), log-uniform
    max_aspect: float  # aspect ratio w/h drawn log-uniformly in [1/max_aspect, max_aspect]
    max_rotation: float  # degrees, uniform in [-max, max] (limited: a square must stay a square)
    hue_jitter: float  # OpenCV hue units (0-180); small enough that colour names stay apart
    sat_jitter: float  # relative
    val_jitter: float  # relative
    texture_jitter: float  # relative jitter of pattern period, stripe angle, dot size
    shading: float  # max brightness change across an object (linear gradient)
    grain: float  # std of per-object pixel noise
    min_visible: float  # every object keeps at least this fraction of its pixels visible
    distractors: tuple[int, int]  # non-annotated clutter items per image (inclusive range)
    occluding_distractors: float  # probability that a distractor is placed over an object
    image_noise: float  # max std of whole-image Gaussian noise
    photometric: float  # max relative global contrast / brightness change


_DIFFICULTIES = {
    "easy": _Difficulty(
        scale=(0.12, 0.36),
        max_aspect=1.3,
        max_rotation=10.0,
        hue_jitter=2.0,
        sat_jitter=0.1,
        val_jitter=0.1,
        texture_jitter=0.1,
        shading=0.08,
        grain=2.0,
        min_visible=0.75,
        distractors=(0, 0),
        occluding_distractors=0.0,
        image_noise=2.0,
        photometric=0.05,
    ),
    "hard": _Difficulty(
        scale=(0.07, 0.42),  # 6x
        max_aspect=1.6,
        max_rotation=25.0,
        hue_jitter=5.0,
        sat_jitter=0.3,
        val_jitter=0.3,
        texture_jitter=0.35,
        shading=0.25,
        grain=8.0,
        min_visible=0.5,
        distractors=(2, 6),
        occluding_distractors=0.5,
        image_noise=6.0,
        photometric=0.2,
    ),
}

# ---------------------------------------------------------------------------------------------
# Backgrounds: photos that ship inside scikit-image (the ones needing `pooch` are left out).

_BACKGROUND_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "stereo_motorcycle",
    "camera",
    "brick",
    "grass",
    "gravel",
    "moon",
)


@lru_cache(maxsize=1)
def _load_backgrounds() -> tuple[np.ndarray, ...]:
    """RGB uint8 photos from ``skimage.data`` (loaded once per process)."""
    from skimage import data  # local import: only the generator needs scikit-image

    photos = []
    for name in _BACKGROUND_PHOTOS:
        try:
            img = getattr(data, name)()
        except Exception as e:  # a build of scikit-image without a file: skip it, loudly
            logger.warning("skimage.data.%s unavailable (%s); not used as a background", name, e)
            continue
        if isinstance(img, tuple):  # stereo_motorcycle -> (left, right, disparity)
            img = img[0]
        img = np.asarray(img)
        if img.dtype != np.uint8:
            img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        photos.append(np.ascontiguousarray(img[:, :, :3]))
    if not photos:
        raise RuntimeError("no scikit-image sample photo could be loaded for toy backgrounds")
    return tuple(photos)


def _photo_crop(
    rng: np.random.Generator, photos: Sequence[np.ndarray], h: int, w: int
) -> np.ndarray:
    """A random crop (30-100% of the largest one), resized to h x w, randomly flipped; float32."""
    photo = photos[int(rng.integers(len(photos)))]
    ph, pw = photo.shape[:2]
    max_w = min(pw, ph * w / h)
    cw = max_w * math.sqrt(rng.uniform(0.3, 1.0))
    ch = cw * h / w
    x0 = rng.uniform(0, pw - cw)
    y0 = rng.uniform(0, ph - ch)
    crop = photo[int(y0) : int(y0 + ch), int(x0) : int(x0 + cw)]
    out = cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return out.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Rendering.


def _jitter_colour(
    rgb: tuple[int, int, int], rng: np.random.Generator, d: _Difficulty
) -> np.ndarray:
    hsv = cv2.cvtColor(np.uint8([[rgb]]), cv2.COLOR_RGB2HSV)[0, 0].astype(np.float64)
    hsv[0] = (hsv[0] + rng.uniform(-d.hue_jitter, d.hue_jitter)) % 180.0
    hsv[1] = np.clip(hsv[1] * (1.0 + rng.uniform(-d.sat_jitter, d.sat_jitter)), 0, 255)
    hsv[2] = np.clip(hsv[2] * (1.0 + rng.uniform(-d.val_jitter, d.val_jitter)), 0, 255)
    out = cv2.cvtColor(np.uint8([[np.round(hsv)]]), cv2.COLOR_HSV2RGB)[0, 0]
    return out.astype(np.float32)


def _pattern_mask(
    pattern: str,
    xx: np.ndarray,
    yy: np.ndarray,
    shape_mask: np.ndarray,
    size: float,
    rng: np.random.Generator,
    d: _Difficulty,
) -> np.ndarray:
    """Where the secondary colour goes, in the object's own (unrotated) frame. ``size`` is the
    object's long side in canvas pixels, so patterns scale with the object."""
    tj = d.texture_jitter
    min_period = 4.0 * _SUPERSAMPLE  # >= 4 output pixels, else the pattern aliases into mush
    period = max(size / (5.0 * (1.0 + rng.uniform(-tj, tj))), min_period)
    if pattern == "solid":
        return np.zeros_like(shape_mask, dtype=bool)
    if pattern == "striped":
        angle = np.deg2rad(rng.uniform(-45.0, 45.0) * tj)
        u = xx * np.cos(angle) + yy * np.sin(angle)
        return (np.floor(u / (period / 2.0) + rng.random()) % 2) == 1
    if pattern == "checkered":
        cell = period / 1.6
        return ((np.floor(xx / cell + rng.random()) + np.floor(yy / cell + rng.random())) % 2) == 1
    if pattern == "dotted":
        radius = rng.uniform(0.28, 0.34) * (1.0 + rng.uniform(-tj, tj) * 0.5)
        dx = np.mod(xx / period + rng.random(), 1.0) - 0.5
        dy = np.mod(yy / period + rng.random(), 1.0) - 0.5
        return dx * dx + dy * dy < radius * radius
    if pattern == "split":
        return xx > rng.uniform(-0.1, 0.1) * tj * size
    if pattern == "bordered":
        thickness = max(1.5 * _SUPERSAMPLE, 0.08 * size * (1.0 + rng.uniform(-tj, tj)))
        dist = cv2.distanceTransform(shape_mask, cv2.DIST_L2, 3)
        return dist < thickness  # the outside too, so anti-aliased edges blend to the border
    raise ValueError(f"unknown pattern {pattern!r}")


def _render_object(
    style: ToyStyle, long_side: float, rng: np.random.Generator, d: _Difficulty
) -> tuple[np.ndarray, np.ndarray]:
    """One instance: (rgb float32 h x w x 3, alpha float32 h x w in [0, 1]), cropped to the
    drawn pixels."""
    ss = _SUPERSAMPLE
    log_a = math.log(d.max_aspect)
    aspect = math.exp(rng.uniform(-log_a, log_a))
    w0, h0 = (long_side, long_side / aspect) if aspect >= 1 else (long_side * aspect, long_side)
    half_w, half_h = w0 * ss / 2.0, h0 * ss / 2.0
    side = (int(math.ceil(math.hypot(w0, h0))) + 2) * ss  # fits any rotation; multiple of ss
    c = side / 2.0

    mask = np.zeros((side, side), np.uint8)
    for poly, fill in _SHAPES[style.shape]:
        pts = np.stack([c + poly[:, 0] * half_w, c + poly[:, 1] * half_h], axis=1)
        cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 255 if fill else 0, shift=4)

    primary_rgb, secondary_rgb = _COLOURS[style.colour]
    primary = _jitter_colour(primary_rgb, rng, d)
    secondary = _jitter_colour(secondary_rgb, rng, d)
    grid = np.arange(side, dtype=np.float32) - c + 0.5
    xx, yy = np.meshgrid(grid, grid)
    secondary_at = _pattern_mask(style.pattern, xx, yy, mask, long_side * ss, rng, d)
    texture = np.where(secondary_at[:, :, None], secondary, primary).astype(np.float32)
    # Soft lighting: a linear brightness gradient in a random direction.
    phi = rng.uniform(0.0, 2.0 * np.pi)
    gain = rng.uniform(-d.shading, d.shading)
    texture *= (1.0 + gain * (xx * np.cos(phi) + yy * np.sin(phi)) / c)[:, :, None]

    angle = rng.uniform(-d.max_rotation, d.max_rotation)
    rot = cv2.getRotationMatrix2D((c, c), angle, 1.0)
    mask = cv2.warpAffine(mask, rot, (side, side), flags=cv2.INTER_LINEAR)
    texture = cv2.warpAffine(
        texture, rot, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    out = (side // ss, side // ss)
    alpha = cv2.resize(mask, out, interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    rgb = cv2.resize(texture, out, interpolation=cv2.INTER_AREA)
    if d.grain > 0:
        rgb += rng.normal(0.0, d.grain, rgb.shape).astype(np.float32)
    ys, xs = np.nonzero(alpha > 0.02)
    crop = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    return np.clip(rgb[crop], 0, 255), alpha[crop]


def _blob_polygon(
    rng: np.random.Generator, cx: float, cy: float, size: float, n: int = 64
) -> np.ndarray:
    """An irregular closed blob (random low-frequency radius): nothing like a toy shape."""
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    r = np.ones_like(t)
    for k in range(2, 6):
        r += rng.uniform(0.05, 0.25) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    r = np.clip(r, 0.3, None)
    aspect = math.exp(rng.uniform(-0.5, 0.5))
    rot = rng.uniform(0, 2 * np.pi)
    x = r * np.cos(t) * aspect * size / 2
    y = r * np.sin(t) / aspect * size / 2
    xr = cx + x * math.cos(rot) - y * math.sin(rot)
    yr = cy + x * math.sin(rot) + y * math.cos(rot)
    return np.stack([xr, yr], axis=1)


def _render_distractor(
    rng: np.random.Generator,
    h: int,
    w: int,
    d: _Difficulty,
    photos: Sequence[np.ndarray],
    near: tuple[float, float, float] | None,
) -> tuple[np.ndarray, np.ndarray, int, int] | None:
    """Clutter that is not a category: (rgb, alpha, x0, y0) patch inside the image, or None."""
    lo, hi = d.scale
    size = min(h, w) * math.exp(rng.uniform(math.log(lo), math.log(hi)))
    if near is not None:  # over an object, to occlude part of it
        ncx, ncy, nsize = near
        cx = ncx + rng.uniform(-0.6, 0.6) * nsize
        cy = ncy + rng.uniform(-0.6, 0.6) * nsize
    else:
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    alpha = np.zeros((h, w), np.uint8)
    kind = rng.choice(3, p=[0.45, 0.35, 0.2])
    if kind == 1:  # scribble: a thick random curve
        steps = int(rng.integers(4, 9))
        heading = rng.uniform(0, 2 * np.pi)
        pts = [(cx, cy)]
        for _ in range(steps):
            heading += rng.normal(0.0, 0.8)
            step = size * rng.uniform(0.2, 0.4)
            pts.append(
                (pts[-1][0] + step * math.cos(heading), pts[-1][1] + step * math.sin(heading))
            )
        poly = np.round(np.asarray(pts) * 16).astype(np.int32)
        thickness = int(rng.integers(2, 6))
        cv2.polylines(alpha, [poly], False, 255, thickness, lineType=cv2.LINE_AA, shift=4)
        hsv = np.uint8([[[rng.integers(0, 180), rng.integers(0, 256), rng.integers(40, 256)]]])
        colour = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
        rgb = np.broadcast_to(colour, (h, w, 3))
    else:
        poly = np.round(_blob_polygon(rng, cx, cy, size) * 16).astype(np.int32)
        cv2.fillPoly(alpha, [poly], 255, lineType=cv2.LINE_AA, shift=4)
        if kind == 0:  # filled with a piece of another photo
            rgb = _photo_crop(rng, photos, h, w)
        else:  # mottled colour noise
            base = rng.uniform(0, 255, 3).astype(np.float32)
            noise = rng.normal(0.0, 60.0, (h // 4 + 1, w // 4 + 1, 3)).astype(np.float32)
            noise = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
            rgb = np.clip(base + noise, 0, 255)
    ys, xs = np.nonzero(alpha)
    if len(ys) == 0:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    a = alpha[y0:y1, x0:x1].astype(np.float32) / 255.0
    return np.ascontiguousarray(rgb[y0:y1, x0:x1], dtype=np.float32), a, int(x0), int(y0)


@dataclass
class _Placed:
    """An annotated object on the canvas and how much of it is still visible."""

    category: int  # index into TOY_CATEGORIES
    visible: np.ndarray  # bool H x W
    full_area: int
    area: int
    center: tuple[float, float, float]  # cx, cy, long side (for aiming occluders)


def _fits(
    placed: list[_Placed], occluder: np.ndarray, x0: int, y0: int, min_visible: float
) -> bool:
    """Would drawing ``occluder`` (bool patch at x0, y0) keep every object visible enough?"""
    h, w = occluder.shape
    for p in placed:
        lost = np.count_nonzero(p.visible[y0 : y0 + h, x0 : x0 + w] & occluder)
        if p.area - lost < min_visible * p.full_area:
            return False
    return True


def _occlude(placed: list[_Placed], occluder: np.ndarray, x0: int, y0: int) -> None:
    h, w = occluder.shape
    for p in placed:
        region = p.visible[y0 : y0 + h, x0 : x0 + w]
        p.area -= np.count_nonzero(region & occluder)
        region &= ~occluder


def _composite(img: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, x0: int, y0: int) -> None:
    h, w = alpha.shape
    region = img[y0 : y0 + h, x0 : x0 + w]
    a = alpha[:, :, None]
    region *= 1.0 - a
    region += rgb * a


def _render_image(
    categories: Sequence[int],
    rng: np.random.Generator,
    h: int,
    w: int,
    d: _Difficulty,
    photos: Sequence[np.ndarray],
) -> tuple[np.ndarray, list[_Placed], int]:
    """Draw one image. Returns (uint8 RGB image, placed objects, number of objects skipped)."""
    img = _photo_crop(rng, photos, h, w)
    num_distractors = int(rng.integers(d.distractors[0], d.distractors[1] + 1))
    # Draw order: objects in the given order, distractors inserted at random places (on top of
    # whatever came before them).
    order: list[int | None] = list(categories)
    for _ in range(num_distractors):
        order.insert(int(rng.integers(len(order) + 1)), None)
    lo, hi = d.scale
    placed: list[_Placed] = []
    skipped = 0
    for cat in order:
        if cat is None:
            near = None
            if placed and rng.random() < d.occluding_distractors:
                near = placed[int(rng.integers(len(placed)))].center
            for _ in range(_PLACEMENT_TRIES // 4):
                item = _render_distractor(rng, h, w, d, photos, near)
                if item is None:
                    continue
                rgb, alpha, x0, y0 = item
                occluder = alpha > _ALPHA_VISIBLE
                if _fits(placed, occluder, x0, y0, d.min_visible):
                    _occlude(placed, occluder, x0, y0)
                    _composite(img, rgb, alpha, x0, y0)
                    break
            continue
        long_side = min(h, w) * math.exp(rng.uniform(math.log(lo), math.log(hi)))
        style = _STYLES[cat]
        ok = False
        for attempt in range(_PLACEMENT_TRIES):
            if attempt % 10 == 0:  # re-draw, smaller after each 10 failed positions
                scale = 0.8 ** (attempt // 10)
                rgb, alpha = _render_object(style, max(long_side * scale, _MIN_LONG_SIDE), rng, d)
                oh, ow = alpha.shape
                own = alpha > _ALPHA_VISIBLE
            if oh > h or ow > w:
                continue
            x0 = int(rng.integers(0, w - ow + 1))
            y0 = int(rng.integers(0, h - oh + 1))
            if not _fits(placed, own, x0, y0, d.min_visible):
                continue
            _occlude(placed, own, x0, y0)
            _composite(img, rgb, alpha, x0, y0)
            visible = np.zeros((h, w), bool)
            visible[y0 : y0 + oh, x0 : x0 + ow] = own
            area = int(np.count_nonzero(own))
            center = (x0 + ow / 2.0, y0 + oh / 2.0, float(max(oh, ow)))
            placed.append(_Placed(cat, visible, area, area, center))
            ok = True
            break
        if not ok:
            skipped += 1

    # Whole-image photometric jitter and sensor noise (boxes are unaffected).
    contrast = 1.0 + rng.uniform(-d.photometric, d.photometric)
    brightness = 255.0 * rng.uniform(-d.photometric, d.photometric) / 2.0
    img = img * contrast + brightness
    sigma = rng.uniform(0.0, d.image_noise)
    if sigma > 0:
        img += rng.normal(0.0, sigma, img.shape).astype(np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), placed, skipped


# ---------------------------------------------------------------------------------------------
# Dataset generation.


def _object_counts(
    rng: np.random.Generator, num_images: int, num_classes: int, lo: int, hi: int
) -> list[int]:
    """Objects per image, raised (up to ``hi``) so that every class can appear at least once."""
    counts = [int(c) for c in rng.integers(lo, hi + 1, size=num_images)]
    while sum(counts) < num_classes and min(counts) < hi:
        counts[counts.index(min(counts))] += 1
    if sum(counts) < num_classes:
        logger.warning(
            "%d images x %d objects cannot show all %d classes", num_images, hi, num_classes
        )
    return counts


def _deal(
    rng: np.random.Generator, counts: Sequence[int], classes: Sequence[int]
) -> list[list[int]]:
    """Classes of each image (``counts[i]`` objects), dealt from a deck of shuffled copies of
    ``classes``: balanced frequencies, every class present if there are enough objects."""
    copies = -(-sum(counts) // len(classes))
    deck = np.concatenate([rng.permutation(classes) for _ in range(copies)])
    starts = np.cumsum([0, *counts])
    return [[int(c) for c in deck[a:b]] for a, b in zip(starts[:-1], starts[1:])]


def _generate_split(
    split: str,
    split_index: int,
    num_images: int,
    class_indices: Sequence[int],
    params: dict[str, Any],
    d: _Difficulty,
    image_dir: Path,
    apart: Sequence[int] = (),
) -> tuple[dict[str, Any], int]:
    """Draw and write one split; returns (COCO dict, skipped objects). Classes in ``apart`` get
    images of their own (a share of the images proportional to their number of classes)."""
    h, w = params["image_size"]
    seed = params["seed"]
    photos = _load_backgrounds()
    plan_rng = np.random.default_rng([seed, split_index, 0])
    counts = _object_counts(
        plan_rng, num_images, len(class_indices), params["min_objects"], params["max_objects"]
    )
    if not apart:
        plan = _deal(plan_rng, counts, class_indices)
    else:
        rest = [c for c in class_indices if c not in set(apart)]
        share = min(max(1, round(num_images * len(apart) / len(class_indices))), num_images - 1)
        own = set(plan_rng.choice(num_images, share, replace=False).tolist())
        groups = {True: [i for i in range(num_images) if i in own]}
        groups[False] = [i for i in range(num_images) if i not in own]
        plan = [[] for _ in range(num_images)]
        for is_apart, classes in ((False, rest), (True, list(apart))):
            dealt = _deal(plan_rng, [counts[i] for i in groups[is_apart]], classes)
            for i, cats in zip(groups[is_apart], dealt):
                plan[i] = cats

    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    skipped = 0
    for i, cats in enumerate(plan):
        rng = np.random.default_rng([seed, split_index, 1, i])
        img, placed, miss = _render_image(cats, rng, h, w, d, photos)
        skipped += miss
        file_name = f"{split}/{i:06d}.jpg"
        bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
        if not cv2.imwrite(
            str(image_dir / f"{i:06d}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY]
        ):
            raise OSError(f"could not write {image_dir / f'{i:06d}.jpg'}")
        image_id = i + 1
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        for p in placed:
            ys, xs = np.nonzero(p.visible)
            x0, y0 = int(xs.min()), int(ys.min())
            bw, bh = int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 2 * p.category + 1,
                    "bbox": [x0, y0, bw, bh],
                    "area": int(p.area),  # visible pixels, like a COCO segment area
                    "iscrowd": 0,
                }
            )
    categories = [
        {"id": 2 * c + 1, "name": TOY_CATEGORIES[c], "supercategory": "toy"}
        for c in sorted(class_indices)
    ]
    coco = {
        "info": {
            "description": f"fsod-d2 toy few-shot detection dataset ({split})",
            "version": str(GENERATOR_VERSION),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    return coco, skipped


def _write_json(path: Path, obj: Any) -> None:
    with atomic_write(path, encoding="utf-8") as f:
        f.write(json.dumps(obj, separators=(",", ":")) + "\n")


def _check_params(params: dict[str, Any]) -> None:
    toy_split(params["num_base"], params["num_novel"])  # validates the class counts
    if params["difficulty"] not in _DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {sorted(_DIFFICULTIES)}")
    if params["num_train"] < 1 or params["num_val"] < 1:
        raise ValueError("num_train and num_val must be >= 1")
    h, w = params["image_size"]
    if min(h, w) < 64:
        raise ValueError(f"image_size {params['image_size']} too small (min side 64)")
    if not 1 <= params["min_objects"] <= params["max_objects"]:
        raise ValueError("need 1 <= min_objects <= max_objects")
    if params["seed"] < 0:
        raise ValueError("seed must be >= 0")
    if params.get("separate_novel") and (params["num_novel"] < 1 or params["num_train"] < 2):
        raise ValueError("separate_novel needs num_novel >= 1 and num_train >= 2")


def _result(root: Path, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "train_json": str(root / "train.json"),
        "val_json": str(root / "val.json"),
        "image_root": str(root / "images"),
        "base_classes": list(meta["base_classes"]),
        "novel_classes": list(meta["novel_classes"]),
        "stats": dict(meta["stats"]),
    }


def _files_present(root: Path, params: dict[str, Any]) -> bool:
    for split, n in (("train", params["num_train"]), ("val", params["num_val"])):
        if not (root / f"{split}.json").is_file():
            return False
        image_dir = root / "images" / split
        if not image_dir.is_dir() or sum(1 for f in image_dir.glob("*.jpg")) != n:
            return False
    return True


def generate_toy_dataset(
    root: str | os.PathLike,
    *,
    num_base: int = 20,
    num_novel: int = 5,
    num_train: int = 240,
    num_val: int = 60,
    image_size: tuple[int, int] = (240, 320),
    min_objects: int = 1,
    max_objects: int = 6,
    seed: int = 0,
    difficulty: str = "easy",
    separate_novel: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Generate (or reuse) the toy few-shot detection dataset under ``root``.

    Writes ``train.json`` and ``val.json`` (COCO; both contain all base + novel categories),
    ``images/{train,val}/*.jpg`` and ``meta.json`` (parameters, class split, stats; written last,
    so its presence marks a complete dataset).

    Reuse: if ``root/meta.json`` records the same parameters (and generator version) and the
    files are present, nothing is written and the recorded result is returned. If it records
    *different* parameters, ``FileExistsError`` is raised unless ``overwrite=True`` (use another
    root for another configuration). ``overwrite=True`` always regenerates.

    Args:
        root: output folder (created).
        num_base, num_novel: class split, ``toy_split(num_base, num_novel)``.
        num_train, num_val: number of images per split.
        image_size: (height, width) of every image.
        min_objects, max_objects: annotated objects per image (uniform, inclusive).
        seed: everything is a function of the parameters; same seed -> identical JSON.
        difficulty: "easy" or "hard" (more jitter, clutter that occludes objects).
        separate_novel: in the train split, novel-class objects only in images without base
            objects (a share of the images proportional to the number of novel classes), so
            that base training (``<name>_base``, images without base objects left out) never
            sees a novel object as unlabelled background. The val split is drawn as without it.
        overwrite: regenerate even if ``root`` holds a dataset.

    Returns:
        dict with "train_json", "val_json", "image_root" (paths as str), "base_classes",
        "novel_classes" (names) and "stats" ("images", "boxes", "categories", "seconds", plus
        per-split counts and "skipped_objects": objects that found no room).
    """
    h, w = (int(v) for v in image_size)
    params: dict[str, Any] = {
        "num_base": int(num_base),
        "num_novel": int(num_novel),
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": [h, w],
        "min_objects": int(min_objects),
        "max_objects": int(max_objects),
        "seed": int(seed),
        "difficulty": str(difficulty),
    }
    if separate_novel:  # recorded only when set: datasets written without the option still match
        params["separate_novel"] = True
    _check_params(params)
    root = Path(root)
    meta_path = root / "meta.json"

    if meta_path.is_file() and not overwrite:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("params") != params:
            old = meta.get("params", {})
            diff = {k: (old.get(k), v) for k, v in params.items() if old.get(k) != v}
            raise FileExistsError(
                f"{root} holds a toy dataset with other parameters (old, new): {diff}. "
                "Pass overwrite=True to regenerate it, or choose another root."
            )
        if meta.get("version") == GENERATOR_VERSION and _files_present(root, params):
            logger.info("Reusing toy dataset at %s", root)
            return _result(root, meta)
        logger.info("Toy dataset at %s is stale or incomplete; regenerating", root)
    elif not overwrite and ((root / "train.json").exists() or (root / "val.json").exists()):
        raise FileExistsError(
            f"{root} has train.json/val.json but no toy meta.json; not overwriting files this "
            "generator did not write (pass overwrite=True to replace them)."
        )

    start = time.perf_counter()
    base, novel = toy_split(num_base, num_novel)
    class_indices = [TOY_CATEGORIES.index(n) for n in base + novel]
    d = _DIFFICULTIES[difficulty]
    root.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # an interrupted run must not look complete
    stats: dict[str, Any] = {"categories": len(class_indices), "skipped_objects": 0}
    for split_index, (split, n) in enumerate((("train", num_train), ("val", num_val))):
        image_dir = root / "images" / split
        if image_dir.exists():
            shutil.rmtree(image_dir)
        apart = class_indices[len(base) :] if separate_novel and split == "train" else ()
        coco, skipped = _generate_split(
            split, split_index, n, class_indices, params, d, image_dir, apart
        )
        _write_json(root / f"{split}.json", coco)
        stats[f"{split}_images"] = len(coco["images"])
        stats[f"{split}_boxes"] = len(coco["annotations"])
        stats["skipped_objects"] += skipped
        if split == "train":
            present = {a["category_id"] for a in coco["annotations"]}
            missing = [c["name"] for c in coco["categories"] if c["id"] not in present]
            if missing:
                logger.warning("Toy train split lacks categories %s", missing)
    stats["images"] = stats["train_images"] + stats["val_images"]
    stats["boxes"] = stats["train_boxes"] + stats["val_boxes"]
    stats["seconds"] = round(time.perf_counter() - start, 3)
    if stats["skipped_objects"]:
        logger.warning("%d toy objects found no room and were left out", stats["skipped_objects"])

    meta = {
        "version": GENERATOR_VERSION,
        "params": params,
        "base_classes": base,
        "novel_classes": novel,
        "category_ids": {name: toy_category_id(name) for name in base + novel},
        "stats": stats,
    }
    _write_json(meta_path, meta)
    logger.info(
        "Toy dataset at %s: %d images, %d classes, %d boxes in %.1f s",
        root,
        stats["images"],
        stats["categories"],
        stats["boxes"],
        stats["seconds"],
    )
    return _result(root, meta)
