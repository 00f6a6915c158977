#!/usr/bin/env python
"""Aggregate few-shot evaluations over support seeds into mean +/- std.

Each evaluation (tools/train_net.py, during training or --eval-only) writes
``OUTPUT_DIR/inference/<dataset>/fsod_metrics_<K>shot_seed<S>.json``. Evaluate several seeds,
then aggregate:

  for s in 0 1 2 3 4; do
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS W FSOD.TEST.SEED $s
  done
  python tools/aggregate_seeds.py output/           # folders (searched recursively), files, globs

Results are grouped by (dataset, K); a group with several results for one seed keeps the newest
file. Std is the sample standard deviation (ddof=1; NaN for a single seed).
"""

import argparse
import glob
import json
import logging
import os
import sys
from collections import defaultdict
from typing import Dict, List, Sequence

from fsod_d2.utils import mean_std

logger = logging.getLogger("fsod_d2.aggregate_seeds")

PATTERN = "fsod_metrics_*shot_seed*.json"
DEFAULT_METRICS = ("AP", "AP50", "AP75", "bAP", "bAP50", "bAP75", "nAP", "nAP50", "nAP75")


def find_results(inputs: Sequence[str]) -> List[str]:
    paths: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            paths += glob.glob(os.path.join(item, "**", PATTERN), recursive=True)
        elif os.path.isfile(item):
            paths.append(item)
        else:
            paths += glob.glob(item, recursive=True)
    return sorted(set(paths))


def aggregate(paths: Sequence[str], task: str = "bbox", metrics: Sequence[str] = ()) -> List[Dict]:
    """One row per (dataset, K): seeds, and per metric mean/std/n over the seeds."""
    newest: Dict[tuple, tuple] = {}
    for path in paths:
        with open(path) as f:
            record = json.load(f)
        key = (record["dataset"], int(record["k_shot"]), int(record["seed"]))
        mtime = os.path.getmtime(path)
        if key not in newest or mtime > newest[key][0]:
            newest[key] = (mtime, record)
    groups: Dict[tuple, List[Dict]] = defaultdict(list)
    for (dataset, k, _), (_, record) in sorted(newest.items()):
        groups[(dataset, k)].append(record)
    rows = []
    for (dataset, k), records in groups.items():
        names = list(metrics) or [
            m for m in DEFAULT_METRICS if m in records[0]["metrics"].get(task, {})
        ]
        row = {"dataset": dataset, "k_shot": k, "seeds": [r["seed"] for r in records]}
        for m in names:
            row[m] = mean_std(r["metrics"].get(task, {}).get(m) for r in records)
        rows.append(row)
    return rows


def format_table(rows: Sequence[Dict]) -> str:
    lines = []
    for row in rows:
        metrics = [k for k in row if isinstance(row[k], dict)]
        lines.append(
            f"{row['dataset']}  K={row['k_shot']}  seeds={row['seeds']} ({len(row['seeds'])})"
        )
        lines.append("| " + " | ".join(metrics) + " |")
        lines.append("|" + "|".join(":---:" for _ in metrics) + "|")
        lines.append(
            "| "
            + " | ".join(f"{row[m]['mean']:.2f} +/- {row[m]['std']:.2f}" for m in metrics)
            + " |"
        )
    return "\n".join(lines)


def main(argv=None) -> List[Dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("inputs", nargs="+", help="result files, folders or glob patterns")
    p.add_argument("--task", default="bbox")
    p.add_argument("--metrics", nargs="*", default=(), help=f"default: {' '.join(DEFAULT_METRICS)}")
    p.add_argument("--json", metavar="FILE", help="also write the aggregate as JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    paths = find_results(args.inputs)
    if not paths:
        raise SystemExit(f"no {PATTERN} under {args.inputs}")
    rows = aggregate(paths, args.task, args.metrics)
    logger.info("%d evaluation files\n%s", len(paths), format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
