"""Which adaptation schedule? AP of K-shot-adapted models per candidate, on held-out dev sets.

Takes the base models that ``benchmarks/fewshot_quality.py`` trained (``fsod_pretrained`` cells
of its ``--out-dir``), adapts each with every candidate schedule (overrides on top of the keys
``configs/fsod_mnv2_cpu_adapt.yaml`` changes on the recipe) on the family's K-shot draws, and
evaluates on a dev set per family: the same generator with another seed (``--dev-seed``), so
new images of the same classes, never the benchmark's val set. The base model without
adaptation is evaluated on the same dev set. Saves ``adapt_schedule.json`` (metrics, gains and
adaptation seconds per family, candidate, K and draw) and logs a table; the schedule the config
holds is chosen from it.

    python -m benchmarks.adapt_schedule --work benchmarks/results --jobs 2
    python -m benchmarks.adapt_schedule --candidates config lr_3e-4 --shots 5 --seeds 0 1
"""

import argparse
import copy
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.logger import setup_logger

from benchmarks.common import machine_info, save_json
from benchmarks.fewshot_quality import (
    FAMILIES,
    REPO,
    Family,
    adapt_cfg,
    cell_cfg,
    cell_name,
    eval_fsod,
    generate_family,
    train,
)
from fsod_d2.data import register_fewshot_coco
from fsod_d2.engine.trainer import FsodTrainer
from fsod_d2.utils import datasets_root, mean_std

logger = logging.getLogger("fsod_d2.benchmarks.adapt_schedule")

# overrides on top of the adapt config's keys; "config" is the config as it is
CANDIDATES: Dict[str, List[str]] = {
    "config": [],
    "res5_frozen": ["FSOD.ADAPT.FREEZE", "['backbone', 'roi_heads.res5']"],
    "res5_trains": ["FSOD.ADAPT.FREEZE", "['backbone']", "FSOD.ADAPT.LOW_SHOT_K", "0"],
    "head_only": ["FSOD.ADAPT.FREEZE", "['backbone', 'roi_heads.res5', 'proposal_generator']"],
    "lr_3e-4": ["SOLVER.BASE_LR", "0.0003"],
    "lr_3e-5": ["SOLVER.BASE_LR", "0.00003"],
    "iters_400": ["SOLVER.MAX_ITER", "400"],
    "iters_100": ["SOLVER.MAX_ITER", "100"],
    "iters_40": ["SOLVER.MAX_ITER", "40"],
    "iters_fixed": ["FSOD.ADAPT.ITERS_PER_SHOT", "0"],
    "kshot_2": ["FSOD.K_SHOT", "2", "FSOD.STRICT_SHOTS", "False"],
}


def dev_family(args, name: str) -> Family:
    """The benchmark family (train split, K-shot draws) with a dev set as its val set."""
    family = copy.copy(Family(name, args.shots, args.seeds, args.num_train, args.num_val))
    root = Path(datasets_root()) / f"fewshot_{name}_dev{args.dev_seed}"
    # the generators also write a train split; one image is the least they accept
    info = generate_family(name, root, num_train=1, num_val=args.dev_images, seed=args.dev_seed)
    family.val = f"fq_{name}_dev{args.dev_seed}_{args.dev_images}"
    register_fewshot_coco(
        family.val, info["val_json"], info["image_root"], info["base_classes"],
        info["novel_classes"],
    )  # fmt: skip
    return family


def sweep_family(args, name: str) -> dict:
    setup_logger(name="fsod_d2")
    torch.set_num_threads(args.threads)
    family = dev_family(args, name)
    work = Path(args.work) / "fewshot_quality_work"
    cell = work / cell_name(name, "fsod_pretrained", args.train_seed)
    weights = cell / args.checkpoint
    if not weights.is_file():
        raise FileNotFoundError(
            f"{weights} not found: train the cell first (python -m benchmarks.fewshot_quality "
            f"--family {name} --arm fsod_pretrained --out-dir {args.work})"
        )
    seeds = ["SEED", str(args.train_seed), "FSOD.SEED", str(args.train_seed)]
    opts = (seeds if args.train_seed else []) + list(args.opts)
    cfg = cell_cfg("fsod_pretrained", family, cell, opts)
    model = FsodTrainer.build_model(cfg)
    DetectionCheckpointer(model).load(str(weights))
    out_dir = Path(args.work) / "adapt_schedule" / name
    rows = []
    for k in args.shots:
        for seed in args.seeds:
            m = eval_fsod(cfg, model, family, k, seed, str(out_dir / f"none_{k}shot_seed{seed}"))
            rows.append({"candidate": "none", "k": k, "seed": seed, **m})
            logger.info("%s no adaptation K=%d seed=%d: %s", name, k, seed, m)
            for cand in args.candidates:
                run = out_dir / f"{cand}_{k}shot_seed{seed}"
                ad = adapt_cfg(cfg, family, k, seed, weights, run, args.opts + CANDIDATES[cand])
                start = time.perf_counter()
                trainer, _ = train(FsodTrainer, ad)
                seconds = time.perf_counter() - start
                m = eval_fsod(cfg, trainer.model, family, k, seed, str(run / "eval"))
                rows.append({"candidate": cand, "k": k, "seed": seed, "seconds": seconds, **m})
                logger.info("%s %s K=%d seed=%d (%.0f s): %s", name, cand, k, seed, seconds, m)
                (run / "model_final.pth").unlink(missing_ok=True)
    return {"rows": rows, "weights": str(weights.relative_to(Path(args.work)))}


