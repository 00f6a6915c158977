#!/usr/bin/env python
"""Adapt a trained few-shot detector to the classes of a support folder (K-shot adaptation).

  python tools/adapt_model.py --config-file configs/fsod_mnv2_cpu.yaml \\
      --weights output/fsod_mnv2_cpu/model_final.pth --supports my_supports/ \\
      --output output/adapted/
  python tools/predict.py --config-file configs/fsod_mnv2_cpu.yaml \\
      --weights output/adapted/model_final.pth --supports my_supports/ \\
      --input photos/ --output predictions/

The support folder is tools/predict.py's: one sub-folder per class, named after the class, with
example images and an optional ``boxes.json`` (``{"image.jpg": [x0, y0, x1, y1]}`` or a list of
boxes per image); an image without an entry is the object itself. Its images, with their boxes,
become a small training set, and the model trains on it for a short schedule: the keys that the
adapt config (``--adapt-config``, default ``configs/fsod_mnv2_cpu_adapt.yaml``) changes on its
recipe (frozen parts, learning rate, iterations per shot, episodes) are applied on top of
``--config-file`` (the config the model was trained with). Photos with ``boxes.json`` make better
training images than tight crops of the objects.

Writes ``<output>/model_final.pth`` (the adapted weights, for ``predict.py --weights``),
``<output>/config.yaml`` (the adaptation's config), ``<output>/adaptation.json`` (classes,
shots, iterations, frozen parts, seconds) and ``<output>/support_set.json`` (the training set,
COCO format).
Detect with the same support folder: the adapted model is trained to match these examples.

Bad input stops the tool with one line that names the file and the fix (exit code 1): a missing
support folder or weights file, an unreadable support image, a malformed ``boxes.json``.
"""

import argparse
import json
import logging
import os
import time
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import hooks as d2_hooks
from detectron2.utils.events import JSONWriter
from detectron2.utils.logger import setup_logger

from fsod_d2.config import setup_cfg
from fsod_d2.data import register_fewshot_coco
from fsod_d2.data.support_folder import SupportFolderError
from fsod_d2.engine import ConfigError, FsodTrainer
from fsod_d2.engine.adapt import (
    ProgressBar,
    adaptation_overrides,
    frozen_prefixes,
    single_shot_note,
    support_folder_to_coco,
)

logger = logging.getLogger("fsod_d2.adapt_model")
DEFAULT_ADAPT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fsod_mnv2_cpu_adapt.yaml"


class UserInputError(ValueError):
    """Bad input to this tool: reported as one line naming the file and the fix."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="the model's config")
    p.add_argument("--weights", help="base model weights (default: MODEL.WEIGHTS of the config)")
    p.add_argument("--supports", required=True, metavar="DIR", help="support folder")
    p.add_argument("--output", required=True, metavar="DIR", help="where model_final.pth goes")
    p.add_argument("--k-shot", type=int, default=0, help="use at most K examples per class")
    p.add_argument(
        "--adapt-config",
        default=str(DEFAULT_ADAPT_CONFIG),
        metavar="FILE",
        help="adaptation schedule: the keys this file changes on its _BASE_ are applied",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p.parse_args(argv)


class AdaptTrainer(FsodTrainer):
    """FsodTrainer with a progress bar instead of the console metrics (metrics.json is still
    written)."""

    def build_hooks(self):
        hooks = [h for h in super().build_hooks() if not isinstance(h, d2_hooks.PeriodicWriter)]
        hooks.append(d2_hooks.PeriodicWriter([JSONWriter(self._metrics_file())], period=20))
        return hooks + [ProgressBar("adapt")]

    def _metrics_file(self) -> str:
        return os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")


def build_adapt_cfg(args, dataset: str, num_classes: int):
    """The model's config + the adaptation keys + the support set as training data."""
    cfg = setup_cfg(args.config_file, freeze=False)
    cfg.merge_from_list(adaptation_overrides(args.adapt_config))
    cfg.merge_from_list(list(args.opts))
    if args.weights:
        cfg.MODEL.WEIGHTS = args.weights
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.DATASETS.TEST = ()
    cfg.OUTPUT_DIR = args.output
    cfg.FSOD.SUPPORT.CACHE_DIR = os.path.join(args.output, "support_cache")
    # an episode cannot have more classes than the folder
    cfg.FSOD.N_WAY = min(cfg.FSOD.N_WAY, num_classes)
    cfg.FSOD.MAX_POSITIVE_CLASSES = min(cfg.FSOD.MAX_POSITIVE_CLASSES, cfg.FSOD.N_WAY)
    cfg.freeze()
    return cfg


