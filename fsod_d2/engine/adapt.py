"""K-shot adaptation: a base-trained FsodRCNN trained briefly on a K-shot set of its classes.

The adaptation is an ordinary :class:`~fsod_d2.engine.FsodTrainer` run with a config overlay
(``configs/fsod_mnv2_cpu_adapt.yaml``): ``MODEL.WEIGHTS`` the base-trained model,
``DATASETS.TRAIN`` a K-shot set of base and novel classes (TFA's balanced set, the files
``tools/prepare_fewshot_splits.py`` writes), the parts named in ``FSOD.ADAPT.FREEZE`` frozen and
a short schedule. This module holds what that needs besides the trainer:

* :func:`freeze_parameters` and :func:`frozen_prefixes` (``FSOD.ADAPT.FREEZE``, or
  ``FSOD.ADAPT.LOW_SHOT_FREEZE`` when the K-shot training sets have at most
  ``FSOD.ADAPT.LOW_SHOT_K`` shots per class; the trainer freezes its model with them);
* :func:`scheduled_cfg`: ``SOLVER.MAX_ITER`` grown to ``FSOD.ADAPT.ITERS_PER_SHOT`` x K on
  K-shot sets (the trainer runs with it);
* :func:`check_kshot_training_sets`: a K-shot file in ``DATASETS.TRAIN`` with a class missing is
  refused before anything is built; a class with fewer than K usable boxes is refused with
  ``FSOD.STRICT_SHOTS`` (on in the adapt config), else logged (its shots are then sampled with
  replacement). Both name the class and the file;
* :func:`adaptation_overrides`: the keys an adapt config changes on the config it is based on,
  to apply them to another config (the one a model was trained with);
* :func:`support_folder_to_coco`: a support folder (``tools/predict.py``'s format) as a COCO
  training set, for ``tools/adapt_model.py``;
* :class:`ProgressBar`: a trainer hook that shows a progress bar.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
import yaml
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.engine import HookBase

from ..data.splits import usable_box
from ..data.support_folder import (
    BOX_FILE,
    IMAGE_EXTENSIONS,
    load_support_folder,
    read_box_file,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ProgressBar",
    "adaptation_overrides",
    "check_kshot_training_sets",
    "freeze_parameters",
    "frozen_prefixes",
    "kshot_set_info",
    "scheduled_cfg",
    "single_shot_note",
    "support_folder_to_coco",
    "training_shots",
]

_KSHOT_NAME = re.compile(r"_(\d+)shot(?:_seed\d+)?(?:_base|_novel)?$")
# keys of an adapt config that describe the data and the run, not the adaptation
_NOT_ADAPTATION = ("DATASETS.", "MODEL.WEIGHTS", "OUTPUT_DIR", "FSOD.REGISTER", "FSOD.TEST.")


# ------------------------------------------------------------------------------ freezing
def freeze_parameters(
    model: torch.nn.Module, prefixes: Sequence[str], key: str = "FSOD.ADAPT.FREEZE"
) -> int:
    """Stop the gradient of every parameter whose name starts with one of ``prefixes``
    (names as in ``model.named_parameters()``; a DistributedDataParallel's ``module.`` is not
    part of them). Returns the number of frozen tensors; a prefix that matches no parameter is
    an error naming ``key``, the config key they came from (a typo would silently train
    everything)."""
    prefixes = [p for p in prefixes if p]
    if not prefixes:
        return 0
    matched = Counter()
    frozen = 0
    for name, param in model.named_parameters():
        hits = [p for p in prefixes if name == p or name.startswith(p.rstrip(".") + ".")]
        if hits:
            matched.update(hits)
            if param.requires_grad:
                param.requires_grad_(False)
                frozen += 1
    unknown = [p for p in prefixes if not matched[p]]
    if unknown:
        tops = sorted({n.split(".")[0] for n, _ in model.named_parameters()})
        raise ValueError(
            f"{key}: {unknown} match no parameter of the model; use prefixes of "
            f"parameter names, e.g. {tops} or 'roi_heads.res5'"
        )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info(
        "%s %s: %d tensors frozen; %d of %d parameters train",
        key,
        prefixes,
        frozen,
        trainable,
        total,
    )
    return frozen


def frozen_prefixes(cfg: CfgNode) -> tuple[list[str], str]:
    """``(prefixes, key)``: what to freeze for ``cfg``'s training and the config key it comes
    from. ``FSOD.ADAPT.LOW_SHOT_FREEZE`` when ``FSOD.ADAPT.LOW_SHOT_K`` > 0 and the K-shot sets
    of ``DATASETS.TRAIN`` have at most that many shots per class (:func:`training_shots`),
    else ``FSOD.ADAPT.FREEZE``."""
    adapt = cfg.FSOD.ADAPT
    k = training_shots(cfg) if adapt.LOW_SHOT_K > 0 else None
    if k is not None and k <= adapt.LOW_SHOT_K:
        logger.info(
            "K-shot training set with K=%d <= FSOD.ADAPT.LOW_SHOT_K=%d: freezing "
            "FSOD.ADAPT.LOW_SHOT_FREEZE",
            k,
            adapt.LOW_SHOT_K,
        )
        return list(adapt.LOW_SHOT_FREEZE), "FSOD.ADAPT.LOW_SHOT_FREEZE"
    return list(adapt.FREEZE), "FSOD.ADAPT.FREEZE"


def scheduled_cfg(cfg: CfgNode) -> CfgNode:
    """``cfg`` with ``SOLVER.MAX_ITER`` = max(``SOLVER.MAX_ITER``, ``FSOD.ADAPT.ITERS_PER_SHOT``
    x K) when ``DATASETS.TRAIN`` has K-shot sets (K: :func:`training_shots`); else ``cfg``
    itself. A changed config is a frozen copy."""
    per_shot = cfg.FSOD.ADAPT.ITERS_PER_SHOT
    k = training_shots(cfg) if per_shot > 0 else None
    if k is None or per_shot * k <= cfg.SOLVER.MAX_ITER:
        return cfg
    out = cfg.clone()
    out.defrost()
    out.SOLVER.MAX_ITER = per_shot * k
    out.freeze()
    logger.info(
        "K-shot training set with K=%d: %d iterations (FSOD.ADAPT.ITERS_PER_SHOT=%d x K, more "
        "than SOLVER.MAX_ITER=%d)",
        k,
        out.SOLVER.MAX_ITER,
        per_shot,
        cfg.SOLVER.MAX_ITER,
    )
    return out


# ------------------------------------------------------------------------------ K-shot check
def _json_of(name: str) -> str | None:
    meta = MetadataCatalog.get(name)
    return meta.get("json_file") or meta.get("source_json_file")


def kshot_set_info(name: str) -> dict[str, Any] | None:
    """``{"k", "file", "classes"}`` if the registered dataset ``name`` is a K-shot set (a name
    ``..._<K>shot_seed<S>``, as ``FSOD.REGISTER``'s ``kshots=`` folders give; K and classes as
    recorded by ``prepare_fewshot_splits.py`` in the file, else K from the name), else None.
    ``classes``: the contiguous ids the set must have, the recorded classes (or all) within
    the dataset's base/novel subset."""
    m = _KSHOT_NAME.search(name)
    path = _json_of(name)
    # only K-shot names are read (a base training set's JSON may be large)
    if not m or not path or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        coco = json.load(f)
    recorded = ((coco.get("info") or {}).get("fsod_d2_kshot")) or {}
    k = recorded.get("k") or int(m.group(1))
    meta = MetadataCatalog.get(name)
    names = list(meta.thing_classes)
    subset = meta.get("subset", "all")
    ids = list(range(len(names))) if subset == "all" else list(meta.get(f"{subset}_ids"))
    if recorded.get("classes"):
        wanted = set(recorded["classes"])
        ids = [c for c in ids if names[c] in wanted]
    return {"k": int(k), "file": path, "classes": ids, "coco": coco}


