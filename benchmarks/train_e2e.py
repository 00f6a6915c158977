"""End-to-end training throughput: the trainer of tools/train_net.py, data loader included.

``FsodTrainer`` (episodic loader with workers, AMP, hooks, checkpoint at the end) trains on the
toy dataset (generated under $DETECTRON2_DATASETS if absent) with random weights whose FrozenBN
statistics are calibrated on a photo (``benchmarks.common.calibrate_frozen_bn``), for each
episodes-per-iteration x AMP dtype. Reported per run: episodes/min after warm-up (the trainer's
ThroughputHook), mean GPU utilization sampled every 0.2 s after warm-up (NVML, where present),
peak GPU memory, and whether training diverged (non-finite boxes or losses).

    python -m benchmarks.train_e2e                                  # GPU: R-50-C4, 8 and 16
    python -m benchmarks.train_e2e --config tiny --ims-per-batch 2 --iters 2 --warmup 1  # CPU

Writes ``train_e2e.json`` to benchmarks/results/ or --out-dir.
"""

import argparse
import logging
import os
import tempfile
import threading
import time
import traceback
from typing import Dict, List, Optional, Sequence

import torch

from benchmarks.common import (
    CONFIGS,
    calibrate_frozen_bn,
    machine_info,
    query_image,
    save_json,
)

logger = logging.getLogger("fsod_d2.benchmarks.train_e2e")


