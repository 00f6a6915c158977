"""Configuration checks that run before anything is built: a config that cannot work is refused
at start, with the config key and the fix, instead of failing at the first evaluation (after
training) or silently evaluating fewer classes.

:func:`check_config` is called by :class:`FsodTrainer` before it builds the model and the data
loader, and by ``tools/train_net.py`` before it starts processes. It checks:

* every dataset named in ``DATASETS.TRAIN``, ``DATASETS.TEST`` and
  ``FSOD.TEST.SUPPORT_DATASET`` is registered and its files exist (:func:`check_datasets`);
* a test set has an evaluator (``evaluator_type`` "coco") and a support set
  (``FSOD.TEST.SUPPORT_DATASET``) with the same classes, annotating every class it evaluates;
* ``FSOD.TEST.K_SHOT`` is >= 1 and, with ``FSOD.STRICT_SHOTS`` (no sampling with replacement),
  at most the shots the support set has of each test class;
* a K-shot file in ``DATASETS.TRAIN`` (adaptation) has every class, and K boxes of each with
  ``FSOD.STRICT_SHOTS`` (:func:`fsod_d2.engine.adapt.check_kshot_training_sets`).

The training shots (``FSOD.K_SHOT``) are checked by the episodic loader, right after it loads
the training annotations and before it crops anything.
"""

from __future__ import annotations

import difflib
import logging
import os

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..data.datasets.coco_fewshot import subset_class_ids
from ..data.support_pool import shot_counts
from ..evaluation import evaluator_class, evaluator_types
from ..utils.files import datasets_root
from ..utils.text import count

logger = logging.getLogger(__name__)

__all__ = ["ConfigError", "DatasetNotFoundError", "check_config", "check_datasets"]


class ConfigError(ValueError):
    """A configuration that cannot work; the message names the config key and the fix."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset the config uses is not registered or its files are not on disk."""


def _dataset_help(name: str, missing: str) -> str:
    root = datasets_root()
    lines = [f"Dataset '{name}' is not available: {missing}."]
    if name.startswith("fsod_coco"):
        lines += [
            f"Put COCO under $DETECTRON2_DATASETS (now {root!r}): {root}/coco/"
            "{train2017,val2017,annotations} for the 2017 protocol (and {train2014,val2014} "
            "for the 2014/TFA protocol),",
            "then prepare the seeded K-shot split files: "
            "python tools/prepare_fewshot_splits.py coco17   (or coco14),",
        ]
    elif name.startswith("fsod_voc"):
        lines += [
            f"Put VOC2007 and VOC2012 under $DETECTRON2_DATASETS (now {root!r}): "
            f"{root}/VOC2007, {root}/VOC2012,",
            "then prepare the seeded K-shot split files: "
            "python tools/prepare_fewshot_splits.py voc,",
        ]
    elif name.startswith("fsod_toy"):
        lines += ["Generate the toy dataset: python tools/make_toy_dataset.py (or make toy),"]
    lines += [
        "see datasets/README.md for the expected layout.",
        "To try fsod-d2 without downloading anything: make demo (toy data, CPU), or "
        "python tools/train_net.py --config-file configs/demo/fsod_toy_base.yaml",
    ]
    return "\n".join(lines)


