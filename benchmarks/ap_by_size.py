"""Where is AP lost? AP50 and recall at IoU 0.5 per object size, from saved COCO detections.

Reads a ground-truth COCO JSON and a detections file (``coco_instances_results.json``, written by
every evaluation: ``--eval-only``, ``benchmarks/fewshot_quality.py`` cells) and reports, per class
group (all evaluated classes, and base / novel when a split file names them) and per COCO area
range (all, small < 32², medium < 96², large), the share of ground-truth boxes, AP50 and recall at
IoU 0.5 (100 detections per image, as COCOeval). Only classes with detections are evaluated
(the evaluated prototype classes). With ``--thresholds``, also what a score threshold keeps
(``tools/predict.py --confidence-threshold``): boxes per image, precision and recall, a box
counting when it matches (IoU >= 0.5, greedy by score) a so far unmatched object of its class.

    python -m benchmarks.ap_by_size --gt $DETECTRON2_DATASETS/fewshot_objects/val.json \\
        --results output/eval/coco_instances_results.json \\
        --split $DETECTRON2_DATASETS/fewshot_objects/split.json --name objects \\
        --thresholds 0.2 0.3 0.5
"""

import argparse
import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from detectron2.utils.logger import setup_logger
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from benchmarks.common import machine_info, save_json
from fsod_d2.utils import datasets_root

logger = logging.getLogger("fsod_d2.benchmarks.ap_by_size")
AREAS = ("all", "small", "medium", "large")  # COCOeval's areaRng order


def _mean(values: np.ndarray) -> float:
    values = values[values > -1]
    return float(values.mean() * 100) if values.size else float("nan")


def portable(path: str) -> str:
    """``path`` as the JSON records it, without machine-specific folders: relative to
    ``$DETECTRON2_DATASETS`` or the working directory when under one, else its folder and name."""
    path = Path(path).resolve()
    for root, prefix in ((Path(datasets_root()), "$DETECTRON2_DATASETS/"), (Path.cwd(), "")):
        if path.is_relative_to(root.resolve()):
            return prefix + str(path.relative_to(root.resolve()))
    return str(Path(path.parent.name) / path.name)


def group_ids(gt: dict, split: Optional[dict], evaluated: List[int]) -> Dict[str, List[int]]:
    """Category ids per group: "all" (evaluated), "base" and "novel" from the split's names
    (keys ``base``/``novel`` as FSOD.REGISTER's split file, or ``base_classes``/...)."""
    groups = {"all": evaluated}
    if split is None:
        return groups
    by_name = {c["name"]: c["id"] for c in gt["categories"]}
    evaluated_set = set(evaluated)
    for group in ("base", "novel"):
        names = split.get(group, split.get(f"{group}_classes"))
        if names is None:
            raise KeyError(f"the split file has no '{group}' (or '{group}_classes') list of names")
        missing = [n for n in names if n not in by_name]
        if missing:
            raise KeyError(f"split classes not in the ground truth's categories: {missing[:5]}")
        groups[group] = [by_name[n] for n in names if by_name[n] in evaluated_set]
    return groups


def ap_by_size(gt: dict, detections: list, split: Optional[dict] = None) -> dict:
    """{group: {area: {"gt_share", "AP50", "recall50"}}} (percent)."""
    if not detections:
        raise ValueError("no detections: nothing to break down")
    coco = COCO()
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.dataset = gt
        coco.createIndex()
        cocoeval = COCOeval(coco, coco.loadRes(detections), "bbox")
        evaluated = sorted({d["category_id"] for d in detections})
        cocoeval.params.catIds = evaluated
        cocoeval.evaluate()
        cocoeval.accumulate()
    precision = cocoeval.eval["precision"][0]  # IoU 0.5: (recall, class, area, max dets)
    recall = cocoeval.eval["recall"][0]  # (class, area, max dets)
    areas = {name: rng for name, rng in zip(AREAS, cocoeval.params.areaRng)}
    out = {}
    for group, ids in group_ids(gt, split, evaluated).items():
        cols = [evaluated.index(c) for c in ids]
        members = set(ids)
        anns = [a for a in gt["annotations"] if a["category_id"] in members]
        area = np.array([a["area"] for a in anns], dtype=float)
        out[group] = {
            name: {
                "gt_share": float(((area >= lo) & (area < hi)).mean() * 100) if len(area) else 0.0,
                "AP50": _mean(precision[:, cols, i, -1]),
                "recall50": _mean(recall[cols, i, -1]),
            }
            for i, (name, (lo, hi)) in enumerate(areas.items())
        }
    return out


