"""Standard few-shot protocols and the toy dataset, registered on ``import fsod_d2``.

Registration is lazy: nothing is read until a dataset is used (``DatasetCatalog.get``), so the
files only need to exist for the datasets you use. Everything is rooted at
``$DETECTRON2_DATASETS`` (default ``datasets``); ``datasets/README.md`` lists the layout and the
commands (``tools/prepare_fewshot_splits.py``) that create the ``fsod_splits/`` files.

Every name below also has ``<name>_base`` and ``<name>_novel`` variants (base-only / novel-only
annotations, same contiguous ids). K-shot sets contain K instances of *every* class, so the novel
fine-tuning / support set of a protocol is ``<kshot name>_novel``.

==============================================  ================================================
COCO 2014, TFA protocol (60 base / 20 novel = VOC classes)
---------------------------------------------------------------------------------------------------
``fsod_coco14_trainval``                         trainval2014 minus the 5k minival (TFA's
                                                 trainvalno5k); ``_base`` = base training set
``fsod_coco14_test``                             minival2014 (TFA's 5k test set)
``fsod_coco14_trainval_{K}shot_seed{S}``         K in 1,2,3,5,10,30; S in 0..9
COCO 2017, FewX split (same 60/20 classes)
``fsod_coco17_train``                            train2017; ``_base`` = FewX's non-VOC training
``fsod_coco17_val``                              val2017; ``_novel`` = FewX's evaluation
``fsod_coco17_train_{K}shot_seed{S}``            K in 1,2,3,5,10,30; S in 0..9
PASCAL VOC 07+12, TFA splits 1-3 (15 base / 5 novel)
``fsod_voc0712_trainval_split{N}``               VOC2007 + VOC2012 trainval
``fsod_voc07_test_split{N}``                     VOC2007 test (COCO-style evaluation)
``fsod_voc0712_trainval_split{N}_{K}shot_seed{S}``  K in 1,2,3,5,10; S in 0..9
Toy (``tools/make_toy_dataset.py``)
``fsod_toy_train`` / ``fsod_toy_val``            ``fsod_toy/{train,val}.json``; 20 base / 5 novel
``fsod_toy_hard_train`` / ``fsod_toy_hard_val``  the same with ``--hard`` (``fsod_toy_hard/``)
==============================================  ================================================
"""

from __future__ import annotations

import os

from ..splits import (
    COCO_NOVEL_IDS,
    DEFAULT_SEEDS,
    TFA_COCO_SHOTS,
    VOC_NOVEL_SPLITS,
    VOC_SHOTS,
    coco_thing_categories,
    kshot_json_name,
)
from .coco_fewshot import datasets_root, register_fewshot_coco
from .toy_categories import toy_category_id, toy_split
from .voc_fewshot import register_fewshot_voc, voc_categories

__all__ = [
    "FSOD_SPLITS_DIR",
    "TOY_FOLDERS",
    "TOY_SPLIT",
    "builtin_kshot_json",
    "register_all_fewshot",
]

# Directory (under the datasets root) of the files written by tools/prepare_fewshot_splits.py.
FSOD_SPLITS_DIR = "fsod_splits"
# Folders (under the datasets root) of the registered toy datasets, tools/make_toy_dataset.py
# without and with --hard, and their class split (num_base, num_novel): the tool refuses to
# write another split there.
TOY_FOLDERS = ("fsod_toy", "fsod_toy_hard")
TOY_SPLIT = (20, 5)

