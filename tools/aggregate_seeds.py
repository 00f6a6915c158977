#!/usr/bin/env python
"""Aggregate few-shot evaluations over support seeds into mean +/- std.

Each evaluation (tools/train_net.py, during training or --eval-only) writes
``OUTPUT_DIR/inference/<dataset>/fsod_metrics_<K>shot_seed<S>.json``. Evaluate several seeds,
then aggregate:

  for s in 0 1 2 3 4; do
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS W FSOD.TEST.SEED $s
  done
  python tools/aggregate_seeds.py output/           # folders (searched recursively), files, globs

Results are grouped by the weights they were computed with, then by (dataset, K): results of
different weights are never averaged together. The weights are told apart by the fingerprint
each result file records (files written before fingerprints were recorded: by MODEL.WEIGHTS,
or by the run folder when it is empty, i.e. weights trained in that run). Two files with the
same weights, dataset, K and seed must hold the same numbers (one copy is kept); if they differ,
the tool stops and names both. Std is the sample standard deviation (ddof=1; NaN for a single
seed).
"""

import argparse
import glob
import json
import logging
import os
import sys
from collections import defaultdict
from typing import Dict, List, Sequence, Tuple

import fsod_d2  # noqa: F401  (first: silences known import warnings of its dependencies)

# isort: split
from fsod_d2.utils import mean_std
from fsod_d2.utils.cli import UsageError, check_output_file, one_line_errors
from fsod_d2.utils.text import count

logger = logging.getLogger("fsod_d2.aggregate_seeds")

PATTERN = "fsod_metrics_*shot_seed*.json"
DEFAULT_METRICS = ("AP", "AP50", "AP75", "bAP", "bAP50", "bAP75", "nAP", "nAP50", "nAP75")
REQUIRED = ("dataset", "k_shot", "seed", "metrics")


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


def read_result(path: str) -> Dict:
    """One evaluation record; a file that is not one raises :class:`UsageError` naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path} cannot be read ({e})") from None
    if not isinstance(record, dict) or any(k not in record for k in REQUIRED):
        raise UsageError(
            f"{path} is not a result of tools/train_net.py (it needs {', '.join(REQUIRED)}); "
            "remove it from the inputs"
        )
    return record


def _run_folder(path: str) -> str:
    """The OUTPUT_DIR of a result file (``<run>/inference/<dataset>/<file>``)."""
    parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
    if "inference" in parts:
        i = len(parts) - 1 - parts[::-1].index("inference")
        return os.sep.join(parts[:i]) or os.sep
    return os.path.dirname(os.path.abspath(path))


def weights_identity(record: Dict, path: str) -> Tuple[str, str]:
    """(key, description) of the weights a result was computed with."""
    weights = record.get("weights") or ""
    fingerprint = record.get("weights_fingerprint") or ""
    if fingerprint:
        what = f"MODEL.WEIGHTS {weights}" if weights else f"trained in {_run_folder(path)}"
        return f"fingerprint {fingerprint}", f"{what} (fingerprint {fingerprint[:12]})"
    if weights:
        return f"weights {weights}", f"MODEL.WEIGHTS {weights} (no fingerprint recorded)"
    run = _run_folder(path)
    return f"run {run}", f"trained in {run} (no fingerprint recorded)"


def _same_numbers(a: Dict, b: Dict) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def aggregate(paths: Sequence[str], task: str = "bbox", metrics: Sequence[str] = ()) -> List[Dict]:
    """One row per (weights, dataset, K): the weights, seeds, files, and per metric
    mean/std/n over the seeds.

    Raises:
        UsageError: a file that is not an evaluation result, or two files with different
            numbers for the same weights, dataset, K and seed (both are named).
    """
    by_seed: Dict[tuple, Tuple[str, Dict]] = {}
    described: Dict[str, str] = {}
    for path in paths:
        record = read_result(path)
        key, description = weights_identity(record, path)
        described[key] = description
        seed_key = (key, record["dataset"], int(record["k_shot"]), int(record["seed"]))
        if seed_key in by_seed:
            other, kept = by_seed[seed_key]
            if not _same_numbers(kept["metrics"], record["metrics"]):
                raise UsageError(
                    f"{other} and {path} hold different results for the same weights "
                    f"({description}), dataset {record['dataset']}, K={record['k_shot']} and "
                    f"seed {record['seed']}; remove the stale one or aggregate them separately"
                )
            continue
        by_seed[seed_key] = (path, record)
    groups: Dict[tuple, List[Tuple[str, Dict]]] = defaultdict(list)
    for (key, dataset, k, _), item in sorted(by_seed.items()):
        groups[(dataset, k, key)].append(item)
    rows = []
    for (dataset, k, key), items in sorted(groups.items()):
        records = [r for _, r in items]
        names = list(metrics) or [
            m for m in DEFAULT_METRICS if m in records[0]["metrics"].get(task, {})
        ]
        row = {
            "dataset": dataset,
            "k_shot": k,
            "weights": described[key],
            "seeds": [r["seed"] for r in records],
            "files": [p for p, _ in items],
        }
        for m in names:
            row[m] = mean_std(r["metrics"].get(task, {}).get(m) for r in records)
        rows.append(row)
    return rows


def format_table(rows: Sequence[Dict]) -> str:
    lines = []
    for row in rows:
        metrics = [k for k in row if isinstance(row[k], dict)]
        lines.append(
            f"{row['dataset']}  K={row['k_shot']}  {count(len(row['seeds']), 'seed')} "
            f"{row['seeds']}  weights: {row['weights']}"
        )
        lines.append("| " + " | ".join(metrics) + " |")
        lines.append("|" + "|".join(":---:" for _ in metrics) + "|")
        lines.append(
            "| "
            + " | ".join(f"{row[m]['mean']:.2f} +/- {row[m]['std']:.2f}" for m in metrics)
            + " |"
        )
    return "\n".join(lines)


@one_line_errors("aggregate_seeds.py")
def main(argv=None) -> List[Dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("inputs", nargs="+", help="result files, folders or glob patterns")
    p.add_argument("--task", default="bbox")
    p.add_argument("--metrics", nargs="*", default=(), help=f"default: {' '.join(DEFAULT_METRICS)}")
    p.add_argument("--json", metavar="FILE", help="also write the aggregate as JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if args.json is not None:
        check_output_file(args.json, "--json")
    paths = find_results(args.inputs)
    if not paths:
        raise UsageError(
            f"no {PATTERN} under {' '.join(args.inputs)}; give the OUTPUT_DIR of evaluations "
            "(tools/train_net.py writes them to OUTPUT_DIR/inference/<dataset>/)"
        )
    rows = aggregate(paths, args.task, args.metrics)
    weights = {row["weights"] for row in rows}
    if len(weights) > 1:
        logger.info("Results of %d different weights: one table per weights", len(weights))
    logger.info("%s\n%s", count(len(paths), "evaluation file"), format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
