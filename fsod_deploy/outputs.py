"""What a prediction run writes: pictures, a COCO dataset of the detections, a summary.

``tools/predict.py`` (both backends) and the app write their results with these functions, so
the files do not depend on what ran the model. Per run, in the output folder::

    vis/<image>.png                detections above the threshold drawn (fsod_deploy.draw)
    detections.json                COCO dataset: images, categories, the detections as
                                   annotations with a "score" (pycocotools' COCO loads it)
    coco_instances_results.json    the same detections as a COCO results list (COCO.loadRes)

Category ids are class ids + 1 (COCO reserves 0).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from .detector import Detections
from .draw import draw_detections, nothing_drawn_message

__all__ = ["PredictionWriter", "coco_results"]


def coco_results(image_id: int, detections: Detections) -> list[dict[str, Any]]:
    """COCO results of one image: ``image_id``, ``category_id`` (class id + 1), ``bbox``
    [x, y, w, h] and ``score`` per detection (detectron2's ``instances_to_coco_json`` with
    class ids shifted to category ids)."""
    return [
        {
            "image_id": image_id,
            "category_id": int(c) + 1,
            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            "score": float(s),
        }
        for (x0, y0, x1, y1), s, c in zip(
            detections.boxes.tolist(), detections.scores.tolist(), detections.class_ids.tolist()
        )
    ]


def _vis_name(path: str, used: set) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}_{n}"
    used.add(name)
    return name + ".png"


class PredictionWriter:
    """Collects the detections of a run and writes the files of the module docstring.

    Args:
        output: the output folder (created if needed).
        class_names: the name of each class id (a list indexed by id).
        threshold: the score a detection needs to be drawn (the JSON keeps every detection).
    """

    def __init__(self, output: str, class_names: Sequence[str], threshold: float):
        self.output, self.class_names, self.threshold = output, list(class_names), threshold
        self.vis_dir = os.path.join(output, "vis")
        os.makedirs(self.vis_dir, exist_ok=True)
        self.images: list[dict] = []
        self.results: list[dict] = []
        self.unreadable: list[str] = []
        self.skipped: list[str] = []
        self._used: set = set()
        self._best: tuple[float, str] | None = None

    def draw(self, image_bgr: np.ndarray, detections: Detections) -> np.ndarray:
        """The picture of one image: the detections above the threshold (BGR)."""
        shown = detections.scores >= self.threshold
        return draw_detections(
            image_bgr,
            detections.boxes[shown],
            detections.scores[shown],
            detections.class_ids[shown],
            self.class_names,
            channel_order="BGR",
        )

    def add(self, path: str, image_bgr: np.ndarray, detections: Detections) -> dict:
        """Record one image's detections and write its picture; returns its image entry."""
        entry = self.record(path, image_bgr.shape[:2], detections)
        vis = self.draw(image_bgr, detections)
        cv2.imwrite(os.path.join(self.vis_dir, _vis_name(path, self._used)), vis)
        return entry

    def record(self, path: str, image_hw: Sequence[int], detections: Detections) -> dict:
        """Record one image's detections without writing its picture (the app draws its own);
        returns its image entry."""
        h, w = (int(v) for v in image_hw[:2])
        entry = {"id": len(self.images) + 1, "file_name": path, "height": h, "width": w}
        self.images.append(entry)
        self.results += coco_results(entry["id"], detections)
        if len(detections.scores):
            best = float(detections.scores.max())
            if self._best is None or best > self._best[0]:
                self._best = (best, path)
        return entry

    def num_drawn(self) -> int:
        return sum(r["score"] >= self.threshold for r in self.results)

    def nothing_drawn(self, option: str = "--confidence-threshold") -> str:
        """The message for a run where no detection reached the threshold ("" otherwise)."""
        if self.num_drawn():
            return ""
        best = self._best or (None, "")
        return nothing_drawn_message(best[0], best[1], self.threshold, option)

    def finish(self, class_ids: Sequence[int], info: dict | None = None) -> dict:
        """Write ``detections.json`` and ``coco_instances_results.json``; returns the COCO
        dataset (``info`` lists the unreadable and skipped inputs)."""
        categories = [
            {"id": int(c) + 1, "name": self.class_names[int(c)]} for c in sorted(class_ids)
        ]
        annotations = [
            dict(r, id=i, area=r["bbox"][2] * r["bbox"][3], iscrowd=0)
            for i, r in enumerate(self.results, start=1)
        ]
        dataset = {
            "info": {
                "description": "fsod-d2 predictions",
                "unreadable_images": list(self.unreadable),
                "skipped_files": list(self.skipped),
                **(info or {}),
            },
            "images": self.images,
            "categories": categories,
            "annotations": annotations,
        }
        with open(os.path.join(self.output, "detections.json"), "w") as f:
            json.dump(dataset, f)
        with open(os.path.join(self.output, "coco_instances_results.json"), "w") as f:
            json.dump(self.results, f)
        return dataset
