"""Data: few-shot datasets, splits, support pool, episodic mapper, toy data."""

from . import datasets  # noqa: F401  (registers the builtin few-shot datasets)
from .datasets import register_fewshot_coco, register_fewshot_voc, register_from_config

__all__ = ["register_fewshot_coco", "register_fewshot_voc", "register_from_config"]
