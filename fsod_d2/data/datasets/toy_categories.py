"""Category names and ids of the generated toy dataset (what registering it needs).

The generator itself (``fsod_datagen.shapes``, ``tools/make_toy_dataset.py``) draws these
categories; it lives outside the runtime package with its drawing dependencies.

Every category is a fixed combination of a shape, a pattern and a colour scheme. The first 25
categories all have different shapes; categories 25-49 reuse those shapes with a different
pattern *and* colour. A category's COCO id is ``2 * TOY_CATEGORIES.index(name) + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TOY_CATEGORIES", "TOY_STYLES", "ToyStyle", "toy_category_id", "toy_split"]

SHAPE_NAMES: tuple[str, ...] = (
    "circle", "ring", "triangle", "square", "pentagon", "hexagon", "star5", "star8", "plus",
    "arrow", "crescent", "heart", "semicircle", "l_shape", "t_shape", "trapezoid", "hourglass",
    "chevron", "bolt", "droplet", "square_frame", "triangle_frame", "u_shape", "flower", "stairs",
)  # fmt: skip
PATTERNS: tuple[str, ...] = ("solid", "striped", "checkered", "dotted", "split", "bordered")
COLOUR_NAMES: tuple[str, ...] = (
    "red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "white", "black",
)  # fmt: skip


@dataclass(frozen=True)
class ToyStyle:
    """What a toy category looks like: ``name`` is ``<colour>_<pattern>_<shape>``."""

    name: str
    shape: str
    pattern: str
    colour: str


def _build_styles(n: int = 50) -> tuple[ToyStyle, ...]:
    """Category i: shape i % 25; the second block of 25 reuses the shapes with a pattern offset by
    3 and a colour offset by 5, so same-shape categories differ in pattern and colour."""
    styles = []
    for i in range(n):
        block, s = divmod(i, len(SHAPE_NAMES))
        shape = SHAPE_NAMES[s]
        pattern = PATTERNS[(s + 3 * block) % len(PATTERNS)]
        colour = COLOUR_NAMES[(3 * s + 5 * block) % len(COLOUR_NAMES)]
        styles.append(ToyStyle(f"{colour}_{pattern}_{shape}", shape, pattern, colour))
    return tuple(styles)


TOY_STYLES: tuple[ToyStyle, ...] = _build_styles()
TOY_CATEGORIES: list[str] = [s.name for s in TOY_STYLES]
"""The 50 toy category names; a category's COCO id is ``2 * TOY_CATEGORIES.index(name) + 1``."""


def toy_split(num_base: int = 20, num_novel: int = 5) -> tuple[list[str], list[str]]:
    """Base and novel class names: the first ``num_base`` toy categories, then the next
    ``num_novel``."""
    if num_base < 1 or num_novel < 0 or num_base + num_novel > len(TOY_CATEGORIES):
        raise ValueError(
            f"need 1 <= num_base and 0 <= num_novel with num_base + num_novel <= "
            f"{len(TOY_CATEGORIES)}; got num_base={num_base}, num_novel={num_novel}"
        )
    return TOY_CATEGORIES[:num_base], TOY_CATEGORIES[num_base : num_base + num_novel]


def toy_category_id(name: str) -> int:
    """COCO category id of a toy category (odd numbers: 1, 3, 5, ...)."""
    return 2 * TOY_CATEGORIES.index(name) + 1
