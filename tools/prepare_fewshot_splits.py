#!/usr/bin/env python
"""Prepare seeded K-shot split files (TFA-style: K instances of every class) from COCO JSON.

Same input + same seed -> byte-identical output (canonical JSON, per-(seed, K, class) streams).
Standard protocols, under $DETECTRON2_DATASETS (default "datasets"; see datasets/README.md):

  python tools/prepare_fewshot_splits.py coco14   # TFA: trainvalno5k + K in 1,2,3,5,10,30
  python tools/prepare_fewshot_splits.py coco17   # FewX: train2017 K-shot files
  python tools/prepare_fewshot_splits.py voc      # VOC07+12 trainval -> COCO + K in 1,2,3,5,10
  python tools/prepare_fewshot_splits.py all      # every protocol whose sources exist

Any COCO JSON (then register the output with register_fewshot_coco or FSOD.REGISTER):

  python tools/prepare_fewshot_splits.py json --input my.json --output-dir my_splits \\
      --prefix my --shots 1 5 10 --seeds 0 1 2 [--classes gear,bolt] [--min-box-size 8]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable, Iterable

import fsod_d2  # noqa: F401  (first: silences known import warnings of its dependencies)

# isort: split
from fsod_d2.data.datasets.builtin import FSOD_SPLITS_DIR, builtin_kshot_json
from fsod_d2.data.datasets.voc_fewshot import load_voc_xml, voc_to_coco
from fsod_d2.data.splits import (
    DEFAULT_SEEDS,
    TFA_COCO_SHOTS,
    VOC_SHOTS,
    KShotSampler,
    dump_json,
    kshot_json_name,
    resolve_classes,
)
from fsod_d2.utils import datasets_root
from fsod_d2.utils.cli import UsageError, check_output_dir, one_line_errors

logger = logging.getLogger("fsod_d2.prepare_fewshot_splits")


def _load(path: str, what: str = "") -> dict:
    """A COCO-format annotation file (images, annotations, categories); a missing, unreadable
    or other file raises :class:`UsageError` naming it (``what``: the option that gave it)."""
    name = f"{what} {path}" if what else path
    if not os.path.isfile(path):
        raise UsageError(f"{name} not found (see datasets/README.md for the layout)")
    logger.info("Reading %s", path)
    try:
        with open(path, encoding="utf-8") as f:
            coco = json.load(f)
    except json.JSONDecodeError as e:
        raise UsageError(
            f"{name}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{name} cannot be read ({e})") from None
    keys = ("images", "annotations", "categories")
    if not isinstance(coco, dict) or any(not isinstance(coco.get(k), list) for k in keys):
        raise UsageError(
            f"{name} is not a COCO annotation file (an object with the lists {', '.join(keys)})"
        )
    return coco


def write_kshots(
    coco: dict,
    out_path_of: Callable[[int, int], str],
    shots: Iterable[int],
    seeds: Iterable[int],
    *,
    class_ids=None,
    min_box_size: float = 0.0,
    source: str = "",
) -> list[str]:
    """Write one K-shot file per (K, seed); ``out_path_of(k, seed)`` names it."""
    sampler = KShotSampler(coco, min_box_size=min_box_size, source=source)
    written = []
    for seed in seeds:
        for k in shots:
            path = out_path_of(k, seed)
            out = sampler.sample(k, seed, class_ids)
            dump_json(out, path)
            written.append(path)
            logger.info(
                "%s: %d images, %d annotations", path, len(out["images"]), len(out["annotations"])
            )
    return written


def merge_coco(parts: list[tuple[dict, str]]) -> dict:
    """Concatenate COCO dicts; ``file_name`` gets the given prefix; ids must not collide."""
    images, annotations, seen_img, seen_ann = [], [], set(), set()
    for coco, prefix in parts:
        for im in coco["images"]:
            if im["id"] in seen_img:
                raise ValueError(f"image id {im['id']} appears in two inputs")
            seen_img.add(im["id"])
            images.append(dict(im, file_name=os.path.join(prefix, im["file_name"])))
        for a in coco["annotations"]:
            if a["id"] in seen_ann:
                raise ValueError(f"annotation id {a['id']} appears in two inputs")
            seen_ann.add(a["id"])
            annotations.append(a)
    first = parts[0][0]
    return {
        "info": first.get("info", {}),
        "licenses": first.get("licenses", []),
        "images": sorted(images, key=lambda im: im["id"]),
        "annotations": sorted(annotations, key=lambda a: a["id"]),
        "categories": first["categories"],
    }


def prepare_coco14(root: str, shots, seeds) -> list[str]:
    """TFA's trainvalno5k (train2014 + valminusminival2014) and its K-shot files."""
    ann = os.path.join(root, "coco", "annotations")
    merged = merge_coco(
        [
            (_load(os.path.join(ann, "instances_train2014.json")), "train2014"),
            (_load(os.path.join(ann, "instances_valminusminival2014.json")), "val2014"),
        ]
    )
    trainval = os.path.join(root, FSOD_SPLITS_DIR, "coco14", "trainvalno5k.json")
    dump_json(merged, trainval)
    logger.info("%s: %d images", trainval, len(merged["images"]))
    return [trainval] + write_kshots(
        merged,
        lambda k, s: builtin_kshot_json("coco14", k, s, root),
        shots,
        seeds,
        source="coco14 trainvalno5k",
    )


