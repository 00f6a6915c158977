"""Evaluation: COCO-style AP with base/novel split."""

from .fsod_evaluation import EVALUATOR_TYPES, FsodCOCOEvaluator, summarize_categories

__all__ = ["EVALUATOR_TYPES", "FsodCOCOEvaluator", "summarize_categories"]