def summarize(results: dict, shots: List[int]) -> dict:
    """Per family, candidate and K: mean ± std over draws of nAP50, bAP50, the gain over no
    adaptation (paired by draw) and the adaptation seconds."""
    out = {}
    for family, res in results.items():
        rows = res["rows"]
        none = {(r["k"], r["seed"]): r for r in rows if r["candidate"] == "none"}
        for cand in sorted({r["candidate"] for r in rows}):
            for k in shots:
                rs = [r for r in rows if r["candidate"] == cand and r["k"] == k]
                if not rs:
                    continue
                entry = {m: mean_std(r[m] for r in rs) for m in ("nAP50", "bAP50")}
                if cand != "none":
                    pairs = [(r, none[(k, r["seed"])]) for r in rs]
                    entry["nAP50_gain"] = mean_std(r["nAP50"] - n["nAP50"] for r, n in pairs)
                    entry["bAP50_drop"] = mean_std(n["bAP50"] - r["bAP50"] for r, n in pairs)
                    entry["seconds"] = mean_std(r["seconds"] for r in rs)
                out[f"{family}/{cand}@{k}shot"] = entry
    return out


def table(summary: dict, families: List[str], shots: List[int]) -> str:
    cands = sorted({key.split("/")[1].split("@")[0] for key in summary})
    head = "| candidate | K | " + " | ".join(
        f"{f} nAP50 (gain) | {f} bAP50 (change)" for f in families
    )
    lines = [head + " | mean gain | s |", "|---|---|" + "---|" * (2 * len(families) + 2)]
    for cand in cands:
        for k in shots:
            entries = [summary.get(f"{f}/{cand}@{k}shot") for f in families]
            if not all(entries):
                continue
            cells, gains, secs = [], [], []
            for e in entries:
                gain = e.get("nAP50_gain", {}).get("mean", 0.0)
                drop = e.get("bAP50_drop", {}).get("mean", 0.0)
                cells += [f"{e['nAP50']['mean']:.2f} ({gain:+.2f})",
                          f"{e['bAP50']['mean']:.2f} ({-drop:+.2f})"]  # fmt: skip
                gains.append(gain)
                secs.append(e.get("seconds", {}).get("mean", 0.0))
            lines.append(f"| {cand} | {k} | " + " | ".join(cells)
                         + f" | {np.mean(gains):+.2f} | {np.mean(secs):.0f} |")  # fmt: skip
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default=str(REPO / "benchmarks/results"),
                        help="the --out-dir of benchmarks/fewshot_quality.py")  # fmt: skip
    parser.add_argument("--family", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--candidates", nargs="+", choices=sorted(CANDIDATES),
                        default=["config", "res5_frozen", "iters_400"])  # fmt: skip
    parser.add_argument("--shots", nargs="+", type=int, default=[5])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="K-shot draws")
    parser.add_argument("--train-seed", type=int, default=0, help="base training (SEED)")
    parser.add_argument("--checkpoint", default="model_final.pth",
                        help="the base model's file in its cell")  # fmt: skip
    parser.add_argument("--dev-seed", type=int, default=101, help="generator seed of the dev set")
    parser.add_argument("--dev-images", type=int, default=100, help="dev images per family")
    parser.add_argument("--num-train", type=int, default=1200, help="as the benchmark's")
    parser.add_argument("--num-val", type=int, default=200, help="as the benchmark's")
    parser.add_argument("--jobs", type=int, default=1, help="families in parallel processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--out-dir", default=None, help="default: --work")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="config overrides of the base model and every adaptation")  # fmt: skip
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup_logger(name="fsod_d2")
    logger.setLevel(logging.INFO)
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            runs = list(pool.map(sweep_family, [args] * len(args.family), args.family))
    else:
        runs = [sweep_family(args, name) for name in args.family]
    results = dict(zip(args.family, runs))
    summary = summarize(results, args.shots)
    report = {
        "machine": machine_info(),
        "protocol": {
            k: getattr(args, k)
            for k in ("shots", "seeds", "train_seed", "checkpoint", "dev_seed", "dev_images")
        },
        "candidates": {c: CANDIDATES[c] for c in args.candidates},
        "results": results,
        "summary": summary,
    }
    save_json("adapt_schedule", report, args.out_dir or args.work)
    logger.info("\n%s", table(summary, args.family, args.shots))
    return report


if __name__ == "__main__":
    main()
