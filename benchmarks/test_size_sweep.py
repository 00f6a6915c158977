"""Which test size? AP of trained few-shot models per INPUT.MIN_SIZE_TEST, on held-out dev sets.

Takes the ``fsod_pretrained`` models that ``benchmarks/fewshot_quality.py`` trained (its
``--out-dir``) and evaluates them, with one family's K-shot supports, at every ``--sizes`` on a
dev set per family: the same generator with another seed (``--dev-seed``), so new images of the
same classes, never the benchmark's val set. Training is not touched; only the test-time resize
changes. Saves ``test_size_sweep.json`` (metrics per family and size, and the size with the best
mean AP50 over families) and logs a table.

    python -m benchmarks.test_size_sweep --work benchmarks/results --jobs 2
"""

import argparse
import copy
import logging
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import List

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.logger import setup_logger

from benchmarks.common import machine_info, save_json
from benchmarks.fewshot_quality import (
    FAMILIES,
    REPO,
    Family,
    cell_cfg,
    eval_fsod,
    generate_family,
)
from fsod_d2.data import register_fewshot_coco
from fsod_d2.engine.trainer import FsodTrainer
from fsod_d2.utils import datasets_root

logger = logging.getLogger("fsod_d2.benchmarks.test_size_sweep")
ARM = "fsod_pretrained"


def dev_family(args, name: str) -> Family:
    """The benchmark family (train split and K-shot draws) with its val set replaced by a dev
    set drawn with ``--dev-seed``."""
    family = copy.copy(Family(name, [args.k], [args.seed], args.num_train, args.num_val))
    root = Path(datasets_root()) / f"fewshot_{name}_dev{args.dev_seed}"
    # the generators also write a train split; one image is the least they accept
    info = generate_family(name, root, num_train=1, num_val=args.dev_images, seed=args.dev_seed)
    family.val = f"fq_{name}_dev{args.dev_seed}"
    register_fewshot_coco(
        family.val, info["val_json"], info["image_root"], info["base_classes"],
        info["novel_classes"],
    )  # fmt: skip
    return family


def sweep_family(args, name: str) -> dict:
    setup_logger(name="fsod_d2")
    torch.set_num_threads(args.threads)
    family = dev_family(args, name)
    cell = Path(args.work) / "fewshot_quality_work" / f"{name}_{ARM}"
    weights = cell / "model_final.pth"
    if not weights.is_file():
        raise FileNotFoundError(
            f"{weights} not found: train the cell first "
            f"(python -m benchmarks.fewshot_quality --family {name} --arm {ARM} "
            f"--out-dir {args.work})"
        )
    out = {}
    for size in args.sizes:
        opts = ["INPUT.MIN_SIZE_TEST", str(size), "INPUT.MAX_SIZE_TEST", str(args.max_size)]
        cfg = cell_cfg(ARM, family, cell, opts)
        model = FsodTrainer.build_model(cfg)
        DetectionCheckpointer(model).load(str(weights))
        run_dir = cell / "test_size_sweep" / f"{size}px"
        out[size] = eval_fsod(cfg, model, family, args.k, args.seed, str(run_dir))
        logger.info("%s, test size %d: %s", name, size, out[size])
    return out


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default=str(REPO / "benchmarks/results"),
                        help="the --out-dir of benchmarks/fewshot_quality.py")  # fmt: skip
    parser.add_argument("--family", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--sizes", nargs="+", type=int, default=[288, 352, 384, 416, 448])
    parser.add_argument("--max-size", type=int, default=640, help="INPUT.MAX_SIZE_TEST")
    parser.add_argument("--k", type=int, default=5, help="shots of the support draw")
    parser.add_argument("--seed", type=int, default=0, help="K-shot draw of the train split")
    parser.add_argument("--dev-seed", type=int, default=101, help="generator seed of the dev set")
    parser.add_argument("--num-train", type=int, default=1200, help="as the benchmark's")
    parser.add_argument("--num-val", type=int, default=200, help="as the benchmark's")
    parser.add_argument("--dev-images", type=int, default=200, help="dev images per family")
    parser.add_argument("--jobs", type=int, default=1, help="families in parallel processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--out-dir", default=None, help="default: --work")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup_logger(name="fsod_d2")
    logger.setLevel(logging.INFO)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = dict(zip(args.family, pool.map(sweep_family, [args] * len(args.family),
                                                 args.family)))  # fmt: skip
    mean_ap50 = {s: float(np.mean([r[s]["AP50"] for r in results.values()])) for s in args.sizes}
    best = max(args.sizes, key=mean_ap50.get)
    report = {
        "machine": machine_info(),
        "protocol": {
            k: getattr(args, k) for k in ("k", "seed", "dev_seed", "dev_images", "max_size")
        },
        "results": {f: {str(s): m for s, m in r.items()} for f, r in results.items()},
        "mean_AP50": {str(s): v for s, v in mean_ap50.items()},
        "best_size": best,
    }
    save_json("test_size_sweep", report, args.out_dir or args.work)
    logger.info("\n%s", table(results, args.sizes, mean_ap50))
    logger.info("best test size by mean AP50 over %s: %d", ", ".join(args.family), best)
    return report


def table(results: dict, sizes: List[int], mean_ap50: dict) -> str:
    families = list(results)
    head = "| size | " + " | ".join(f"{f} {m}" for f in families for m in ("bAP50", "nAP50"))
    lines = [head + " | mean AP50 |", "|---|" + "---|" * (2 * len(families) + 1)]
    for s in sizes:
        cells = [f"{results[f][s][m]:.2f}" for f in families for m in ("bAP50", "nAP50")]
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {mean_ap50[s]:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
