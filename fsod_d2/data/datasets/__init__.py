"""Few-shot dataset registration: any COCO-format dataset, the standard protocols, the toy data."""

from .builtin import builtin_kshot_json, register_all_fewshot
from .coco_fewshot import (
    datasets_root,
    load_fewshot_coco_json,
    register_fewshot_coco,
    register_from_config,
    subset_class_ids,
)
from .voc_fewshot import register_fewshot_voc, voc_to_coco

__all__ = [
    "builtin_kshot_json",
    "datasets_root",
    "load_fewshot_coco_json",
    "register_all_fewshot",
    "register_fewshot_coco",
    "register_fewshot_voc",
    "register_from_config",
    "subset_class_ids",
    "voc_to_coco",
]

register_all_fewshot()