def training_shots(cfg: CfgNode) -> int | None:
    """Shots per class of the K-shot sets in ``DATASETS.TRAIN``: the smallest K among them (a
    dataset's metadata ``kshot``, as ``tools/adapt_model.py`` registers its support set, else
    :func:`kshot_set_info`'s K); None when none of them is a K-shot set."""
    ks = []
    for name in cfg.DATASETS.TRAIN:
        k = MetadataCatalog.get(name).get("kshot", None)
        if k is None:
            info = kshot_set_info(name)
            k = info["k"] if info else None
        if k is not None:
            ks.append(int(k))
    return min(ks) if ks else None


def check_kshot_training_sets(cfg: CfgNode) -> None:
    """Refuse a K-shot file in ``DATASETS.TRAIN`` that lacks a class; refuse (with
    ``FSOD.STRICT_SHOTS``) or log a class with fewer than K usable boxes (sides >=
    ``FSOD.SUPPORT.MIN_BOX_SIZE``). Raises :class:`~fsod_d2.engine.ConfigError`. Datasets that
    are not K-shot sets are not checked here."""
    from .checks import ConfigError

    for name in cfg.DATASETS.TRAIN:
        info = kshot_set_info(name)
        if info is None:
            continue
        coco, k = info["coco"], info["k"]
        meta = MetadataCatalog.get(name)
        to_contiguous = meta.thing_dataset_id_to_contiguous_id
        counts = Counter(
            to_contiguous[int(a["category_id"])]
            for a in coco.get("annotations", [])
            if int(a["category_id"]) in to_contiguous
            and usable_box(a, cfg.FSOD.SUPPORT.MIN_BOX_SIZE)
        )
        names = meta.thing_classes
        missing = [names[c] for c in info["classes"] if counts[c] == 0]
        if missing:
            raise ConfigError(
                f"K-shot set '{name}' ({info['file']}) has no usable box (sides >= "
                f"FSOD.SUPPORT.MIN_BOX_SIZE={cfg.FSOD.SUPPORT.MIN_BOX_SIZE}) of {len(missing)} "
                f"classes: {missing[:10]}; draw the file again from annotations that have "
                "these classes (tools/prepare_fewshot_splits.py json) or leave them out of the "
                "split"
            )
        short = [(names[c], counts[c]) for c in info["classes"] if counts[c] < k]
        if not short:
            continue
        if cfg.FSOD.STRICT_SHOTS:
            raise ConfigError(
                f"K-shot set '{name}' ({info['file']}) has fewer than K={k} usable boxes of "
                f"{len(short)} classes: {short[:10]}; add boxes of these classes to the file, "
                "use a file with fewer shots, or set FSOD.STRICT_SHOTS False (their shots are "
                "then sampled with replacement)"
            )
        logger.warning(
            "K-shot set '%s' (%s) has fewer than K=%d usable boxes of %d classes: %s; their "
            "shots are sampled with replacement (FSOD.STRICT_SHOTS True refuses such a set)",
            name,
            info["file"],
            k,
            len(short),
            short[:10],
        )


