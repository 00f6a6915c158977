"""Evaluation: COCO-style AP with base/novel split."""

from .fsod_evaluation import (
    FSOD_EVALUATOR_REGISTRY,
    FsodCOCOEvaluator,
    evaluator_class,
    evaluator_types,
    summarize_categories,
)

__all__ = [
    "FSOD_EVALUATOR_REGISTRY",
    "FsodCOCOEvaluator",
    "evaluator_class",
    "evaluator_types",
    "summarize_categories",
]
