"""COCO-style few-shot evaluation: AP, AP50, AP75, APs/m/l overall and for base / novel classes.

Built on detectron2's :class:`COCOEvaluator` (which gathers the predictions of all processes on
the main one, so it is correct when distributed). The extra numbers are read from the same
``COCOeval`` accumulation, restricted to a set of categories exactly as ``COCOeval.summarize``
averages (the mean over IoU thresholds, recall points and categories of the valid precisions).

Evaluators are chosen by the test set's ``evaluator_type`` (metadata) among the classes of
:data:`FSOD_EVALUATOR_REGISTRY`; each declares the types it evaluates in ``evaluator_types``.
"""

import logging
from typing import Dict, List, Optional, Sequence

import numpy as np
from detectron2.evaluation import COCOEvaluator
from detectron2.utils.logger import create_small_table
from detectron2.utils.registry import Registry

from ..data.datasets.coco_fewshot import subset_class_ids

logger = logging.getLogger(__name__)

__all__ = [
    "FSOD_EVALUATOR_REGISTRY",
    "FsodCOCOEvaluator",
    "evaluator_class",
    "evaluator_types",
    "summarize_categories",
]

FSOD_EVALUATOR_REGISTRY = Registry("FSOD_EVALUATOR")
FSOD_EVALUATOR_REGISTRY.__doc__ = """
Evaluators of few-shot test sets. A registered class lists the dataset ``evaluator_type`` values
it evaluates in its ``evaluator_types`` attribute and is built by the trainer as
``cls(dataset_name, output_dir=..., class_ids=...)`` (see :class:`FsodCOCOEvaluator`). Test sets
of an ``evaluator_type`` no registered class lists are refused at start. VOC sets are
registered as "coco" (COCO-style AP).
"""

# (metric, IoU threshold index or None for the mean over 0.50:0.95, area range index)
# in the order of COCOeval.summarize; area ranges: all, small, medium, large.
_METRICS = (
    ("AP", None, 0),
    ("AP50", 0, 0),
    ("AP75", 5, 0),
    ("APs", None, 1),
    ("APm", None, 2),
    ("APl", None, 3),
)


def summarize_categories(coco_eval, category_ids: Sequence[int]) -> Dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl (in %, NaN if undefined) over ``category_ids`` (dataset
    ids), from an accumulated ``COCOeval``; equal to ``summarize()`` with ``params.catIds``
    set to them."""
    precision = coco_eval.eval["precision"]  # (iou, recall, category, area, max dets)
    cat_ids = list(coco_eval.params.catIds)
    index = [cat_ids.index(c) for c in category_ids if c in cat_ids]
    out = {}
    for name, iou, area in _METRICS:
        p = precision[:, :, index, area, -1]
        if iou is not None:
            p = p[iou]
        p = p[p > -1]
        out[name] = float(np.mean(p) * 100) if p.size else float("nan")
    return out


@FSOD_EVALUATOR_REGISTRY.register()
class FsodCOCOEvaluator(COCOEvaluator):
    """:class:`COCOEvaluator` with base/novel results: ``AP``... over the evaluated classes,
    ``bAP``, ``bAP50``, ... over base classes and ``nAP``, ``nAP50``, ... over novel classes.

    The evaluated classes are ``class_ids`` (contiguous; the trainer passes the classes that
    have prototypes), default every class of the dataset; classes with ground truth but
    no prototype would otherwise count as AP 0. Base/novel come from the dataset metadata
    (``base_ids``/``novel_ids``, contiguous; see :func:`fsod_d2.data.register_fewshot_coco`).
    A group with no ground truth in the dataset reports NaN.
    """

    evaluator_types = ("coco",)

    def __init__(
        self,
        dataset_name: str,
        tasks=("bbox",),
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        class_ids: Optional[Sequence[int]] = None,
        **kwargs,
    ):
        """
        Args:
            dataset_name, tasks, distributed, output_dir, kwargs: see :class:`COCOEvaluator`
                (FsodRCNN predicts boxes only, hence ``tasks=("bbox",)``).
            class_ids: contiguous ids of the evaluated classes (default: every class the
                dataset annotates, :func:`fsod_d2.data.subset_class_ids`).
        """
        super().__init__(dataset_name, tasks, distributed, output_dir, **kwargs)
        self.dataset_name = dataset_name
        self.class_ids = None if class_ids is None else [int(c) for c in class_ids]

    def _dataset_ids(self, contiguous: Sequence[int]) -> List[int]:
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id")
        if id_map is None:  # detectron2 then uses contiguous ids as COCO ids
            return [int(c) for c in contiguous]
        reverse = {v: k for k, v in id_map.items()}
        return [reverse[int(c)] for c in contiguous if int(c) in reverse]

    def category_groups(self) -> Dict[str, List[int]]:
        """Prefix -> contiguous class ids: "" (evaluated), "b" (base), "n" (novel)."""
        meta = self._metadata
        evaluated = subset_class_ids(meta) if self.class_ids is None else self.class_ids
        groups = {"": evaluated}
        if meta.get("base_ids") is not None:  # registered with a base/novel split
            for prefix, subset in (("b", "base"), ("n", "novel")):
                ids = set(subset_class_ids(meta, subset))
                groups[prefix] = [c for c in evaluated if c in ids]
        return groups

    def _no_detection_results(self, category_ids: Sequence[int]) -> Dict[str, float]:
        """What COCOeval would report without detections: 0 where the categories have
        (non-crowd) ground truth in the metric's area range, NaN elsewhere."""
        anns = self._coco_api.loadAnns(self._coco_api.getAnnIds(catIds=list(category_ids)))
        areas = np.array([a["area"] for a in anns if not a.get("iscrowd", 0)], dtype=float)
        ranges = ((0, np.inf), (0, 32**2), (32**2, 96**2), (96**2, np.inf))
        out = {}
        for name, _, area in _METRICS:
            lo, hi = ranges[area]
            has_gt = bool(((areas >= lo) & (areas < hi)).any()) if len(category_ids) else False
            out[name] = 0.0 if has_gt else float("nan")
        return out

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        results = super()._derive_coco_results(coco_eval, iou_type, class_names)
        if iou_type != "bbox":
            return results
        extra = {}
        for prefix, ids in self.category_groups().items():
            cat_ids = self._dataset_ids(ids)
            if coco_eval is None:  # no detection at all: AP 0 where there is ground truth
                group = self._no_detection_results(cat_ids)
            else:
                group = summarize_categories(coco_eval, cat_ids)
            extra.update({prefix + name: value for name, value in group.items()})
        results.update(extra)  # "" group: AP... over the evaluated classes only
        logger.info(
            "Few-shot results (%s, %s): \n%s",
            self.dataset_name,
            iou_type,
            create_small_table({k: v for k, v in extra.items() if k[:1] in "bn"}),
        )
        return results


def evaluator_class(evaluator_type: str) -> Optional[type]:
    """The registered evaluator class that evaluates datasets of ``evaluator_type``, or None."""
    for _, cls in FSOD_EVALUATOR_REGISTRY:
        if evaluator_type in getattr(cls, "evaluator_types", ()):
            return cls
    return None


def evaluator_types() -> List[str]:
    """Every dataset ``evaluator_type`` a registered evaluator evaluates, sorted."""
    return sorted({t for _, cls in FSOD_EVALUATOR_REGISTRY for t in cls.evaluator_types})
