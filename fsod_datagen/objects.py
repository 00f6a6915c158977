"""Second benchmark family: stroke glyphs, line-art icons, multi-part objects and photo textures.

Every category is defined by its drawing (a glyph, an icon, a fixed arrangement of parts, or a
grey-scale photo texture inside a silhouette); position and size never depend on the class.
Instances vary in scale, aspect, rotation (at most 30 degrees, so e.g. ``M`` never becomes ``W``),
colour, stroke width, font and texture crop. Objects are composited on crops of the colour photos
that ship with scikit-image, 1 to 10 per image with a log-uniform long side of about 14-180 px
(many small ones), images of varying size and aspect; non-annotated distractor patches partially
occlude some objects. Boxes are tight boxes of the visible pixels.

Public API: :data:`OBJECT_CATEGORIES`, :func:`objects_split`, :func:`objects_category_id`,
:func:`generate_objects_dataset`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from fsod_d2.utils.files import atomic_write

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
_JPEG_QUALITY = 90
_MIN_LONG_SIDE = 14.0  # px: object long side drawn log-uniform in [_MIN_LONG_SIDE, _MAX_LONG_SIDE]
_MAX_LONG_SIDE = 180.0
_MIN_BOX_SIDE = 4  # px: a visible box with a shorter side is skipped (and counted)
_MIN_VISIBLE = 0.6  # an object keeps at least this fraction of its pixels visible
_ALPHA_ON = 0.5  # a pixel belongs to an object (for its box) where its alpha exceeds this
_MAX_ROTATION = 30.0  # degrees
_IMAGE_HEIGHTS = (240, 420)
_IMAGE_WIDTHS = (320, 560)
_MAX_OBJECTS = 10
_PLACEMENT_TRIES = 25

# ---------------------------------------------------------------------------------------------
# Photos (shipped inside scikit-image's package directory; nothing is downloaded)
# ---------------------------------------------------------------------------------------------
_BACKGROUND_FILES = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "retina.jpg",
)
_TEXTURE_FILES = {"brick": "brick.png", "gravel": "gravel.png", "grass": "grass.png",
                  "moon": "moon.png", "text": "text.png", "page": "page.png"}  # fmt: skip

_PHOTO_CACHE: dict[str, np.ndarray | None] = {}


def _skimage_data_dir() -> Path | None:
    try:
        import skimage.data
    except ImportError:
        return None
    return Path(skimage.data.__file__).parent


def _read_photo(name: str, colour: bool) -> np.ndarray | None:
    key = f"{name}:{colour}"
    if key not in _PHOTO_CACHE:
        img = None
        data_dir = _skimage_data_dir()
        if data_dir is not None and (data_dir / name).is_file():
            img = cv2.imread(str(data_dir / name), cv2.IMREAD_COLOR if colour else 0)
        if img is not None and colour and img.std() < 1.0:
            img = None
        _PHOTO_CACHE[key] = img
    return _PHOTO_CACHE[key]


def _backgrounds() -> list[np.ndarray]:
    photos = [p for p in (_read_photo(f, True) for f in _BACKGROUND_FILES) if p is not None]
    if not photos:
        raise RuntimeError(
            "No background photo found in scikit-image's data directory (looked for "
            f"{', '.join(_BACKGROUND_FILES)}); install scikit-image (pip install scikit-image)."
        )
    return photos


def _texture(name: str) -> np.ndarray:
    img = _read_photo(_TEXTURE_FILES[name], False)
    if img is None:
        # Missing in this scikit-image version: a deterministic stand-in keeps the class drawable.
        r = np.random.default_rng(len(name))
        img = cv2.GaussianBlur((r.random((256, 256)) * 255).astype(np.uint8), (0, 0), 2.0)
        _PHOTO_CACHE[f"{_TEXTURE_FILES[name]}:False"] = img
    return img


# ---------------------------------------------------------------------------------------------
# Drawing helpers: a renderer draws into a square canvas of side S in normalised coordinates
# ([-1, 1] maps to the canvas with a margin) and returns (bgr uint8, alpha float32 in [0, 1]).
# ---------------------------------------------------------------------------------------------
_SHIFT = 4  # cv2 sub-pixel bits
_AA = cv2.LINE_AA


class _Canvas:
    def __init__(self, size: int):
        self.s = size
        self.rgb = np.zeros((size, size, 3), np.uint8)
        self.mask = np.zeros((size, size), np.uint8)

    def pt(self, x: float, y: float) -> tuple[int, int]:
        half = self.s / 2.0
        k = half * 0.8 * (1 << _SHIFT)
        return int(round(half * (1 << _SHIFT) + x * k)), int(round(half * (1 << _SHIFT) + y * k))

    def pts(self, xy) -> np.ndarray:
        return np.array([self.pt(x, y) for x, y in xy], np.int32)

    def px(self, length: float) -> int:
        """Normalised length -> pixels (for thickness)."""
        return max(1, int(round(length * self.s / 2.0 * 0.8)))

    def rad(self, r: float) -> int:
        return max(1, int(round(r * self.s / 2.0 * 0.8 * (1 << _SHIFT))))

    def poly(self, xy, colour, width: float | None = None, closed: bool = True) -> None:
        p = self.pts(xy)
        if width is None:
            cv2.fillPoly(self.rgb, [p], colour, _AA, _SHIFT)
            cv2.fillPoly(self.mask, [p], 255, _AA, _SHIFT)
        else:
            t = self.px(width)
            cv2.polylines(self.rgb, [p], closed, colour, t, _AA, _SHIFT)
            cv2.polylines(self.mask, [p], closed, 255, t, _AA, _SHIFT)

    def circle(self, x: float, y: float, r: float, colour, width: float | None = None) -> None:
        t = -1 if width is None else self.px(width)
        c, rr = self.pt(x, y), self.rad(r)
        cv2.circle(self.rgb, c, rr, colour, t, _AA, _SHIFT)
        cv2.circle(self.mask, c, rr, 255, t, _AA, _SHIFT)

    def ellipse(self, x, y, rx, ry, colour, width=None, start=0.0, end=360.0, angle=0.0) -> None:
        t = -1 if width is None else self.px(width)
        c, axes = self.pt(x, y), (self.rad(rx), self.rad(ry))
        cv2.ellipse(self.rgb, c, axes, angle, start, end, colour, t, _AA, _SHIFT)
        cv2.ellipse(self.mask, c, axes, angle, start, end, 255, t, _AA, _SHIFT)

    def line(self, x0, y0, x1, y1, colour, width: float) -> None:
        t = self.px(width)
        cv2.line(self.rgb, self.pt(x0, y0), self.pt(x1, y1), colour, t, _AA, _SHIFT)
        cv2.line(self.mask, self.pt(x0, y0), self.pt(x1, y1), 255, t, _AA, _SHIFT)

    def out(self) -> tuple[np.ndarray, np.ndarray]:
        return self.rgb, self.mask.astype(np.float32) / 255.0


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    """Hue in degrees, s/v in [0, 1] -> BGR ints."""
    px = np.array([[[int(h / 2) % 180, int(s * 255), int(v * 255)]]], np.uint8)
    b, g, r = cv2.cvtColor(px, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def _jitter(rng: np.random.Generator, bgr, amount: float = 0.12) -> tuple[int, int, int]:
    """A fixed part colour with brightness/tint jitter (class identity kept)."""
    scale = 1.0 + rng.uniform(-amount, amount)
    tint = rng.uniform(-amount, amount, 3) * 60
    c = np.clip(np.asarray(bgr, np.float64) * scale + tint, 0, 255)
    return int(c[0]), int(c[1]), int(c[2])


def _ink(rng: np.random.Generator, bg_luma: float) -> tuple[int, int, int]:
    """A random colour that contrasts with the local background brightness (0..255)."""
    v = rng.uniform(0.05, 0.4) if bg_luma > 128 else rng.uniform(0.7, 1.0)
    return _hsv(rng.uniform(0, 360), rng.uniform(0.0, 1.0), v)


def _contrast(bgr) -> tuple[int, int, int]:
    luma = 0.114 * bgr[0] + 0.587 * bgr[1] + 0.299 * bgr[2]
    return (20, 20, 20) if luma > 110 else (235, 235, 235)


Renderer = Callable[[np.random.Generator, int, float], tuple[np.ndarray, np.ndarray]]

# ---- glyphs (Hershey stroke fonts) -------------------------------------------------------------
_FONTS = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
)


def _glyph(char: str) -> Renderer:
    def render(rng: np.random.Generator, size: int, bg_luma: float):
        font = _FONTS[rng.integers(len(_FONTS))]
        if rng.random() < 0.25:
            font |= cv2.FONT_ITALIC
        thick_frac = rng.uniform(0.04, 0.1)  # stroke width relative to glyph height
        (w, h), base = cv2.getTextSize(char, font, 1.0, 1)
        scale = 0.6 * size / max(w, h + base)
        thick = max(1, int(round(thick_frac * size * 0.6)))
        (w, h), base = cv2.getTextSize(char, font, scale, thick)
        org = ((size - w) // 2, (size + h) // 2)
        colour = _ink(rng, bg_luma)
        rgb = np.zeros((size, size, 3), np.uint8)
        mask = np.zeros((size, size), np.uint8)
        if rng.random() < 0.5:  # outlined glyph: contrasting rim under the stroke
            rim = max(1, thick // 3)
            cv2.putText(rgb, char, org, font, scale, _contrast(colour), thick + 2 * rim, _AA)
            cv2.putText(mask, char, org, font, scale, 255, thick + 2 * rim, _AA)
        cv2.putText(rgb, char, org, font, scale, colour, thick, _AA)
        cv2.putText(mask, char, org, font, scale, 255, thick, _AA)
        return rgb, mask.astype(np.float32) / 255.0

    return render


# ---- line-art icons (strokes only, one random ink colour) --------------------------------------
def _icon(draw: Callable[[_Canvas, tuple, float, np.random.Generator], None]) -> Renderer:
    def render(rng: np.random.Generator, size: int, bg_luma: float):
        c = _Canvas(size)
        draw(c, _ink(rng, bg_luma), rng.uniform(0.06, 0.14), rng)
        return c.out()

    return render


def _house(c, k, w, rng):
    c.poly([(-0.75, -0.1), (0.75, -0.1), (0.75, 0.95), (-0.75, 0.95)], k, w)
    c.poly([(-0.95, -0.05), (0.0, -0.95), (0.95, -0.05)], k, w, closed=False)
    c.poly([(-0.2, 0.95), (-0.2, 0.4), (0.2, 0.4), (0.2, 0.95)], k, w, closed=False)


def _ladder(c, k, w, rng):
    c.line(-0.45, -1, -0.45, 1, k, w)
    c.line(0.45, -1, 0.45, 1, k, w)
    for y in np.linspace(-0.75, 0.75, 5):
        c.line(-0.45, y, 0.45, y, k, w)


def _spiral(c, k, w, rng):
    t = np.linspace(0, 3.0 * 2 * math.pi, 120)
    r = 0.95 * t / t[-1]
    c.poly(np.stack([r * np.cos(t), r * np.sin(t)], 1), k, w, closed=False)


def _arrow(c, k, w, rng):
    c.line(-0.95, 0, 0.8, 0, k, w)
    c.poly([(0.35, -0.45), (0.95, 0), (0.35, 0.45)], k, w, closed=False)


def _clock(c, k, w, rng):
    c.circle(0, 0, 0.95, k, w)
    for a in range(12):
        t = a * math.pi / 6
        c.line(0.72 * math.cos(t), 0.72 * math.sin(t), 0.85 * math.cos(t), 0.85 * math.sin(t), k,
               w * 0.6)  # fmt: skip
    t = rng.uniform(0, 2 * math.pi)
    c.line(0, 0, 0.6 * math.cos(t), 0.6 * math.sin(t), k, w)
    t = rng.uniform(0, 2 * math.pi)
    c.line(0, 0, 0.4 * math.cos(t), 0.4 * math.sin(t), k, w * 1.3)


def _envelope(c, k, w, rng):
    c.poly([(-0.95, -0.6), (0.95, -0.6), (0.95, 0.6), (-0.95, 0.6)], k, w)
    c.poly([(-0.95, -0.6), (0.0, 0.1), (0.95, -0.6)], k, w, closed=False)


def _bolt(c, k, w, rng):
    c.poly([(0.15, -1), (-0.5, 0.1), (-0.02, 0.1), (-0.2, 1), (0.5, -0.15), (0.03, -0.15)], k, w)


def _umbrella(c, k, w, rng):
    c.ellipse(0, -0.15, 0.95, 0.75, k, w, 180, 360)
    for x in (-0.95, -0.32, 0.32):
        c.ellipse(x + 0.316, -0.15, 0.316, 0.18, k, w, 180, 360)
    c.line(0, -0.15, 0, 0.75, k, w)
    c.ellipse(-0.18, 0.75, 0.18, 0.2, k, w, 0, 180)


def _pine(c, k, w, rng):
    c.poly([(0, -1), (0.5, -0.35), (-0.5, -0.35)], k, w)
    c.poly([(0, -0.55), (0.75, 0.35), (-0.75, 0.35)], k, w)
    c.poly([(-0.15, 0.35), (-0.15, 0.95), (0.15, 0.95), (0.15, 0.35)], k, w, closed=False)


def _fish(c, k, w, rng):
    c.ellipse(-0.15, 0, 0.65, 0.42, k, w)
    c.poly([(0.45, 0), (0.95, -0.4), (0.95, 0.4)], k, w)
    c.circle(-0.5, -0.08, 0.07, k)


def _key(c, k, w, rng):
    c.circle(-0.6, 0, 0.32, k, w)
    c.line(-0.28, 0, 0.95, 0, k, w)
    c.line(0.6, 0, 0.6, 0.35, k, w)
    c.line(0.85, 0, 0.85, 0.3, k, w)


def _sun(c, k, w, rng):
    c.circle(0, 0, 0.45, k, w)
    for a in range(8):
        t = a * math.pi / 4
        c.line(0.62 * math.cos(t), 0.62 * math.sin(t), 0.95 * math.cos(t), 0.95 * math.sin(t), k,
               w)  # fmt: skip


def _wave(c, k, w, rng):
    x = np.linspace(-0.95, 0.95, 80)
    for dy in (-0.3, 0.3):
        c.poly(np.stack([x, dy + 0.25 * np.sin(x * 2.5 * math.pi)], 1), k, w, closed=False)


def _mug(c, k, w, rng):
    c.poly([(-0.7, -0.7), (-0.7, 0.9), (0.4, 0.9), (0.4, -0.7)], k, w, closed=False)
    c.ellipse(0.4, 0.1, 0.38, 0.35, k, w, -90, 90)
    for x in (-0.35, -0.05):  # steam
        ys = np.linspace(-1, -0.8, 2)
        c.line(x, ys[0], x + 0.1, ys[1], k, w * 0.7)


def _bicycle(c, k, w, rng):
    c.circle(-0.55, 0.35, 0.4, k, w)
    c.circle(0.55, 0.35, 0.4, k, w)
    c.poly([(-0.55, 0.35), (-0.1, 0.35), (0.3, -0.25), (-0.25, -0.25)], k, w)
    c.line(0.3, -0.25, 0.55, 0.35, k, w)
    c.line(0.3, -0.25, 0.25, -0.5, k, w)
    c.line(0.1, -0.5, 0.4, -0.5, k, w)


# ---- multi-part objects (filled parts in a fixed arrangement, fixed part colours + jitter) ------
def _parts(draw: Callable[[_Canvas, np.random.Generator], None]) -> Renderer:
    def render(rng: np.random.Generator, size: int, bg_luma: float):
        c = _Canvas(size)
        draw(c, rng)
        return c.out()

    return render


def _traffic_light(c, rng):
    j = lambda col: _jitter(rng, col)  # noqa: E731
    c.poly([(-0.42, -1), (0.42, -1), (0.42, 1), (-0.42, 1)], j((40, 40, 40)))
    for y, col in ((-0.62, (40, 40, 230)), (0, (30, 210, 240)), (0.62, (60, 200, 40))):
        c.circle(0, y, 0.28, j(col))


def _snowman(c, rng):
    white = _jitter(rng, (245, 245, 245), 0.05)
    c.circle(0, 0.55, 0.45, white)
    c.circle(0, -0.1, 0.33, white)
    c.circle(0, -0.62, 0.25, white)
    for x in (-0.09, 0.09):
        c.circle(x, -0.68, 0.045, (20, 20, 20))
    c.poly([(0, -0.6), (0.22, -0.56), (0, -0.53)], (0, 120, 250))


def _dumbbell(c, rng):
    dark = _jitter(rng, (50, 50, 60))
    c.poly([(-0.7, -0.06), (0.7, -0.06), (0.7, 0.06), (-0.7, 0.06)], _jitter(rng, (180, 180, 180)))
    for x in (-0.95, 0.65):
        c.poly([(x, -0.5), (x + 0.3, -0.5), (x + 0.3, 0.5), (x, 0.5)], dark)


def _dice(c, rng):
    white = _jitter(rng, (240, 240, 240), 0.05)
    c.poly([(-0.9, -0.9), (0.9, -0.9), (0.9, 0.9), (-0.9, 0.9)], white)
    pip = _jitter(rng, (20, 20, 20))
    for x, y in ((-0.5, -0.5), (0.5, -0.5), (0, 0), (-0.5, 0.5), (0.5, 0.5)):
        c.circle(x, y, 0.17, pip)


def _flower(c, rng):
    petal = _hsv(rng.uniform(260, 360 + 20) % 360, rng.uniform(0.5, 0.9), rng.uniform(0.75, 1.0))
    for a in range(6):
        t = a * math.pi / 3
        c.circle(0.55 * math.cos(t), 0.55 * math.sin(t), 0.38, petal)
    c.circle(0, 0, 0.33, _jitter(rng, (20, 200, 250)))


def _bullseye(c, rng):
    red, white = _jitter(rng, (40, 40, 220)), _jitter(rng, (240, 240, 240), 0.05)
    for r, col in ((0.95, red), (0.72, white), (0.5, red), (0.28, white), (0.1, red)):
        c.circle(0, 0, r, col)


def _domino(c, rng):
    c.poly([(-0.48, -0.95), (0.48, -0.95), (0.48, 0.95), (-0.48, 0.95)], _jitter(rng, (25, 25, 25)))
    white = _jitter(rng, (240, 240, 240), 0.05)
    c.line(-0.35, 0, 0.35, 0, white, 0.05)
    for x, y in ((-0.22, -0.7), (0.22, -0.25), (-0.22, 0.25), (0, 0.48), (0.22, 0.7)):
        c.circle(x, y, 0.1, white)


def _car(c, rng):
    body = _hsv(rng.uniform(0, 360), rng.uniform(0.6, 1.0), rng.uniform(0.5, 0.95))
    c.poly([(-0.95, -0.05), (0.95, -0.05), (0.95, 0.35), (-0.95, 0.35)], body)
    c.poly([(-0.5, -0.05), (-0.3, -0.45), (0.35, -0.45), (0.55, -0.05)], body)
    c.poly([(-0.38, -0.08), (-0.25, -0.37), (0.0, -0.37), (0.0, -0.08)], (230, 200, 160))
    for x in (-0.55, 0.55):
        c.circle(x, 0.38, 0.22, (25, 25, 25))
        c.circle(x, 0.38, 0.09, (190, 190, 190))


def _smiley(c, rng):
    c.circle(0, 0, 0.95, _jitter(rng, (30, 210, 250)))
    ink = (25, 25, 25)
    c.ellipse(-0.33, -0.3, 0.1, 0.18, ink)
    c.ellipse(0.33, -0.3, 0.1, 0.18, ink)
    c.ellipse(0, 0.1, 0.55, 0.45, ink, 0.1, 20, 160)


def _mushroom(c, rng):
    c.poly([(-0.22, -0.1), (0.22, -0.1), (0.3, 0.95), (-0.3, 0.95)], _jitter(rng, (170, 215, 235)))
    c.ellipse(0, -0.05, 0.95, 0.85, _jitter(rng, (30, 30, 210)), None, 180, 360)
    white = (245, 245, 245)
    for x, y, r in ((-0.5, -0.3, 0.13), (0.1, -0.6, 0.15), (0.55, -0.25, 0.11)):
        c.circle(x, y, r, white)


# ---- photo-textured objects (a grey-scale photo texture in a silhouette, tinted) ----------------
def _textured(tex: str, shape: str, tint_sat: float = 0.35) -> Renderer:
    def render(rng: np.random.Generator, size: int, bg_luma: float):
        src = _texture(tex)
        zoom = rng.uniform(0.6, 1.4) * (size / 120.0)
        crop = int(min(min(src.shape) - 1, max(16, size / zoom)))
        y0 = rng.integers(0, src.shape[0] - crop + 1)
        x0 = rng.integers(0, src.shape[1] - crop + 1)
        patch = cv2.resize(src[y0 : y0 + crop, x0 : x0 + crop], (size, size))
        patch = cv2.equalizeHist(patch).astype(np.float32) / 255.0
        tint = np.array(_hsv(rng.uniform(0, 360), tint_sat * rng.random(), 1.0), np.float32)
        rgb = np.clip(patch[..., None] * tint[None, None] * rng.uniform(0.8, 1.1), 0, 255)
        c = _Canvas(size)
        edge = (25, 25, 25)
        if shape == "tile":
            c.poly([(-0.95, -0.7), (0.95, -0.7), (0.95, 0.7), (-0.95, 0.7)], edge)
        elif shape == "pebble":
            c.ellipse(0, 0, 0.95, 0.62, edge)
        elif shape == "disc":
            c.circle(0, 0, 0.95, edge)
        elif shape == "mound":
            c.ellipse(0, 0.4, 0.95, 0.9, edge, None, 180, 360)
        elif shape == "sheet":  # a page with a folded corner
            c.poly([(-0.7, -0.95), (0.35, -0.95), (0.7, -0.6), (0.7, 0.95), (-0.7, 0.95)], edge)
        out, alpha = c.out()
        inner = cv2.erode(c.mask, np.ones((3, 3), np.uint8), iterations=max(1, size // 60))
        keep = (inner > 127)[..., None]
        out = np.where(keep, rgb.astype(np.uint8), out)
        if shape == "sheet":
            cv2.polylines(out, [c.pts([(0.35, -0.95), (0.35, -0.6), (0.7, -0.6)])], False, edge,
                          c.px(0.05), _AA, _SHIFT)  # fmt: skip
        return out, alpha

    return render


# ---------------------------------------------------------------------------------------------
# Categories: 40 base then 10 novel. Each novel group (glyph, icon, parts, texture) has a
# structurally similar base group, so the novel classes are few-shot in appearance only.
# ---------------------------------------------------------------------------------------------
_GLYPHS_BASE = "ABEGHKMRSTY247&?"
_GLYPHS_NOVEL = "PQ%$"
_GLYPH_NAMES = {"&": "ampersand", "?": "question", "%": "percent", "$": "dollar"}


def _glyph_name(ch: str) -> str:
    if ch in _GLYPH_NAMES:
        return f"glyph_{_GLYPH_NAMES[ch]}"
    return f"glyph_{'digit' if ch.isdigit() else 'letter'}_{ch.lower() if ch.isalpha() else ch}"


_RENDERERS: dict[str, Renderer] = {}
for _ch in _GLYPHS_BASE:
    _RENDERERS[_glyph_name(_ch)] = _glyph(_ch)
_RENDERERS.update(
    {
        "icon_house": _icon(_house),
        "icon_ladder": _icon(_ladder),
        "icon_spiral": _icon(_spiral),
        "icon_arrow": _icon(_arrow),
        "icon_clock": _icon(_clock),
        "icon_envelope": _icon(_envelope),
        "icon_lightning": _icon(_bolt),
        "icon_umbrella": _icon(_umbrella),
        "icon_pine_tree": _icon(_pine),
        "icon_fish": _icon(_fish),
        "icon_sun": _icon(_sun),
        "icon_wave": _icon(_wave),
        "traffic_light": _parts(_traffic_light),
        "snowman": _parts(_snowman),
        "dumbbell": _parts(_dumbbell),
        "dice_five": _parts(_dice),
        "flower": _parts(_flower),
        "bullseye": _parts(_bullseye),
        "domino": _parts(_domino),
        "car": _parts(_car),
        "brick_tile": _textured("brick", "tile"),
        "gravel_pebble": _textured("gravel", "pebble"),
        "moon_disc": _textured("moon", "disc"),
        "grass_mound": _textured("grass", "mound", 0.6),
    }
)
for _ch in _GLYPHS_NOVEL:
    _RENDERERS[_glyph_name(_ch)] = _glyph(_ch)
_RENDERERS.update(
    {
        "icon_key": _icon(_key),
        "icon_mug": _icon(_mug),
        "icon_bicycle": _icon(_bicycle),
        "smiley": _parts(_smiley),
        "mushroom": _parts(_mushroom),
        "text_sheet": _textured("text", "sheet", 0.2),
    }
)

OBJECT_CATEGORIES: tuple[str, ...] = tuple(_RENDERERS)
"""All 50 category names; the first 40 are base classes, the last 10 novel."""
_NUM_BASE_TOTAL = 40


def objects_category_id(name: str) -> int:
    """Stable, non-contiguous COCO category id of a category name."""
    return 101 + 3 * OBJECT_CATEGORIES.index(name)


def objects_split(num_base: int = 40, num_novel: int = 10) -> tuple[list[str], list[str]]:
    """(base names, novel names): the first ``num_base`` base and first ``num_novel`` novel."""
    if not 1 <= num_base <= _NUM_BASE_TOTAL:
        raise ValueError(f"num_base must be in 1..{_NUM_BASE_TOTAL}, got {num_base}")
    n_novel_total = len(OBJECT_CATEGORIES) - _NUM_BASE_TOTAL
    if not 0 <= num_novel <= n_novel_total:
        raise ValueError(f"num_novel must be in 0..{n_novel_total}, got {num_novel}")
    base = list(OBJECT_CATEGORIES[:num_base])
    novel = list(OBJECT_CATEGORIES[_NUM_BASE_TOTAL : _NUM_BASE_TOTAL + num_novel])
    return base, novel


# ---------------------------------------------------------------------------------------------
# Scene composition
# ---------------------------------------------------------------------------------------------
def _background(rng: np.random.Generator, photos: list[np.ndarray], h: int, w: int) -> np.ndarray:
    photo = photos[rng.integers(len(photos))]
    ph, pw = photo.shape[:2]
    # crop with the target aspect, 35-100 % of the largest such crop
    scale = rng.uniform(0.35, 1.0)
    ch = min(ph, pw * h / w) * scale
    cw = ch * w / h
    y0 = rng.uniform(0, ph - ch)
    x0 = rng.uniform(0, pw - cw)
    crop = photo[int(y0) : int(y0 + ch), int(x0) : int(x0 + cw)]
    img = cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA if scale * ph > h else 1)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    gain, bias = rng.uniform(0.75, 1.15), rng.uniform(-20, 20)
    return np.clip(img.astype(np.float32) * gain + bias, 0, 255)


def _warp(rgb: np.ndarray, alpha: np.ndarray, long_side: float, rng: np.random.Generator):
    """Rotate/stretch/scale a canvas drawing so its rotated extent has the given long side.

    Returns (rgb float32, alpha float32) cropped to the drawing, drawn at 2x and area-downsampled.
    """
    m8 = (alpha > 0.02).astype(np.uint8)
    pts = cv2.findNonZero(m8)
    if pts is None:
        return None
    hull = cv2.convexHull(pts).reshape(-1, 2).astype(np.float64) + 0.5
    ang = math.radians(rng.uniform(-_MAX_ROTATION, _MAX_ROTATION))
    stretch = math.exp(rng.uniform(-0.15, 0.15))  # aspect jitter
    a = np.array([[stretch, 0.0], [0.0, 1.0 / stretch]])
    r = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    lin = r @ a
    q = hull @ lin.T
    ext = q.max(0) - q.min(0)
    s = 2.0 * long_side / max(ext.max(), 1e-6)  # 2x supersampling
    lin = lin * s
    q = hull @ lin.T
    lo = q.min(0)
    out_w, out_h = (int(math.ceil(v)) + 2 for v in q.max(0) - lo)
    out_w += out_w % 2
    out_h += out_h % 2
    m = np.concatenate([lin, (-lo + 1.0)[:, None]], 1)
    interp = cv2.INTER_LINEAR if s >= 0.5 else cv2.INTER_AREA
    rgb_w = cv2.warpAffine(rgb, m, (out_w, out_h), flags=interp)
    al_w = cv2.warpAffine(alpha, m, (out_w, out_h), flags=interp)
    size = (out_w // 2, out_h // 2)
    return (
        cv2.resize(rgb_w, size, interpolation=cv2.INTER_AREA).astype(np.float32),
        cv2.resize(al_w, size, interpolation=cv2.INTER_AREA),
    )


def _distractor(rng: np.random.Generator, photos: list[np.ndarray], side: int):
    """A non-annotated blob: an irregular polygon filled with a photo crop or a flat colour."""
    c = _Canvas(side)
    n = int(rng.integers(5, 10))
    t = np.sort(rng.uniform(0, 2 * math.pi, n))
    rad = rng.uniform(0.45, 1.0, n)
    c.poly(np.stack([rad * np.cos(t), rad * np.sin(t)], 1), (255, 255, 255))
    _, alpha = c.out()
    if rng.random() < 0.6:
        photo = photos[rng.integers(len(photos))]
        ph, pw = photo.shape[:2]
        k = int(min(ph, pw) * rng.uniform(0.15, 0.5))
        y0, x0 = rng.integers(0, ph - k + 1), rng.integers(0, pw - k + 1)
        rgb = cv2.resize(photo[y0 : y0 + k, x0 : x0 + k], (side, side)).astype(np.float32)
    else:
        rgb = np.empty((side, side, 3), np.float32)
        rgb[:] = _hsv(rng.uniform(0, 360), rng.uniform(0.2, 0.9), rng.uniform(0.2, 0.9))
    ang = rng.uniform(0, 360)
    m = cv2.getRotationMatrix2D((side / 2, side / 2), ang, 1.0)
    return cv2.warpAffine(rgb, m, (side, side)), cv2.warpAffine(alpha, m, (side, side))


def _paste(img, owner, rgb, alpha, x0, y0, label) -> None:
    h, w = img.shape[:2]
    ph, pw = alpha.shape
    xa, ya, xb, yb = max(0, x0), max(0, y0), min(w, x0 + pw), min(h, y0 + ph)
    if xa >= xb or ya >= yb:
        return
    a = alpha[ya - y0 : yb - y0, xa - x0 : xb - x0]
    sub = img[ya:yb, xa:xb]
    sub += (rgb[ya - y0 : yb - y0, xa - x0 : xb - x0] - sub) * a[..., None]
    owner[ya:yb, xa:xb][a > _ALPHA_ON] = label


def _footprint(owner_shape, alpha, x0, y0) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    h, w = owner_shape
    ph, pw = alpha.shape
    xa, ya, xb, yb = max(0, x0), max(0, y0), min(w, x0 + pw), min(h, y0 + ph)
    if xa >= xb or ya >= yb:
        return None
    return alpha[ya - y0 : yb - y0, xa - x0 : xb - x0] > _ALPHA_ON, (xa, ya, xb, yb)


def _render_image(
    rng: np.random.Generator,
    photos: list[np.ndarray],
    object_classes: list[str],
) -> tuple[np.ndarray, list[tuple[str, list[float]]], int, int]:
    h = int(rng.integers(_IMAGE_HEIGHTS[0], _IMAGE_HEIGHTS[1] + 1))
    w = int(rng.integers(_IMAGE_WIDTHS[0], _IMAGE_WIDTHS[1] + 1))
    img = _background(rng, photos, h, w)
    owner = np.full((h, w), -1, np.int32)
    luma = cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_BGR2GRAY)
    names: list[str] = []
    full_area: list[int] = []
    unplaced = 0
    for name in object_classes:
        long_side = math.exp(rng.uniform(math.log(_MIN_LONG_SIDE), math.log(_MAX_LONG_SIDE)))
        long_side = min(long_side, 0.9 * min(h, w))
        placed = False
        for attempt in range(_PLACEMENT_TRIES):
            if attempt and attempt % 8 == 0:
                long_side = max(_MIN_LONG_SIDE, long_side * 0.75)
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            r = int(long_side // 2) + 1
            ya, xa = max(0, int(cy) - r), max(0, int(cx) - r)
            bg = float(luma[ya : int(cy) + r, xa : int(cx) + r].mean())
            canvas = int(min(400, max(64, 2.2 * long_side)))
            rgb, alpha = _RENDERERS[name](rng, canvas, bg)
            warped = _warp(rgb, alpha, long_side, rng)
            if warped is None:
                continue
            rgb_w, al_w = warped
            x0, y0 = int(round(cx - al_w.shape[1] / 2)), int(round(cy - al_w.shape[0] / 2))
            area = int((al_w > _ALPHA_ON).sum())
            fp = _footprint(owner.shape, al_w, x0, y0)
            if fp is None or area == 0 or fp[0].sum() < 0.7 * area:  # mostly inside the image
                continue
            if _too_much(owner, full_area, fp, 0.7):
                continue
            _paste(img, owner, rgb_w, al_w, x0, y0, len(names))
            names.append(name)
            full_area.append(area)
            placed = True
            break
        unplaced += not placed
    # distractors: non-annotated blobs, some placed over objects (partial occlusion)
    for _ in range(int(rng.integers(0, 4))):
        side = int(math.exp(rng.uniform(math.log(20), math.log(0.5 * min(h, w)))))
        d_rgb, d_al = _distractor(rng, photos, side)
        for _attempt in range(10):
            if names and rng.random() < 0.7:  # aim at an object's boundary
                ys, xs = np.nonzero(owner == rng.integers(len(names)))
                if len(xs) == 0:
                    continue
                k = rng.integers(len(xs))
                cx, cy = xs[k] + rng.normal(0, side / 3), ys[k] + rng.normal(0, side / 3)
            else:
                cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            x0, y0 = int(cx - side / 2), int(cy - side / 2)
            fp = _footprint(owner.shape, d_al, x0, y0)
            if fp is None or _too_much(owner, full_area, fp, _MIN_VISIBLE):
                continue
            _paste(img, owner, d_rgb, d_al, x0, y0, -2)
            break
    annotations = []
    skipped = 0
    for i, name in enumerate(names):
        ys, xs = np.nonzero(owner == i)
        if len(xs) == 0:
            skipped += 1
            continue
        x_a, y_a, x_b, y_b = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        if min(x_b - x_a, y_b - y_a) < _MIN_BOX_SIDE:
            skipped += 1
            continue
        annotations.append((name, [float(x_a), float(y_a), float(x_b - x_a), float(y_b - y_a)]))
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), annotations, skipped, unplaced


def _too_much(owner: np.ndarray, full_area: list[int], fp, keep: float) -> bool:
    """Would covering footprint ``fp`` leave some object with < ``keep`` of its full pixels?"""
    if not full_area:
        return False
    mask, (xa, ya, xb, yb) = fp
    sub = owner[ya:yb, xa:xb]
    covered = sub[mask]
    covered = covered[covered >= 0]
    if covered.size == 0:
        return False
    hit = np.bincount(covered, minlength=len(full_area))
    vis = np.bincount(owner[owner >= 0].ravel(), minlength=len(full_area))
    return bool(np.any((hit > 0) & (vis - hit < keep * np.asarray(full_area))))


# ---------------------------------------------------------------------------------------------
# Dataset writer
# ---------------------------------------------------------------------------------------------
def _write_json(path: Path, obj) -> None:
    with atomic_write(path, encoding="utf-8") as f:
        json.dump(obj, f, sort_keys=True, separators=(",", ":"))


def _generate_split(
    split: str,
    split_index: int,
    num_images: int,
    seed: int,
    classes: list[str],
    photos: list[np.ndarray],
    image_dir: Path,
    categories: list[dict],
) -> tuple[dict, dict]:
    image_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    skipped = unplaced = 0
    # The split's plan: objects per image, and their classes as a sequence of shuffled rounds
    # over all classes (balanced counts: every class occurs once per len(classes) objects).
    plan = np.random.default_rng([seed, split_index, GENERATOR_VERSION, 1])
    counts = plan.integers(1, _MAX_OBJECTS + 1, num_images)
    rounds = -(-int(counts.sum()) // len(classes))
    sequence = np.concatenate([plan.permutation(len(classes)) for _ in range(rounds)] or [[]])
    starts = np.concatenate([[0], np.cumsum(counts)])
    for idx in range(num_images):
        rng = np.random.default_rng([seed, split_index, idx, GENERATOR_VERSION])
        object_classes = [classes[int(k)] for k in sequence[starts[idx] : starts[idx + 1]]]
        img, objects, n_skip, n_unplaced = _render_image(rng, photos, object_classes)
        skipped += n_skip
        unplaced += n_unplaced
        file_name = f"{split}/{idx:06d}.jpg"
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {file_name}")
        (image_dir / f"{idx:06d}.jpg").write_bytes(buf.tobytes())
        image_id = idx + 1
        images.append(
            {"id": image_id, "file_name": file_name, "height": img.shape[0], "width": img.shape[1]}
        )
        for name, (x, y, bw, bh) in objects:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": objects_category_id(name),
                    "bbox": [x, y, bw, bh],
                    "area": bw * bh,
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {"description": f"fsod_datagen.objects {split}", "version": GENERATOR_VERSION},
        "images": images,
        "annotations": anns,
        "categories": categories,
    }
    stats = {
        "images": len(images),
        "boxes": len(anns),
        "skipped_objects": skipped,
        "unplaced_objects": unplaced,
    }
    return coco, stats


def generate_objects_dataset(
    root: str | os.PathLike,
    *,
    num_base: int = 40,
    num_novel: int = 10,
    num_train: int = 1200,
    num_val: int = 200,
    seed: int = 0,
    overwrite: bool = False,
) -> dict:
    """Write the glyph/icon/part/texture family as COCO JSON + JPEGs under ``root``.

    Layout: ``root/{train,val}.json``, ``root/images/{train,val}/NNNNNN.jpg`` and
    ``root/meta.json`` (written last; its presence marks a complete dataset). A complete dataset
    with the same parameters is reused; one with other parameters raises ``FileExistsError``
    unless ``overwrite=True``. Same parameters give identical JSON files.

    Returns ``{"train_json", "val_json", "image_root", "base_classes", "novel_classes", "stats"}``.
    """
    base, novel = objects_split(num_base, num_novel)
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train and num_val must be >= 0, got {num_train}, {num_val}")
    root = Path(root)
    params = {
        "generator": "fsod_datagen.objects",
        "version": GENERATOR_VERSION,
        "num_base": num_base,
        "num_novel": num_novel,
        "num_train": num_train,
        "num_val": num_val,
        "seed": int(seed),
    }
    result = {
        "train_json": str(root / "train.json"),
        "val_json": str(root / "val.json"),
        "image_root": str(root / "images"),
        "base_classes": base,
        "novel_classes": novel,
    }
    meta_path = root / "meta.json"
    if meta_path.is_file():
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("params") == params:
            logger.info("Reusing the objects dataset at %s", root)
            return {**result, "stats": meta["stats"]}
        if not overwrite:
            raise FileExistsError(
                f"{root} holds an objects dataset with other parameters ({meta.get('params')}); "
                "pass overwrite=True or choose another root."
            )
    # Incomplete or replaced: remove our own outputs (meta first, so a crash never looks done).
    meta_path.unlink(missing_ok=True)
    for name in ("train.json", "val.json"):
        (root / name).unlink(missing_ok=True)
    shutil.rmtree(root / "images", ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    photos = _backgrounds()
    classes = base + novel
    categories = [
        {"id": objects_category_id(n), "name": n, "supercategory": n.split("_")[0]} for n in classes
    ]
    stats: dict = {"splits": {}}
    for split_index, (split, n) in enumerate((("train", num_train), ("val", num_val))):
        coco, split_stats = _generate_split(
            split, split_index, n, seed, classes, photos, root / "images" / split, categories
        )
        _write_json(root / f"{split}.json", coco)
        stats["splits"][split] = split_stats
    splits = stats["splits"].values()
    stats.update(
        images=sum(s["images"] for s in splits),
        boxes=sum(s["boxes"] for s in splits),
        skipped_objects=sum(s["skipped_objects"] for s in splits),
        unplaced_objects=sum(s["unplaced_objects"] for s in splits),
        categories=len(categories),
        seconds=round(time.perf_counter() - start, 2),
    )
    _write_json(meta_path, {"params": params, "stats": stats})
    logger.info(
        "Objects dataset: %d images, %d boxes in %.1f s -> %s",
        stats["images"],
        stats["boxes"],
        stats["seconds"],
        root,
    )
    return {**result, "stats": stats}