def check_weights(weights: str, from_option: bool) -> None:
    what = "--weights" if from_option else "MODEL.WEIGHTS (the config's weights)"
    if not weights:
        raise UserInputError(
            "no model weights: pass --weights FILE, the model_final.pth that "
            "tools/train_net.py wrote to its OUTPUT_DIR"
        )
    if "://" not in weights and not os.path.isfile(weights):
        raise UserInputError(
            f"{what} {weights}: no such file; pass --weights FILE, the model_final.pth that "
            "tools/train_net.py wrote to its OUTPUT_DIR"
        )


def run(args) -> dict:
    if not os.path.isfile(args.adapt_config):
        raise UserInputError(f"--adapt-config {args.adapt_config}: no such file")
    model_cfg = setup_cfg(args.config_file, list(args.opts))
    check_weights(args.weights or model_cfg.MODEL.WEIGHTS, from_option=bool(args.weights))
    s = model_cfg.FSOD.SUPPORT
    coco = support_folder_to_coco(
        args.supports,
        size=s.SIZE,
        context=s.CONTEXT,
        image_format=model_cfg.INPUT.FORMAT,
        k_shot=args.k_shot,
    )
    os.makedirs(args.output, exist_ok=True)
    json_file = os.path.join(args.output, "support_set.json")
    with open(json_file, "w") as f:
        json.dump(coco, f)
    names = [c["name"] for c in coco["categories"]]
    dataset = "fsod_adapt_" + os.path.basename(os.path.normpath(args.output))
    for suffix in ("", "_base", "_novel"):
        if dataset + suffix in DatasetCatalog:  # an earlier call in this process
            DatasetCatalog.remove(dataset + suffix)
            MetadataCatalog.remove(dataset + suffix)
    register_fewshot_coco(dataset, json_file, args.supports, names, [], variants=False)
    shots = {n: 0 for n in names}
    for a in coco["annotations"]:
        shots[names[a["category_id"] - 1]] += 1
    # the set's K (its fewest examples per class) sets the parts to freeze and the iterations
    MetadataCatalog.get(dataset).set(kshot=min(shots.values()))
    note = single_shot_note(shots)
    if note:
        logger.warning(note)
    start = time.perf_counter()
    trainer = AdaptTrainer(build_adapt_cfg(args, dataset, len(names)))
    cfg = trainer.cfg  # with the iterations for the set's K
    logger.info(
        "Adapting %s to %d classes of %s (%s), %d iterations",
        cfg.MODEL.WEIGHTS,
        len(names),
        args.supports,
        ", ".join(f"{n}: {k}" for n, k in shots.items()),
        cfg.SOLVER.MAX_ITER,
    )
    trainer.resume_or_load(resume=False)
    trainer.train()
    seconds = time.perf_counter() - start
    with open(os.path.join(args.output, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    record = {
        "base_weights": cfg.MODEL.WEIGHTS,
        "config_file": args.config_file,
        "adapt_config": args.adapt_config,
        "supports": args.supports,
        "classes": names,
        "shots": shots,
        "iterations": cfg.SOLVER.MAX_ITER,
        "frozen": frozen_prefixes(cfg)[0],
        "seconds": seconds,
        "weights": os.path.join(args.output, "model_final.pth"),
    }
    with open(os.path.join(args.output, "adaptation.json"), "w") as f:
        json.dump(record, f, indent=1)
    logger.info(
        "Adapted in %.0f s -> %s; detect with: python tools/predict.py --config-file %s "
        "--weights %s --supports %s --input IMAGES --output DIR",
        seconds,
        record["weights"],
        args.config_file,
        record["weights"],
        args.supports,
    )
    return record


def main(argv=None) -> dict:
    """Run the tool; bad input stops it with one line naming the file and the fix (exit 1)."""
    args = parse_args(argv)
    setup_logger(name="fsod_d2")
    try:
        return run(args)
    except (UserInputError, SupportFolderError, ConfigError) as e:
        raise SystemExit(f"adapt_model.py: error: {e}") from None


if __name__ == "__main__":
    main()