def prepare_coco17(root: str, shots, seeds) -> list[str]:
    """K-shot files of train2017 (FewX split)."""
    coco = _load(os.path.join(root, "coco", "annotations", "instances_train2017.json"))
    return write_kshots(
        coco,
        lambda k, s: builtin_kshot_json("coco17", k, s, root),
        shots,
        seeds,
        source="coco17 train2017",
    )


def prepare_voc(root: str, shots, seeds) -> list[str]:
    """VOC2007 + VOC2012 trainval as COCO JSON (difficult -> iscrowd) and its K-shot files."""
    records = load_voc_xml(os.path.join(root, "VOC2007"), "trainval")
    records += load_voc_xml(os.path.join(root, "VOC2012"), "trainval")
    coco = voc_to_coco(records, root)
    path = os.path.join(root, FSOD_SPLITS_DIR, "voc", "voc0712_trainval.json")
    dump_json(coco, path)
    return [path] + write_kshots(
        coco,
        lambda k, s: builtin_kshot_json("voc", k, s, root),
        shots,
        seeds,
        source="voc0712 trainval",
    )


_COCO_ANN = "coco/annotations"
_SOURCES = {  # protocol -> (preparation, files it needs, default shots)
    "coco14": (
        prepare_coco14,
        [
            f"{_COCO_ANN}/instances_train2014.json",
            f"{_COCO_ANN}/instances_valminusminival2014.json",
        ],
        TFA_COCO_SHOTS,
    ),
    "coco17": (prepare_coco17, [f"{_COCO_ANN}/instances_train2017.json"], TFA_COCO_SHOTS),
    "voc": (prepare_voc, ["VOC2007/ImageSets/Main/trainval.txt"], VOC_SHOTS),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("protocol", choices=["coco14", "coco17", "voc", "all", "json"])
    p.add_argument("--root", help="datasets root (default: $DETECTRON2_DATASETS or 'datasets')")
    p.add_argument("--shots", type=int, nargs="+", help="K values (default: the protocol's)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    p.add_argument("--input", help="json: the COCO JSON to sample from")
    p.add_argument("--output-dir", help="json: where to write <prefix>_<K>shot_seed<S>.json")
    p.add_argument("--prefix", help="json: output file prefix (default: input file stem)")
    p.add_argument("--classes", help="json: comma-separated names/ids to sample (default: all)")
    p.add_argument(
        "--min-box-size",
        type=float,
        default=None,
        help="json: skip boxes with a side shorter than this (pixels); default "
        "FSOD.SUPPORT.MIN_BOX_SIZE, so that every drawn box can be a support (the protocols' "
        "files keep every box, as TFA's)",
    )
    return p.parse_args(argv)


def _support_min_box_size() -> float:
    """The config's smallest support box side: a K-shot file of smaller boxes cannot give
    evaluation supports (the trainer refuses it at start)."""
    from fsod_d2.config import setup_cfg

    return float(setup_cfg(freeze=False).FSOD.SUPPORT.MIN_BOX_SIZE)


@one_line_errors("prepare_fewshot_splits.py")
def main(argv=None) -> list[str]:
    """Write the split files; a mistake in the options or input files stops the tool with one
    line (exit code 1) before anything is written."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    root = args.root or datasets_root()
    if args.shots is not None and min(args.shots) < 1:
        raise UsageError(f"--shots must be >= 1 (instances per class), not {args.shots}")
    if args.protocol == "json":
        if not args.input or args.output_dir is None:
            raise UsageError("json mode needs --input FILE and --output-dir DIR")
        check_output_dir(args.output_dir, "--output-dir")
        coco = _load(args.input, "--input")
        class_ids = None
        if args.classes:
            try:
                class_ids = resolve_classes(args.classes, coco["categories"], source=args.input)
            except ValueError as e:
                raise UsageError(f"--classes: {e}") from None
        prefix = args.prefix or os.path.splitext(os.path.basename(args.input))[0]
        return write_kshots(
            coco,
            lambda k, s: os.path.join(args.output_dir, kshot_json_name(prefix, k, s)),
            args.shots or [1, 2, 3, 5, 10],
            args.seeds,
            class_ids=class_ids,
            min_box_size=(
                _support_min_box_size() if args.min_box_size is None else args.min_box_size
            ),
            source=os.path.basename(args.input),
        )
    protocols = list(_SOURCES) if args.protocol == "all" else [args.protocol]
    written = []
    for name in protocols:
        prepare, needs, default_shots = _SOURCES[name]
        missing = [n for n in needs if not os.path.exists(os.path.join(root, n))]
        if missing:
            if args.protocol == "all":
                logger.info("Skipping %s: %s not found under %s", name, missing, root)
                continue
            raise UsageError(
                f"{name}: {', '.join(missing)} not found under {root} (--root, or "
                "$DETECTRON2_DATASETS; see datasets/README.md)"
            )
        check_output_dir(os.path.join(root, FSOD_SPLITS_DIR), "--root")
        written += prepare(root, args.shots or default_shots, args.seeds)
    logger.info("Wrote %d files", len(written))
    return written


if __name__ == "__main__":
    main()
