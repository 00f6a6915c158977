#!/usr/bin/env python
"""Train / evaluate a few-shot detector (FsodRCNN) with detectron2's launcher.

  python tools/train_net.py --config-file configs/fsod_5way3shot.yaml            # all GPUs
  python tools/train_net.py --config-file configs/demo/fsod_toy_base.yaml --num-gpus 2  # 2 CPU
  python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS model_final.pth
  python tools/train_net.py --config-file CFG --resume      # continue from OUTPUT_DIR

--num-gpus is the number of processes per machine: all visible GPUs by default, 1 without
GPUs; without GPUs, --num-gpus N spawns N CPU processes (GLOO). Multi-node: --num-machines,
--machine-rank, --dist-url tcp://HOST:PORT on every machine.

A mistake in the config, its datasets, OUTPUT_DIR or MODEL.WEIGHTS (weights of another config
included) stops the tool with one line before any process starts (exit code 1).
"""

import logging
import os

import fsod_d2  # noqa: F401  (first: registers components, silences known import warnings)

# isort: split
import torch
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from fsod_d2.engine import FsodTrainer, check_config, setup_cfg
from fsod_d2.modeling.checkpoint import (
    FsodCheckpointer,
    check_weights_fit,
    check_weights_readable,
    weights_to_load,
)
from fsod_d2.utils.cli import check_output_dir, check_weights_file, one_line_errors

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
        FsodCheckpointer(model, cfg.OUTPUT_DIR, config_file=args.config_file).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = FsodTrainer.test(cfg, model)
        if cfg.TEST.EXPECTED_RESULTS:
            verify_results(cfg, res)
        return res

    trainer = FsodTrainer(cfg, config_file=args.config_file)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def check(args) -> None:
    """Stop before spawning processes if the config cannot work: a config key or file, a
    dataset missing or not registered, evaluation without (suitable) supports, an OUTPUT_DIR
    that cannot be written, a MODEL.WEIGHTS file that does not exist, cannot be read or holds
    weights of another model, a last checkpoint (--resume) that cannot be read."""
    cfg = setup_cfg(args.config_file, args.opts)
    check_config(cfg)
    check_output_dir(cfg.OUTPUT_DIR, "OUTPUT_DIR")
    weights = weights_to_load(cfg, args.resume)
    if weights and weights == cfg.MODEL.WEIGHTS:
        check_weights_file(weights, "MODEL.WEIGHTS")
        check_weights_fit(cfg, config_file=args.config_file)  # before data and processes
    else:
        check_weights_readable(weights)  # the last checkpoint of OUTPUT_DIR (--resume)


@one_line_errors("train_net.py")
def run(argv=None):
    args = parse_args(argv)
    check(args)
    return launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    run()
