#!/usr/bin/env python
"""Episodes/s of the episodic loader alone (0, 1, 2 workers) vs. the model's training rate.

  python -m benchmarks.loader_throughput [--iters 100] [--model-iters 6] [--no-model]

Data: the toy dataset (``fsod_toy_train_base``, generated under $DETECTRON2_DATASETS if absent).
Settings: the tiny CPU config as is, and the same with 320-px supports (the paper's size) at
5-way 3-shot. The support cache is built before timing. The model rate is one training step
(forward + backward + SGD) per batch of pre-loaded episodes, so it excludes loading. Prints a
table and writes ``loader_throughput.json`` to ``--out-dir`` (default
``$FSOD_BENCH_OUT`` or ``benchmarks/results``) with ratio = loader / model.
Target: ratio >= 5 (the loader is never the bottleneck).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from fsod_d2.data import build_episodic_train_loader
from fsod_d2.data.datasets import datasets_root
from fsod_datagen.shapes import generate_toy_dataset
from fsod_datagen.synthetic import get_tiny_cfg

REPO = Path(__file__).resolve().parents[1]

logger = logging.getLogger("fsod_d2.benchmarks.loader")

SETTINGS = {  # name -> config overrides on top of the tiny CPU config
    "tiny": [],
    "support320_5way3shot": ["FSOD.SUPPORT.SIZE", "320", "FSOD.N_WAY", "5", "FSOD.K_SHOT", "3"],
}


def loader_episode_rate(cfg, iters: int, warmup: int = 3) -> dict:
    """Episodes/s drawn from ``build_episodic_train_loader(cfg)`` (iterator already warm)."""
    t0 = time.perf_counter()
    loader = build_episodic_train_loader(cfg)
    it = iter(loader)
    for _ in range(warmup):  # worker start-up and the first prefetches are not steady state
        next(it)
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    episodes = sum(len(next(it)) for _ in range(iters))
    seconds = time.perf_counter() - t0
    del it
    return {
        "episodes_per_s": episodes / seconds,
        "episodes": episodes,
        "seconds": seconds,
        "startup_s": startup,
    }


def measure_model_episode_rate(cfg, iters: int, warmup: int = 2) -> dict:
    """Training episodes/s of the model alone: SGD steps on pre-loaded episode batches."""
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    import fsod_d2  # noqa: F401  (registers the model)

    it = iter(build_episodic_train_loader(cfg))
    batches = [next(it) for _ in range(warmup + iters)]
    del it
    model = build_model(cfg)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.SOLVER.BASE_LR, momentum=0.9)

    def step(batch):
        losses = model(batch)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    with EventStorage(0):  # the model logs training statistics
        for b in batches[:warmup]:
            step(b)
        t0 = time.perf_counter()
        for b in batches[warmup:]:
            step(b)
        seconds = time.perf_counter() - t0
    episodes = sum(len(b) for b in batches[warmup:])
    return {"episodes_per_s": episodes / seconds, "episodes": episodes, "seconds": seconds}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--iters", type=int, default=100, help="timed loader iterations per run")
    p.add_argument("--model-iters", type=int, default=6, help="timed model steps per setting")
    p.add_argument("--no-model", action="store_true", help="loader only")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--out-dir",
        default=os.environ.get("FSOD_BENCH_OUT", str(REPO / "benchmarks" / "results")),
        help="where loader_throughput.json goes (default $FSOD_BENCH_OUT or benchmarks/results)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[%(asctime)s %(name)s] %(message)s")
    logger.setLevel(logging.INFO)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    toy = generate_toy_dataset(os.path.join(datasets_root(), "fsod_toy"))
    cache = tempfile.mkdtemp(prefix="fsod_bench_cache_")
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "dataset": {"name": "fsod_toy_train_base", **toy["stats"]},
        "settings": {},
    }
    for name, opts in SETTINGS.items():
        base = ["DATASETS.TRAIN", "('fsod_toy_train_base',)", "FSOD.SUPPORT.CACHE_DIR", cache]
        cfg = get_tiny_cfg(*base, *opts)
        t0 = time.perf_counter()
        build_episodic_train_loader(cfg)  # builds the support cache (not timed below)
        entry = {
            "n_way": cfg.FSOD.N_WAY,
            "k_shot": cfg.FSOD.K_SHOT,
            "support_size": cfg.FSOD.SUPPORT.SIZE,
            "query_min_size": list(cfg.INPUT.MIN_SIZE_TRAIN),
            "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
            "cache_build_s": time.perf_counter() - t0,
            "loader": {},
        }
        for w in args.workers:
            wcfg = get_tiny_cfg(*base, *opts, "DATALOADER.NUM_WORKERS", str(w))
            entry["loader"][f"workers_{w}"] = r = loader_episode_rate(wcfg, args.iters)
            logger.info("%s, %d workers: %.1f episodes/s", name, w, r["episodes_per_s"])
        if not args.no_model:
            try:
                entry["model"] = measure_model_episode_rate(cfg, args.model_iters)
            except Exception as e:  # the model is another component: report, do not fake
                entry["model"] = {"error": f"{type(e).__name__}: {e}"}
            rate = entry["model"].get("episodes_per_s")
            if rate:
                entry["ratio_loader_over_model"] = {
                    k: v["episodes_per_s"] / rate for k, v in entry["loader"].items()
                }
        results["settings"][name] = entry

    print(f"{'setting':24s} {'workers':>7s} {'loader ep/s':>12s} {'model ep/s':>11s} {'ratio':>7s}")
    for name, e in results["settings"].items():
        model = e.get("model", {}).get("episodes_per_s")
        for k, v in e["loader"].items():
            ratio = e.get("ratio_loader_over_model", {}).get(k)
            model_s = f"{model:.2f}" if model else "-"
            ratio_s = f"{ratio:.1f}x" if ratio else "-"
            w = k.split("_")[1]
            print(f"{name:24s} {w:>7s} {v['episodes_per_s']:12.1f} {model_s:>11s} {ratio_s:>7s}")
    os.makedirs(args.out_dir, exist_ok=True)
    out = os.path.join(args.out_dir, "loader_throughput.json")
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
