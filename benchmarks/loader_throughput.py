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
    # the GPU headline: 384 px supports, queries resized to a 600 px shorter side
    "headline_s384_q600": [
        "FSOD.SUPPORT.SIZE",
        "384",
        "FSOD.N_WAY",
        "5",
        "FSOD.K_SHOT",
        "3",
        "INPUT.MIN_SIZE_TRAIN",
        "(600,)",
        "INPUT.MAX_SIZE_TRAIN",
        "1000",
    ],  # fmt: skip
}


def profile_mapper(cfg, episodes: int, top: int = 12) -> list:
    """cProfile of building ``episodes`` episodes in this process (decode, resize, crops...):
    the functions with the most own time, in ms per episode."""
    import cProfile
    import pstats

    loader = build_episodic_train_loader(cfg)
    dataset = loader.dataset
    for g in range(3):  # warm: file handles, first decodes
        dataset[g]
    prof = cProfile.Profile(time.process_time)  # CPU time: robust to other load
    prof.enable()
    for g in range(3, 3 + episodes):
        dataset[g]
    prof.disable()
    stats = pstats.Stats(prof)
    rows = []
    for (file, line, name), (_, calls, own, cum, _) in stats.stats.items():
        where = f"{Path(file).name}:{line}({name})" if line else name
        rows.append({"function": where, "calls_per_episode": calls / episodes,
                     "own_ms_per_episode": own * 1e3 / episodes,
                     "cum_ms_per_episode": cum * 1e3 / episodes})  # fmt: skip
    rows.sort(key=lambda r: -r["own_ms_per_episode"])
    return rows[:top]


def loader_episode_rate(cfg, iters: int, warmup: int = 3) -> dict:
    """Episodes/s drawn from ``build_episodic_train_loader(cfg)`` (iterator already warm)."""
    t0 = time.perf_counter()
    loader = build_episodic_train_loader(cfg)
    it = iter(loader)
    for _ in range(warmup):  # worker start-up and the first prefetches are not steady state
        next(it)
    startup = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    episodes = sum(len(next(it)) for _ in range(iters))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    del it
    return {
        "episodes_per_s": episodes / seconds,
        "episodes": episodes,
        "seconds": seconds,
        # this process's CPU time: with 0 workers, all of the loading (a per-core rate that a
        # busy shared machine does not distort the way it distorts wall time)
        "main_cpu_s_per_episode": cpu / episodes,
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
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--profile", type=int, default=0, help="cProfile this many episodes/setting")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
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
    for name in args.settings:
        opts = SETTINGS[name] + list(args.opts)
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
        if args.profile:
            entry["profile"] = profile_mapper(cfg, args.profile)
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
    for name, e in results["settings"].items():
        if "profile" in e:
            w0 = e["loader"].get("workers_0")
            if w0:
                print(f"\n{name}: {w0['main_cpu_s_per_episode'] * 1e3:.1f} CPU ms per episode "
                      f"with 0 workers = {1 / w0['main_cpu_s_per_episode']:.1f} episodes/s per "
                      "core")  # fmt: skip
            print(f"{name}: own CPU time per episode (cProfile, main process)")
            for r in e["profile"]:
                print(f"  {r['own_ms_per_episode']:7.2f} ms {r['calls_per_episode']:6.1f}x "
                      f"{r['function'][:80]}")  # fmt: skip
    os.makedirs(args.out_dir, exist_ok=True)
    out = os.path.join(args.out_dir, "loader_throughput.json")
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
