#!/usr/bin/env python
"""Generate the deterministic toy few-shot detection dataset (see ``fsod_datagen.shapes``).

python tools/make_toy_dataset.py                      # 20 base + 5 novel, easy: fsod_toy_*
python tools/make_toy_dataset.py --hard               # the same, hard: fsod_toy_hard_*
python tools/make_toy_dataset.py --hard --num-base 40 --num-novel 10 --root datasets/toy40

The registered names (fsod_toy_*, fsod_toy_hard_*) are 20 base + 5 novel classes in
$DETECTRON2_DATASETS/fsod_toy[_hard]; another split needs its own --root, and the tool prints
the FSOD.REGISTER entries that register it (its split file is written next to the JSONs).
"""

import argparse
import json
import logging
import os

import fsod_d2  # noqa: F401  (first: silences known import warnings of its dependencies)

# isort: split
from fsod_d2.data.datasets.builtin import TOY_FOLDERS, TOY_SPLIT
from fsod_d2.utils import atomic_write, datasets_root
from fsod_d2.utils.cli import UsageError, check_output_dir, one_line_errors
from fsod_datagen.shapes import generate_toy_dataset

logger = logging.getLogger("fsod_d2.make_toy_dataset")


def _default_root(hard: bool) -> str:
    return os.path.join(datasets_root(), TOY_FOLDERS[1] if hard else TOY_FOLDERS[0])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--root",
        help="output folder (default: $DETECTRON2_DATASETS/fsod_toy, or .../fsod_toy_hard with "
        "--hard; DETECTRON2_DATASETS defaults to 'datasets'); required for a split other than "
        f"{TOY_SPLIT[0]} base + {TOY_SPLIT[1]} novel",
    )
    p.add_argument("--num-base", type=int, default=TOY_SPLIT[0])
    p.add_argument("--num-novel", type=int, default=TOY_SPLIT[1])
    p.add_argument("--num-train", type=int, default=240, help="training images")
    p.add_argument("--num-val", type=int, default=60, help="validation images")
    p.add_argument("--image-size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    p.add_argument("--min-objects", type=int, default=1, help="annotated objects per image, min")
    p.add_argument("--max-objects", type=int, default=6, help="annotated objects per image, max")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hard", action="store_true", help="difficulty 'hard' (clutter, occlusion)")
    p.add_argument(
        "--separate-novel",
        action="store_true",
        help="train split: novel-class objects only in images without base objects, so that "
        "base training never sees them as unlabelled background (the val split is unchanged)",
    )
    p.add_argument("--overwrite", action="store_true", help="regenerate even if present")
    return p.parse_args(argv)


def _registered_folder(root: str) -> bool:
    """Whether ``root`` is the folder of a registered toy dataset (fsod_toy, fsod_toy_hard)."""
    real = os.path.realpath(root)
    return any(real == os.path.realpath(os.path.join(datasets_root(), f)) for f in TOY_FOLDERS)


def register_entries(result: dict) -> list[str]:
    """FSOD.REGISTER entries of a generated dataset (``<folder>_train``, ``<folder>_val``), with
    the class split read from its ``split.json``."""
    folder = os.path.dirname(result["train_json"])
    name = os.path.basename(os.path.normpath(folder))
    split = os.path.join(folder, "split.json")
    return [
        f"name={name}_{s};json={result[f'{s}_json']};images={result['image_root']};split={split}"
        for s in ("train", "val")
    ]


@one_line_errors("make_toy_dataset.py")
def main(argv: list[str] | None = None) -> dict:
    """Generate the dataset; bad options or an output folder that cannot be written stop the
    tool with one line (exit code 1) before anything is generated."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    root = args.root if args.root is not None else _default_root(args.hard)
    if (args.num_base, args.num_novel) != TOY_SPLIT and _registered_folder(root):
        raise UsageError(
            f"--num-base {args.num_base} --num-novel {args.num_novel}: {root} holds the registered "
            f"toy datasets, which are {TOY_SPLIT[0]} base + {TOY_SPLIT[1]} novel classes; write "
            "this split to another folder with --root DIR (the tool then prints the FSOD.REGISTER "
            "entries that register it)"
        )
    check_output_dir(root, "--root")
    try:
        result = generate_toy_dataset(
            root,
            num_base=args.num_base,
            num_novel=args.num_novel,
            num_train=args.num_train,
            num_val=args.num_val,
            image_size=tuple(args.image_size),
            min_objects=args.min_objects,
            max_objects=args.max_objects,
            seed=args.seed,
            difficulty="hard" if args.hard else "easy",
            separate_novel=args.separate_novel,
            overwrite=args.overwrite,
        )
    except (ValueError, FileExistsError) as e:  # bad sizes or counts; other data at --root
        raise UsageError(str(e).replace("overwrite=True", "--overwrite")) from None
    s = result["stats"]
    logger.info(
        "%s: %d images (%d train / %d val), %d classes (%d base + %d novel), %d boxes, %.1f s",
        os.path.dirname(result["train_json"]),
        s["images"],
        s["train_images"],
        s["val_images"],
        s["categories"],
        len(result["base_classes"]),
        len(result["novel_classes"]),
        s["boxes"],
        s["seconds"],
    )
    if not _registered_folder(root):
        with atomic_write(os.path.join(root, "split.json")) as f:
            json.dump({"base": result["base_classes"], "novel": result["novel_classes"]}, f)
        result["register"] = register_entries(result)
        logger.info(
            'Register it with FSOD.REGISTER (config or command line):\n  FSOD.REGISTER "%s"',
            repr(result["register"]),
        )
    return result


if __name__ == "__main__":
    main()
