#!/usr/bin/env python
"""Train / evaluate a few-shot detector (FsodRCNN) with detectron2's launcher.

  python tools/train_net.py --config-file configs/fsod_5way3shot.yaml            # all GPUs
  python tools/train_net.py --config-file configs/demo/fsod_toy_base.yaml --num-gpus 2  # 2 CPU
  python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS model_final.pth
  python tools/train_net.py --config-file CFG --resume      # continue from OUTPUT_DIR

--num-gpus is the number of processes per machine: all visible GPUs by default, 1 without
GPUs; without GPUs, --num-gpus N spawns N CPU processes (GLOO). Multi-node: --num-machines,
--machine-rank, --dist-url tcp://HOST:PORT on every machine.
"""

import logging
import os
import sys

import torch
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from fsod_d2.engine import (
    CheckpointError,
    ConfigError,
    DatasetNotFoundError,
    FsodCheckpointer,
    FsodTrainer,
    check_config,
    check_weights_file,
    setup_cfg,
    weights_to_load,
)

logger = logging.getLogger("fsod_d2.train_net")


def parse_args(argv=None):
    parser = default_argument_parser(epilog=__doc__)
    parser.set_defaults(num_gpus=None)  # resolved below: all visible GPUs, else 1 process
    args = parser.parse_args(argv)
    if args.num_gpus is None:
        args.num_gpus = torch.cuda.device_count() or 1
    if args.num_gpus < 1 or args.num_machines < 1:
        parser.error("--num-gpus and --num-machines must be >= 1")
    if torch.cuda.is_available() and args.num_gpus > torch.cuda.device_count():
        parser.error(
            f"--num-gpus {args.num_gpus} but only {torch.cuda.device_count()} GPUs are visible"
        )
    return args


def setup(args):
    """The frozen cfg (fsod keys, file, command-line overrides) + detectron2's default setup."""
    if not torch.cuda.is_available() and args.num_gpus > 1 and "OMP_NUM_THREADS" not in os.environ:
        # CPU processes share the cores: one thread pool per process would oversubscribe them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.num_gpus))
    cfg = setup_cfg(args.config_file, args.opts)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="fsod_d2")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = FsodTrainer.build_model(cfg)
        FsodCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = FsodTrainer.test(cfg, model)
        if cfg.TEST.EXPECTED_RESULTS:
            verify_results(cfg, res)
        return res

    trainer = FsodTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def check(args) -> None:
    """Stop before spawning processes if the config cannot work: a dataset missing or not
    registered, evaluation without (suitable) supports, a weights file that is missing or cannot
    be read (with what to do about it)."""
    try:
        cfg = setup_cfg(args.config_file, args.opts)
        check_config(cfg)
        check_weights_file(weights_to_load(cfg, args.resume))
    except (ConfigError, DatasetNotFoundError, CheckpointError) as e:
        logger.error("%s", e)
        sys.exit(2)


if __name__ == "__main__":
    args = parse_args()
    check(args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