def at_thresholds(gt: dict, detections: list, thresholds: List[float]) -> Dict[str, dict]:
    """{threshold: {"boxes_per_image", "precision", "recall"}} over the evaluated classes:
    detections scoring >= threshold, each matched greedily by score (IoU >= 0.5) to an unmatched
    object of its class in its image."""
    evaluated = {d["category_id"] for d in detections}
    objects: Dict[tuple, list] = {}
    for a in gt["annotations"]:
        if a["category_id"] in evaluated and not a.get("iscrowd", 0):
            objects.setdefault((a["image_id"], a["category_id"]), []).append(a["bbox"])
    by_key: Dict[tuple, list] = {}
    for d in detections:
        by_key.setdefault((d["image_id"], d["category_id"]), []).append(d)
    scores, hit = [], []  # per detection: its score, and whether it matched at its own threshold
    for key, dets in by_key.items():
        dets.sort(key=lambda d: -d["score"])
        boxes = objects.get(key, [])
        # IoU once per (image, class); a threshold keeps a prefix of the score-sorted detections,
        # and greedy matching of a prefix is the prefix of the full greedy matching
        iou = mask_util.iou([d["bbox"] for d in dets], boxes, [0] * len(boxes)) if boxes else None
        free = np.ones(len(boxes), dtype=bool)
        for i, d in enumerate(dets):
            scores.append(d["score"])
            matched = False
            if iou is not None:
                j = int(np.argmax(np.where(free, iou[i], -1)))
                matched = bool(free[j] and iou[i, j] >= 0.5)
                if matched:
                    free[j] = False
            hit.append(matched)
    scores, hit = np.array(scores), np.array(hit, dtype=bool)
    num_objects = sum(len(v) for v in objects.values())
    out = {}
    for t in thresholds:
        keep = scores >= t
        num, hits = int(keep.sum()), int(hit[keep].sum())
        out[f"{t:g}"] = {
            "boxes_per_image": num / max(len(gt["images"]), 1),
            "precision": hits / num if num else float("nan"),
            "recall": hits / num_objects if num_objects else float("nan"),
        }
    return out


def markdown(name: str, report: dict) -> str:
    lines = [
        f"| {name} | " + " | ".join(AREAS) + " |",
        "|---|" + "---|" * len(AREAS),
    ]
    for group, by_area in report.items():
        for metric in ("gt_share", "AP50", "recall50"):
            cells = [f"{by_area[a][metric]:.1f}" for a in AREAS]
            lines.append(f"| {group} {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gt", required=True, help="ground-truth COCO JSON")
    parser.add_argument("--results", required=True, help="coco_instances_results.json")
    parser.add_argument("--split", default=None, help="JSON with base / novel class names")
    parser.add_argument("--name", default="ap_by_size", help="output JSON name (and table title)")
    parser.add_argument("--out-dir", default=None, help="default: benchmarks/results")
    parser.add_argument(
        "--thresholds", nargs="*", type=float, default=[], help="also what these scores keep"
    )
    args = parser.parse_args(argv)
    setup_logger(name="fsod_d2")
    logger.setLevel(logging.INFO)
    gt = json.loads(Path(args.gt).read_text())
    detections = json.loads(Path(args.results).read_text())
    split = json.loads(Path(args.split).read_text()) if args.split else None
    report = ap_by_size(gt, detections, split)
    sources = {"gt": portable(args.gt), "results": portable(args.results)}
    payload = {"machine": machine_info(), **sources, **report}
    if args.thresholds:
        payload["thresholds"] = at_thresholds(gt, detections, args.thresholds)
        for t, m in payload["thresholds"].items():
            logger.info("score >= %s: %s", t, {k: round(v, 3) for k, v in m.items()})
    save_json(f"ap_by_size_{args.name}", payload, args.out_dir)
    logger.info("\n%s", markdown(args.name, report))
    return report


if __name__ == "__main__":
    main()
