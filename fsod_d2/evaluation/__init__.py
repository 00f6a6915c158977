"""Evaluation: COCO-style AP with base/novel split."""

from .fsod_evaluation import FsodCOCOEvaluator, summarize_categories

__all__ = ["FsodCOCOEvaluator", "summarize_categories"]
