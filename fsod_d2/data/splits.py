"""Class splits of the standard few-shot protocols and seeded K-shot subsets of COCO JSON files.

Everything here is pure (no catalog side effects) so that both the dataset registration and
``tools/prepare_fewshot_splits.py`` use the same definitions.

K-shot sampling follows TFA (Wang et al. 2020): for every class, whole images are drawn in a
seeded random order and an image is kept when *all* of its instances of that class still fit in
the remaining budget, so that each class ends up with exactly K annotated instances and no kept
image has an unlabelled instance of the class it was drawn for. Each (seed, K, class) draws from
its own random stream, so adding or removing a class never changes the other classes' shots.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..utils.files import atomic_write

logger = logging.getLogger(__name__)

__all__ = [
    "COCO_NOVEL_IDS",
    "DEFAULT_SEEDS",
    "KShotSampler",
    "TFA_COCO_SHOTS",
    "VOC_CLASSES",
    "VOC_NOVEL_SPLITS",
    "VOC_SHOTS",
    "coco_thing_categories",
    "dump_json",
    "kshot_json_name",
    "resolve_classes",
    "sample_kshot",
    "usable_box",
]

# TFA / FSRW COCO protocol: the 20 PASCAL VOC classes are novel, the other 60 are base.
# COCO category ids of: person bicycle car motorcycle airplane bus train boat bird cat dog horse
# sheep cow bottle chair couch potted-plant dining-table tv.
COCO_NOVEL_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72,
)  # fmt: skip
TFA_COCO_SHOTS: tuple[int, ...] = (1, 2, 3, 5, 10, 30)
VOC_SHOTS: tuple[int, ...] = (1, 2, 3, 5, 10)
# TFA published seeds 0..29 for VOC and 0..9 for COCO; we prepare 0..9 for both by default.
DEFAULT_SEEDS: tuple[int, ...] = tuple(range(10))

# PASCAL VOC class names in detectron2's order (`detectron2.data.datasets.pascal_voc`).
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
# The three 15/5 splits of FSRW/TFA (novel classes; the other 15 are base).
VOC_NOVEL_SPLITS: dict[int, tuple[str, ...]] = {
    1: ("bird", "bus", "cow", "motorbike", "sofa"),
    2: ("aeroplane", "bottle", "cow", "horse", "sofa"),
    3: ("boat", "cat", "motorbike", "sheep", "sofa"),
}


def coco_thing_categories() -> list[dict[str, Any]]:
    """The 80 COCO "thing" categories as ``[{"id": 1, "name": "person"}, ...]`` (no file read)."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return [{"id": c["id"], "name": c["name"]} for c in COCO_CATEGORIES if c["isthing"]]


def resolve_classes(
    spec: str | Iterable[str | int] | None,
    categories: Sequence[dict[str, Any]],
    *,
    source: str = "",
    what: str = "classes",
) -> list[int]:
    """Resolve class names and/or dataset category ids to sorted dataset category ids.

    Args:
        spec: names or ids (a comma-separated string is split). A token that equals a category
            name is a name; otherwise an integer token is a category id.
        categories: the dataset's ``[{"id", "name"}, ...]``.
        source: where the categories come from (file/dataset), for error messages.
        what: what is being resolved ("base classes", ...), for error messages.

    Raises:
        ValueError: naming every unknown class and the available names.
    """
    if spec is None:
        return []
    if isinstance(spec, str):
        spec = [s for s in (t.strip() for t in spec.split(",")) if s]
    by_name = {c["name"]: int(c["id"]) for c in categories}
    ids = {int(c["id"]) for c in categories}
    out, unknown = [], []
    for token in spec:
        if isinstance(token, str) and token in by_name:
            out.append(by_name[token])
        elif isinstance(token, (int, np.integer)) or (isinstance(token, str) and token.isdigit()):
            if int(token) in ids:
                out.append(int(token))
            else:
                unknown.append(token)
        else:
            unknown.append(token)
    if unknown:
        names = ", ".join(sorted(by_name))
        raise ValueError(
            f"Unknown {what} {unknown} in the few-shot split"
            + (f" of {source}" if source else "")
            + f". Available category names: {names}."
        )
    if len(set(out)) != len(out):
        dup = sorted({i for i in out if out.count(i) > 1})
        where = f" in {source}" if source else ""
        raise ValueError(f"{what} listed twice (category ids {dup}){where}")
    return sorted(out)


def usable_box(ann: dict[str, Any], min_box_size: float = 0.0) -> bool:
    """A non-crowd COCO annotation whose XYWH box has both sides > 0 and >= ``min_box_size``."""
    if ann.get("iscrowd", 0):
        return False
    bbox = ann.get("bbox")
    if bbox is None or len(bbox) != 4:
        return False
    w, h = float(bbox[2]), float(bbox[3])
    return w > 0 and h > 0 and min(w, h) >= min_box_size


