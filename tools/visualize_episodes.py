#!/usr/bin/env python
"""Draw training episodes: the query with its ground truth next to its N x K support crops.

  python tools/visualize_episodes.py --config-file configs/quick_schedules/fsod_tiny_cpu.yaml \\
      --num 4 --output episodes/ DATASETS.TRAIN "('fsod_toy_train_base',)"

Episodes are exactly those of training iterations --start-iter, --start-iter + 1, ... (rank 0,
same FSOD.SEED); one PNG per episode, ``episode_<iter>_<position>.png``.
"""

from __future__ import annotations

import argparse
import logging
import os

import fsod_d2  # noqa: F401  (first: registers components, silences known import warnings)

# isort: split
import cv2
from detectron2.data import MetadataCatalog

from fsod_d2 import setup_cfg
from fsod_d2.data import build_episodic_train_loader
from fsod_d2.engine.checks import check_datasets
from fsod_d2.utils.cli import UsageError, check_output_dir, one_line_errors
from fsod_d2.utils.visualization import draw_episode

logger = logging.getLogger("fsod_d2.visualize_episodes")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--num", type=int, default=4, help="episodes to draw")
    p.add_argument("--start-iter", type=int, default=0, help="first training iteration to draw")
    p.add_argument("--output", default="episodes", help="output folder")
    p.add_argument("--tile", type=int, default=112, help="displayed support crop size (px)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p.parse_args(argv)


@one_line_errors("visualize_episodes.py")
def main(argv=None) -> list[str]:
    """Draw the episodes; a mistake in the config, its training set or --output stops the tool
    with one line (exit code 1) before any episode is built."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    if args.num < 1 or args.tile < 8:
        raise UsageError(f"--num must be >= 1 and --tile >= 8, not {args.num} and {args.tile}")
    cfg = setup_cfg(args.config_file, [*args.opts, "DATALOADER.NUM_WORKERS", "0"])
    check_output_dir(args.output, "--output")
    if not cfg.DATASETS.TRAIN:
        raise UsageError("DATASETS.TRAIN is empty: episodes are drawn from the training set")
    train_only = cfg.clone()  # the test sets need not exist to draw training episodes
    train_only.defrost()
    train_only.DATASETS.TEST, train_only.FSOD.TEST.SUPPORT_DATASET = (), ""
    check_datasets(train_only)
    loader = build_episodic_train_loader(cfg)
    loader.start_iter = args.start_iter
    names = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).thing_classes
    written = []
    it = iter(loader)
    while len(written) < args.num:
        iteration = args.start_iter + len(written) // loader.batch_size
        for pos, episode in enumerate(next(it)):
            if len(written) == args.num:
                break
            title = (
                f"iter {iteration} #{pos}  {os.path.basename(episode['file_name'])}  "
                f"{len(episode['support_classes'])}-way "
                f"{len(episode['support_images']) // len(episode['support_classes'])}-shot"
            )
            img = draw_episode(episode, names, image_format=cfg.INPUT.FORMAT, tile=args.tile,
                               title=title)  # fmt: skip
            path = os.path.join(args.output, f"episode_{iteration:06d}_{pos}.png")
            cv2.imwrite(path, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            written.append(path)
            logger.info("Wrote %s", path)
    return written


if __name__ == "__main__":
    main()
