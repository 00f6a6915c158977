#!/usr/bin/env python
"""Generate the deterministic toy few-shot detection dataset (see ``fsod_datagen.shapes``).

python tools/make_toy_dataset.py                      # 20 base + 5 novel, easy
python tools/make_toy_dataset.py --hard --num-base 40 --num-novel 10
"""

import argparse
import logging
import os

import fsod_d2  # noqa: F401  (first: silences known import warnings of its dependencies)

# isort: split
from fsod_d2.utils import datasets_root
from fsod_d2.utils.cli import UsageError, check_output_dir, one_line_errors
from fsod_datagen.shapes import generate_toy_dataset

logger = logging.getLogger("fsod_d2.make_toy_dataset")


def _default_root(hard: bool) -> str:
    return os.path.join(datasets_root(), "fsod_toy_hard" if hard else "fsod_toy")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--root",
        help="output folder (default: $DETECTRON2_DATASETS/fsod_toy, or .../fsod_toy_hard with "
        "--hard; DETECTRON2_DATASETS defaults to 'datasets')",
    )
    p.add_argument("--num-base", type=int, default=20)
    p.add_argument("--num-novel", type=int, default=5)
    p.add_argument("--num-train", type=int, default=240, help="training images")
    p.add_argument("--num-val", type=int, default=60, help="validation images")
    p.add_argument("--image-size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    p.add_argument("--min-objects", type=int, default=1, help="annotated objects per image, min")
    p.add_argument("--max-objects", type=int, default=6, help="annotated objects per image, max")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hard", action="store_true", help="difficulty 'hard' (clutter, occlusion)")
    p.add_argument("--overwrite", action="store_true", help="regenerate even if present")
    return p.parse_args(argv)


@one_line_errors("make_toy_dataset.py")
def main(argv: list[str] | None = None) -> dict:
    """Generate the dataset; bad options or an output folder that cannot be written stop the
    tool with one line (exit code 1) before anything is generated."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    root = args.root if args.root is not None else _default_root(args.hard)
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
    return result


if __name__ == "__main__":
    main()