# protocol -> (query/train json, image root, prefix of K-shot files, shots)
_COCO_PROTOCOLS = {
    "coco14": {
        "fsod_coco14_trainval": (f"{FSOD_SPLITS_DIR}/coco14/trainvalno5k.json", "coco"),
        "fsod_coco14_test": ("coco/annotations/instances_minival2014.json", "coco/val2014"),
    },
    "coco17": {
        "fsod_coco17_train": ("coco/annotations/instances_train2017.json", "coco/train2017"),
        "fsod_coco17_val": ("coco/annotations/instances_val2017.json", "coco/val2017"),
    },
}
# K-shot sets: protocol -> (dataset name prefix, file prefix, image root, shots)
_KSHOT = {
    "coco14": ("fsod_coco14_trainval", "trainvalno5k", "coco", TFA_COCO_SHOTS),
    "coco17": ("fsod_coco17_train", "train2017", "coco/train2017", TFA_COCO_SHOTS),
    "voc": ("fsod_voc0712_trainval", "voc0712_trainval", ".", VOC_SHOTS),
}


def builtin_kshot_json(protocol: str, k: int, seed: int, root: str | None = None) -> str:
    """Path of the prepared K-shot file of ``protocol`` ("coco14", "coco17", "voc")."""
    root = datasets_root() if root is None else root
    prefix = _KSHOT[protocol][1]
    return os.path.join(
        root, FSOD_SPLITS_DIR, protocol, f"seed{seed}", kshot_json_name(prefix, k, seed)
    )


def _register_coco(root: str) -> None:
    cats = coco_thing_categories()
    base = [c["id"] for c in cats if c["id"] not in COCO_NOVEL_IDS]
    for protocol, sets in _COCO_PROTOCOLS.items():
        for name, (json_file, image_root) in sets.items():
            register_fewshot_coco(
                name,
                os.path.join(root, json_file),
                os.path.join(root, image_root),
                base,
                COCO_NOVEL_IDS,
                categories=cats,
            )
        name_prefix, _, image_root, shots = _KSHOT[protocol]
        for k in shots:
            for seed in DEFAULT_SEEDS:
                register_fewshot_coco(
                    f"{name_prefix}_{k}shot_seed{seed}",
                    builtin_kshot_json(protocol, k, seed, root),
                    os.path.join(root, image_root),
                    base,
                    COCO_NOVEL_IDS,
                    categories=cats,
                )


def _register_voc(root: str) -> None:
    voc07, voc12 = os.path.join(root, "VOC2007"), os.path.join(root, "VOC2012")
    name_prefix, _, image_root, shots = _KSHOT["voc"]
    for split, novel in VOC_NOVEL_SPLITS.items():
        register_fewshot_voc(
            f"fsod_voc0712_trainval_split{split}",
            [(voc07, "trainval"), (voc12, "trainval")],
            novel,
            evaluator_type="coco",
            dirname=voc07,
            year=2007,
            split="trainval",
        )
        register_fewshot_voc(
            f"fsod_voc07_test_split{split}",
            [(voc07, "test")],
            novel,
            evaluator_type="coco",
            dirname=voc07,
            year=2007,
            split="test",
        )
        base = [c["name"] for c in voc_categories() if c["name"] not in novel]
        for k in shots:
            for seed in DEFAULT_SEEDS:
                register_fewshot_coco(
                    f"{name_prefix}_split{split}_{k}shot_seed{seed}",
                    builtin_kshot_json("voc", k, seed, root),
                    os.path.join(root, image_root),
                    base,
                    novel,
                    categories=voc_categories(),
                )


def _register_toy(root: str) -> None:
    base, novel = toy_split(*TOY_SPLIT)
    cats = [{"id": toy_category_id(n), "name": n} for n in base + novel]
    for folder in TOY_FOLDERS:
        for split in ("train", "val"):
            register_fewshot_coco(
                f"{folder}_{split}",
                os.path.join(root, folder, f"{split}.json"),
                os.path.join(root, folder, "images"),
                base,
                novel,
                categories=cats,
            )


def register_all_fewshot(root: str | None = None) -> None:
    """Register all builtin few-shot datasets under ``root`` (default ``$DETECTRON2_DATASETS``)."""
    root = datasets_root() if root is None else root
    _register_coco(root)
    _register_voc(root)
    _register_toy(root)