class _UtilSampler:
    """Mean GPU utilization (NVML through torch) sampled by a thread while running."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.samples = interval, []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        if torch.cuda.is_available():
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.samples.append(float(torch.cuda.utilization()))
            except Exception:  # NVML absent: no utilization
                return

    def stop(self) -> Optional[float]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return sum(self.samples) / len(self.samples) if self.samples else None


def _trainer_class(warmup: int, sampler: _UtilSampler):
    from detectron2.engine import HookBase

    from fsod_d2.engine import FsodTrainer

    class StartSampler(HookBase):
        def before_step(self):
            if self.trainer.iter - self.trainer.start_iter == warmup:
                sampler.start()

    class CalibratedTrainer(FsodTrainer):
        """FsodTrainer whose random model gets FrozenBN statistics from a photo."""

        @classmethod
        def build_model(cls, cfg):
            model = super().build_model(cfg)
            was_training = model.training
            model.eval()
            image = query_image(max(cfg.INPUT.MIN_SIZE_TRAIN))
            calibrate_frozen_bn(model, model.preprocess_image([{"image": image}]).tensor)
            model.train(was_training)
            return model

        def build_hooks(self):
            return super().build_hooks() + [StartSampler()]

    return CalibratedTrainer


def run_one(config: str, ims: int, amp_dtype: str, args, work_dir: str) -> Dict:
    from fsod_d2.engine import setup_cfg

    workers = args.workers if args.workers >= 0 else min(max((os.cpu_count() or 2) - 2, 0), ims)
    opts = [
        "MODEL.WEIGHTS", "", "MODEL.DEVICE", args.device,
        "DATASETS.TRAIN", "('fsod_toy_train_base',)", "DATASETS.TEST", "()",
        "FSOD.N_WAY", args.n_way, "FSOD.K_SHOT", args.k_shot,
        "SOLVER.IMS_PER_BATCH", ims, "SOLVER.REFERENCE_WORLD_SIZE", 0,
        "SOLVER.BASE_LR", args.lr, "SOLVER.WARMUP_ITERS", 0, "SOLVER.STEPS", "()",
        "SOLVER.MAX_ITER", args.warmup + args.iters, "SOLVER.CHECKPOINT_PERIOD", 10**9,
        "SOLVER.AMP.ENABLED", amp_dtype != "off", "FSOD.ENGINE.AMP_DTYPE",
        amp_dtype if amp_dtype != "off" else "auto",
        "DATALOADER.NUM_WORKERS", workers, "FSOD.SUPPORT.CACHE_DIR",
        os.path.join(work_dir, "support_cache"), "OUTPUT_DIR", os.path.join(work_dir, "out"),
        "FSOD.ENGINE.LOG_GPU_STATS_PERIOD", 0,
    ]  # fmt: skip
    if args.support_size:
        opts += ["FSOD.SUPPORT.SIZE", args.support_size]
    cfg = setup_cfg(str(CONFIGS[config]), [str(o) for o in opts])
    sampler = _UtilSampler()
    row = {
        "config": config,
        "ims_per_batch": ims,
        "amp_dtype": amp_dtype,
        "workers": workers,
        "n_way": cfg.FSOD.N_WAY,
        "k_shot": cfg.FSOD.K_SHOT,
        "support_size": cfg.FSOD.SUPPORT.SIZE,
        "query_min_sizes": list(cfg.INPUT.MIN_SIZE_TRAIN),
        "iters": args.iters,
        "warmup": args.warmup,
    }
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        trainer = _trainer_class(args.warmup, sampler)(cfg)
        trainer.throughput.warmup_iters = args.warmup
        trainer.resume_or_load(resume=False)
        trainer.train()
        row.update(trainer.throughput.summary())
        row["diverged"] = False
    except FloatingPointError as e:  # non-finite boxes or losses
        row.update(diverged=True, error=str(e).splitlines()[0][:300])
    except Exception as e:  # report, continue with the next run
        row.update(
            error=f"{type(e).__name__}: {str(e)[:300]}", trace=traceback.format_exc()[-2000:]
        )
    row["gpu_util_percent"] = sampler.stop()
    row["wall_s"] = time.perf_counter() - start
    if torch.cuda.is_available():
        row["peak_memory_mb"] = torch.cuda.max_memory_allocated() // 2**20
    return row


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--config", default="R50-C4" if cuda else "tiny", choices=list(CONFIGS))
    parser.add_argument("--ims-per-batch", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--amp-dtypes", nargs="+", default=["float16", "bfloat16"])
    parser.add_argument("--n-way", type=int, default=5)
    parser.add_argument("--k-shot", type=int, default=3)
    parser.add_argument("--support-size", type=int, default=384, help="0: the config's")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per run")
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--workers", type=int, default=-1, help="-1: min(cores - 2, episodes)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--toy-images", type=int, default=240, help="toy training images")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--time-budget", type=float, default=None, help="s; no new run after")
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logger.setLevel(logging.INFO)

    from fsod_d2.data.datasets import datasets_root
    from fsod_datagen.shapes import generate_toy_dataset

    generate_toy_dataset(
        os.path.join(datasets_root(), "fsod_toy"),
        num_train=args.toy_images,
        num_val=max(args.toy_images // 4, 1),
    )
    rows: List[Dict] = []
    result = {"machine": machine_info(), "args": vars(args), "runs": rows}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fsod_e2e_") as work_dir:
        for ims in args.ims_per_batch:
            for dtype in args.amp_dtypes:
                if args.time_budget and time.perf_counter() - start > args.time_budget:
                    rows.append({"ims_per_batch": ims, "amp_dtype": dtype, "skipped": "budget"})
                    continue
                rows.append(run_one(args.config, ims, dtype, args, work_dir))
                save_json("train_e2e", result, args.out_dir)
                logger.info("%s", {k: v for k, v in rows[-1].items() if k != "trace"})
    save_json("train_e2e", result, args.out_dir)
    print(f"\n{'config':7} {'B':>3} {'amp':9} {'workers':>7} {'ep/min':>9} {'GPU %':>6} {'MiB':>6}")
    for r in rows:
        if "skipped" in r:
            print(f"{'':7} {r['ims_per_batch']:3d} {r['amp_dtype']:9} skipped (time budget)")
            continue
        status = "DIVERGED" if r.get("diverged") else r.get("error", "")[:60]
        util = r.get("gpu_util_percent")
        print(
            f"{r['config']:7} {r['ims_per_batch']:3d} {r['amp_dtype']:9} {r['workers']:7d} "
            f"{r.get('episodes_per_min', float('nan')):9.1f} "
            f"{util if util is not None else float('nan'):6.1f} "
            f"{r.get('peak_memory_mb', 0):6d} {status}"
        )
    return result


if __name__ == "__main__":
    main()