class KShotSampler:
    """TFA-style K-shot subsets of one COCO-format dict; the per-class index is built once.

    Args:
        coco: the loaded COCO JSON (``images``, ``annotations``, ``categories``).
        min_box_size: annotations with a box side below this are never drawn.
        source: name of the input, for messages and the output's ``info``.
    """

    def __init__(self, coco: dict[str, Any], *, min_box_size: float = 0.0, source: str = ""):
        self.coco, self.min_box_size, self.source = coco, float(min_box_size), source
        self.categories = sorted(coco["categories"], key=lambda c: c["id"])
        self.names = {int(c["id"]): c["name"] for c in self.categories}
        # class id -> image id -> usable annotations of that class in that image
        per_class: dict[int, dict[Any, list[dict]]] = defaultdict(lambda: defaultdict(list))
        for ann in coco["annotations"]:
            if usable_box(ann, min_box_size):
                per_class[int(ann["category_id"])][ann["image_id"]].append(ann)
        self.per_class = per_class
        self.images = {im["id"]: im for im in coco["images"]}

    def sample(self, k: int, seed: int, class_ids: Iterable[int] | None = None) -> dict[str, Any]:
        """K instances of every class (``class_ids``, default all), as a COCO dict.

        The output has the same ``categories`` (so contiguous ids do not change), the drawn
        annotations only (other instances in kept images are unlabelled, as in TFA), and the
        images they belong to; sorted by id.
        """
        if k < 1:
            raise ValueError(f"K must be >= 1, got {k}")
        names = self.names
        wanted = sorted(set(names if class_ids is None else (int(c) for c in class_ids)))
        missing = [c for c in wanted if c not in names]
        if missing:
            raise ValueError(f"class ids {missing} are not categories of {self.source or 'input'}")
        chosen: list[dict] = []
        for cid in wanted:
            chosen += self._sample_class(cid, k, seed)
        image_ids = sorted({a["image_id"] for a in chosen})
        annotations = sorted(chosen, key=lambda a: (a["image_id"], a["id"]))
        info = dict(self.coco.get("info") or {})
        info["fsod_d2_kshot"] = {
            "source": self.source,
            "k": int(k),
            "seed": int(seed),
            "classes": [names[c] for c in wanted],
            "min_box_size": self.min_box_size,
        }
        out = {
            "info": info,
            "images": [self.images[i] for i in image_ids],
            "annotations": annotations,
            "categories": self.categories,
        }
        if "licenses" in self.coco:
            out["licenses"] = self.coco["licenses"]
        return out

    def _sample_class(self, cid: int, k: int, seed: int) -> list[dict]:
        name = self.names[cid]
        by_image = self.per_class.get(cid, {})
        total = sum(len(v) for v in by_image.values())
        if total == 0:
            logger.warning("K-shot split: class '%s' has no usable instance; skipped.", name)
            return []
        if total < k:
            logger.warning(
                "K-shot split: class '%s' has only %d usable instances (< K=%d); taking all.",
                name,
                total,
                k,
            )
        rng = np.random.default_rng([int(seed), int(k), cid])
        image_ids = sorted(by_image)
        remaining, picked, skipped = min(k, total), [], []
        for i in rng.permutation(len(image_ids)):
            anns = sorted(by_image[image_ids[i]], key=lambda a: a["id"])
            if len(anns) <= remaining:
                picked.extend(anns)
                remaining -= len(anns)
                if remaining == 0:
                    break
            else:
                skipped.append(anns)
        if remaining > 0:
            # Every remaining image has more instances than the budget left: take part of the
            # one with the fewest (rare; its other instances of this class stay unlabelled).
            picked.extend(min(skipped, key=len)[:remaining])
            logger.info("K-shot split: class '%s' K=%d used a partially labelled image.", name, k)
        return picked


def sample_kshot(
    coco: dict[str, Any],
    k: int,
    seed: int,
    *,
    class_ids: Iterable[int] | None = None,
    min_box_size: float = 0.0,
    source: str = "",
) -> dict[str, Any]:
    """A TFA-style K-shot subset of a COCO-format dict (see :class:`KShotSampler`)."""
    return KShotSampler(coco, min_box_size=min_box_size, source=source).sample(k, seed, class_ids)


def kshot_json_name(prefix: str, k: int, seed: int) -> str:
    """File name of a prepared K-shot split, e.g. ``coco14_trainval_novel_10shot_seed0.json``."""
    return f"{prefix}_{k}shot_seed{seed}.json"


def dump_json(obj: Any, path: str) -> None:
    """Write ``obj`` as canonical JSON (sorted keys, no spaces), atomically."""
    with atomic_write(path) as f:
        json.dump(obj, f, sort_keys=True, separators=(",", ":"))
        f.write("\n")