# ------------------------------------------------------------------------------ overlays
def _flatten(node: CfgNode, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in node.items():
        if isinstance(value, CfgNode):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def adaptation_overrides(adapt_config: str) -> list[Any]:
    """``[KEY, VALUE, ...]`` of the keys that ``adapt_config`` sets differently from the config
    it is based on (its ``_BASE_``), for ``cfg.merge_from_list``: the adaptation (schedule,
    freezing, episodes) without the data, weights and output keys, so that it applies on top
    of any config the base model was trained with."""
    from ..config import setup_cfg

    with open(adapt_config, encoding="utf-8") as f:
        base = (yaml.safe_load(f) or {}).get("_BASE_")
    if not base:
        raise ValueError(f"{adapt_config}: an adapt config needs a _BASE_ (the recipe it adapts)")
    if not os.path.isabs(os.path.expanduser(base)):
        base = os.path.join(os.path.dirname(adapt_config), base)
    adapted = _flatten(setup_cfg(adapt_config, freeze=False))
    original = _flatten(setup_cfg(base, freeze=False))
    out: list[Any] = []
    for key, value in adapted.items():
        if key.startswith(_NOT_ADAPTATION) or original.get(key) == value:
            continue
        out += [key, value]
    return out


# ------------------------------------------------------------------------------ support folders
def support_folder_to_coco(
    folder: str, *, size: int, context: int, image_format: str, k_shot: int = 0
) -> dict[str, Any]:
    """A support folder (``tools/predict.py``'s format, :mod:`fsod_d2.data.support_folder`) as
    a COCO dataset: every image of a class folder with its boxes (``boxes.json``, else the
    whole image), at most ``k_shot`` boxes per class (0: all), in the order the prototypes use;
    ``file_name`` relative to ``folder``; category ids 1..C in class-folder order (the
    contiguous ids 0..C-1 of ``predict.py``'s prototypes). The folder is read and checked
    with :func:`~fsod_d2.data.support_folder.load_support_folder` first (its errors name the
    file)."""
    classes = load_support_folder(
        folder, size=size, context=context, image_format=image_format, k_shot=k_shot
    )
    import cv2

    images, annotations, categories = [], [], []
    for cid, (name, crops, _) in enumerate(classes, start=1):
        categories.append({"id": cid, "name": name})
        class_dir = os.path.join(folder, name)
        boxes_of = read_box_file(class_dir)
        files = sorted(f for f in os.listdir(class_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
        taken = 0
        for f in files:
            if taken >= len(crops):
                break
            h, w = cv2.imread(os.path.join(class_dir, f), cv2.IMREAD_UNCHANGED).shape[:2]
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": f"{name}/{f}", "height": h, "width": w})
            for x0, y0, x1, y1 in boxes_of.get(f, [[0.0, 0.0, float(w), float(h)]]):
                if taken >= len(crops):
                    break
                x0, y0 = max(0.0, x0), max(0.0, y0)
                x1, y1 = min(float(w), x1), min(float(h), y1)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": cid,
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": (x1 - x0) * (y1 - y0),
                        "iscrowd": 0,
                    }
                )
                taken += 1
    info = {"description": f"support folder {folder} ({BOX_FILE} boxes, else whole images)"}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def single_shot_note(shots: dict[str, int]) -> str | None:
    """A caution when some classes have one example only (adaptation pays with several shots
    per class; benchmarks/README.md measures it per K), else None."""
    single = sorted(name for name, k in shots.items() if k == 1)
    if not single:
        return None
    which = "every class has" if len(single) == len(shots) else f"{', '.join(single)}: only"
    return (
        f"{which} one example; adaptation from one example per class may not beat the base "
        "model (see benchmarks/README.md, K-shot adaptation): add examples, or keep the adapted "
        "model only if it detects your classes better on held-out images"
    )


# ------------------------------------------------------------------------------ progress
class ProgressBar(HookBase):
    """A tqdm progress bar over the training iterations, with the total loss."""

    def __init__(self, desc: str = "adapt"):
        self.desc = desc
        self.bar = None

    def before_train(self):
        from tqdm import tqdm

        t = self.trainer
        self.bar = tqdm(total=t.max_iter, initial=t.start_iter, desc=self.desc, unit="it")

    def after_step(self):
        storage = self.trainer.storage
        if "total_loss" in storage.histories():
            self.bar.set_postfix(loss=f"{storage.history('total_loss').latest():.3f}")
        self.bar.update(1)

    def after_train(self):
        if self.bar is not None:
            self.bar.close()