def _unregistered(key: str, name: str) -> str:
    close = difflib.get_close_matches(name, DatasetCatalog.list(), n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return (
        f"{key}: no dataset named '{name}' is registered.{hint} Correct the name, or register "
        "the dataset: FSOD.REGISTER in the config, or fsod_d2.data.register_fewshot_coco in "
        "Python (datasets/README.md)."
    )


def _used_datasets(cfg: CfgNode) -> list[tuple[str, str]]:
    """(config key, dataset name) of every dataset the config uses."""
    used = [("DATASETS.TRAIN", n) for n in cfg.DATASETS.TRAIN]
    used += [("DATASETS.TEST", n) for n in cfg.DATASETS.TEST]
    if cfg.FSOD.TEST.SUPPORT_DATASET:
        used.append(("FSOD.TEST.SUPPORT_DATASET", cfg.FSOD.TEST.SUPPORT_DATASET))
    return used


def check_datasets(cfg: CfgNode) -> None:
    """Fail at once, with instructions, if a dataset of ``cfg`` (train, test, evaluation
    supports) is not registered (:class:`ConfigError`) or its annotation file / image folder is
    missing (:class:`DatasetNotFoundError`)."""
    seen = set()
    for key, name in _used_datasets(cfg):
        if name in seen:
            continue
        seen.add(name)
        if name not in DatasetCatalog:
            raise ConfigError(_unregistered(key, name))
        meta = MetadataCatalog.get(name)
        paths = [
            (what, meta.get(k))
            for what, k in (
                ("annotation file", "json_file"),
                ("annotation file", "source_json_file"),
                ("image folder", "image_root"),
                ("VOC folder", "dirname"),
            )
            if meta.get(k)
        ]
        for what, path in paths:
            if not os.path.exists(path):
                raise DatasetNotFoundError(_dataset_help(name, f"its {what} {path} does not exist"))


def support_dataset_required(cfg: CfgNode) -> str:
    """The message when ``DATASETS.TEST`` is set without ``FSOD.TEST.SUPPORT_DATASET``."""
    return (
        f"DATASETS.TEST is {tuple(cfg.DATASETS.TEST)} but FSOD.TEST.SUPPORT_DATASET is empty: "
        "evaluation detects the test classes from K-shot supports. Set FSOD.TEST.SUPPORT_DATASET "
        "to a registered dataset that annotates them (e.g. the training set or its K-shot "
        'split), or DATASETS.TEST "()" to train without evaluation.'
    )


def _check_evaluation(cfg: CfgNode) -> None:
    t = cfg.FSOD.TEST
    if not cfg.DATASETS.TEST:
        return
    for name in cfg.DATASETS.TEST:
        etype = MetadataCatalog.get(name).get("evaluator_type", "coco")
        if evaluator_class(etype) is None:
            raise ConfigError(
                f"DATASETS.TEST: dataset '{name}' has evaluator_type {etype!r}; fsod-d2 evaluates "
                f"{evaluator_types()} datasets (AP and bAP/nAP). Register it with "
                "fsod_d2.data.register_fewshot_coco (or register_fewshot_voc), or override "
                "FsodTrainer.build_evaluator (or register an evaluator in FSOD_EVALUATOR_REGISTRY)."
            )
    support = t.SUPPORT_DATASET
    if not support:
        raise ConfigError(support_dataset_required(cfg))
    if t.K_SHOT < 1:
        raise ConfigError(f"FSOD.TEST.K_SHOT must be >= 1 (supports per class), not {t.K_SHOT}")
    support_classes = list(MetadataCatalog.get(support).get("thing_classes", []))
    for name in cfg.DATASETS.TEST:
        if list(MetadataCatalog.get(name).get("thing_classes", [])) != support_classes:
            raise ConfigError(
                f"FSOD.TEST.SUPPORT_DATASET '{support}' and DATASETS.TEST '{name}' have different "
                "classes (thing_classes), so their class ids do not match: register both with "
                "the same categories and base/novel split (e.g. from the same annotation file's "
                "categories, as tools/prepare_fewshot_splits.py keeps them)."
            )
    counts = shot_counts(DatasetCatalog.get(support), cfg.FSOD.SUPPORT.MIN_BOX_SIZE)
    for name in cfg.DATASETS.TEST:
        evaluated = subset_class_ids(MetadataCatalog.get(name))
        lacking = [c for c in evaluated if c not in counts]
        if lacking:
            names = [support_classes[c] for c in lacking]
            raise ConfigError(
                f"FSOD.TEST.SUPPORT_DATASET '{support}' has no usable support box (non-crowd, "
                f"sides >= FSOD.SUPPORT.MIN_BOX_SIZE={cfg.FSOD.SUPPORT.MIN_BOX_SIZE}) for "
                f"the classes {names[:10]} of DATASETS.TEST '{name}'. Use a support "
                "dataset that annotates them (not a '_base' or '_novel' variant that leaves them "
                "out; K-shot files from tools/prepare_fewshot_splits.py json skip boxes below "
                "that size), or test on the variant of the test set with only the classes it has."
            )
        short = [(support_classes[c], counts[c][0]) for c in evaluated if counts[c][0] < t.K_SHOT]
        if short and cfg.FSOD.STRICT_SHOTS:
            fewest = min(n for _, n in short)
            raise ConfigError(
                f"FSOD.TEST.K_SHOT={t.K_SHOT} but FSOD.TEST.SUPPORT_DATASET '{support}' has fewer "
                f"usable boxes for {count(len(short), 'class')}: {short[:10]}, and "
                "FSOD.STRICT_SHOTS is "
                f"True (no sampling with replacement). Lower FSOD.TEST.K_SHOT to {fewest}, use a "
                "support dataset with more shots, or set FSOD.STRICT_SHOTS False."
            )


def check_config(cfg: CfgNode) -> None:
    """Refuse a config that would fail after training or evaluate the wrong classes (see the
    module docstring). Raises :class:`ConfigError` or :class:`DatasetNotFoundError`."""
    check_datasets(cfg)
    _check_evaluation(cfg)
    from .adapt import check_kshot_training_sets  # adapt imports this module

    check_kshot_training_sets(cfg)
