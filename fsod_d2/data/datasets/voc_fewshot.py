"""PASCAL VOC as few-shot datasets: XML loading with a base/novel split, and conversion to COCO.

Query/evaluation sets read the VOC XML directly (image ids are the VOC file ids) and are
evaluated COCO-style like every few-shot set (``evaluator_type`` "coco", pycocotools: AP, AP50
and bAP/nAP). AP50 is COCO's AP at IoU 0.5: the interpolated precision averaged over 101 recall
points, at most 100 detections per image, "difficult" objects as crowd regions (not counted as
misses; detections on them are ignored). It is not the 11-point VOC07 AP that detectron2's
``PascalVOCDetectionEvaluator`` reports on VOC2007 test.
K-shot sets are COCO JSON files prepared by ``tools/prepare_fewshot_splits.py voc`` from the same
XML via :func:`voc_to_coco`.

"difficult" objects become ``iscrowd=1``: they are never support crops nor training boxes, but a
class with a difficult object in the query is still "present" (never used as a negative).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

from detectron2.data import MetadataCatalog
from detectron2.structures import BoxMode

from ..splits import VOC_CLASSES
from .coco_fewshot import (
    clean_records,
    register_fewshot_dataset,
    split_metadata,
    subset_class_ids,
)

__all__ = [
    "load_voc_xml",
    "load_fewshot_voc",
    "register_fewshot_voc",
    "voc_categories",
    "voc_image_int_id",
    "voc_to_coco",
]


def voc_categories(class_names: Sequence[str] = VOC_CLASSES) -> list[dict[str, Any]]:
    """VOC classes as COCO categories, ids 1..20 in detectron2's VOC order."""
    return [{"id": i + 1, "name": n} for i, n in enumerate(class_names)]


def voc_image_int_id(fileid: str) -> int:
    """Integer id of a VOC file id for COCO JSON: ``000005`` -> 5, ``2008_000008`` -> 2008000008."""
    return int(fileid.replace("_", ""))


def load_voc_xml(
    dirname: str, split: str, class_names: Sequence[str] = VOC_CLASSES
) -> list[dict[str, Any]]:
    """Read ``<dirname>/ImageSets/Main/<split>.txt`` and its XML files into detectron2 dicts.

    ``category_id`` is the *dataset* id (index in ``class_names`` + 1); boxes XYXY_ABS, 0-based
    as in detectron2's VOC loader; difficult objects have ``iscrowd=1``.
    """
    list_file = os.path.join(dirname, "ImageSets", "Main", split + ".txt")
    if not os.path.isfile(list_file):
        raise FileNotFoundError(
            f"VOC image list not found: {list_file} (see datasets/README.md for the layout)"
        )
    with open(list_file) as f:
        fileids = [line.strip() for line in f if line.strip()]
    ids = {n: i + 1 for i, n in enumerate(class_names)}
    records = []
    for fileid in fileids:
        tree = ET.parse(os.path.join(dirname, "Annotations", fileid + ".xml"))
        anns = []
        for obj in tree.findall("object"):
            name = obj.find("name").text.strip()
            if name not in ids:
                raise ValueError(f"unknown VOC class '{name}' in {dirname}/Annotations/{fileid}")
            difficult = obj.find("difficult")
            box = obj.find("bndbox")
            xyxy = [float(box.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
            xyxy[0] -= 1.0  # 1-based inclusive pixel indices -> 0-based coordinates
            xyxy[1] -= 1.0
            anns.append(
                {
                    "bbox": xyxy,
                    "bbox_mode": BoxMode.XYXY_ABS,
                    "category_id": ids[name],
                    "iscrowd": int(difficult is not None and int(difficult.text) == 1),
                }
            )
        records.append(
            {
                "file_name": os.path.join(dirname, "JPEGImages", fileid + ".jpg"),
                "image_id": fileid,
                "height": int(tree.find("./size/height").text),
                "width": int(tree.find("./size/width").text),
                "annotations": anns,
            }
        )
    return records


def load_fewshot_voc(dirs_splits: Sequence[tuple[str, str]], dataset_name: str) -> list[dict]:
    """Load several VOC (dirname, split) pairs for a registered few-shot VOC dataset."""
    meta = MetadataCatalog.get(dataset_name)
    id_map = meta.thing_dataset_id_to_contiguous_id
    records = []
    for dirname, split in dirs_splits:
        records += load_voc_xml(dirname, split)
    for r in records:
        for ann in r["annotations"]:
            ann["category_id"] = id_map.get(ann["category_id"], -1)
    source = " + ".join(f"{d}:{s}" for d, s in dirs_splits)
    return clean_records(records, subset_class_ids(meta), dataset_name, source)


def register_fewshot_voc(
    name: str,
    dirs_splits: Sequence[tuple[str, str]],
    novel_classes: Sequence[str],
    *,
    overwrite: bool = False,
    **extra_metadata: Any,
) -> list[str]:
    """Register VOC (dirname, split) pairs with ``novel_classes`` novel and the rest base."""
    novel = list(novel_classes)
    base = [c for c in VOC_CLASSES if c not in novel]
    metadata = split_metadata(voc_categories(), base, novel, source=name)
    metadata.update(extra_metadata)
    dirs_splits = [tuple(x) for x in dirs_splits]
    return register_fewshot_dataset(
        name,
        lambda vname: load_fewshot_voc(dirs_splits, vname),
        metadata,
        overwrite=overwrite,
    )


def voc_to_coco(records: Sequence[dict[str, Any]], root: str) -> dict[str, Any]:
    """COCO instances dict of :func:`load_voc_xml` records; ``file_name`` relative to ``root``."""
    images, annotations = [], []
    for r in records:
        img_id = voc_image_int_id(str(r["image_id"]))
        images.append(
            {
                "id": img_id,
                "file_name": os.path.relpath(r["file_name"], root),
                "height": r["height"],
                "width": r["width"],
            }
        )
        for ann in r["annotations"]:
            x0, y0, x1, y1 = ann["bbox"]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": img_id,
                    "category_id": ann["category_id"],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": ann["iscrowd"],
                }
            )
    return {"images": images, "annotations": annotations, "categories": voc_categories()}
