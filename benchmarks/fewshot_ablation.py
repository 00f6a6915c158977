"""Why is novel-class AP what it is? Ablations of the few-shot benchmark, one arm at a time.

Each arm is a full ``fewshot_quality.py`` run (same generated data, same wall-clock training
budget, K = 5, seeds 0-2, support-shuffled baseline; no TFA, no fine-tuning) with one change to
the model or the episodes:

* relations: global / local / patch branch off (one at a time);
* support size: crops at a larger size than the config's;
* N-way: fewer / more classes per training episode;
* episodes: half the training budget;
* RPN conditioning: ``late`` instead of the paper's ``early``;
* loss: the class-contrast term (foreground ROIs against all N prototypes of their episode);
  the auxiliary base-class classifier (supports and query boxes over the dataset's classes);
* combined: the changes that helped alone, together.

Writes ``fewshot_ablation.json`` (every arm's summary, iterations and final loss terms; saved
after each arm) and prints a Markdown table (also ``--table`` from an existing JSON).

    python benchmarks/fewshot_ablation.py --budget-min 4                 # all arms, ~50 min
    python benchmarks/fewshot_ablation.py --arms default no_patch --budget-min 1
    # overrides after the options apply to every arm, before the arm's own:
    python benchmarks/fewshot_ablation.py --arms default no_patch --budget-min 1 FSOD.N_WAY 3
"""

import argparse
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import fewshot_quality  # noqa: E402
from benchmarks.common import machine_info, save_json  # noqa: E402

logger = logging.getLogger("fsod_d2.benchmarks.fewshot_ablation")
REPO = Path(__file__).resolve().parents[1]

# arm -> (config overrides, budget factor); overrides apply on top of the benchmark config
# (configs/benchmarks/fsod_quality.yaml) and of the command line's trailing overrides
ARMS = {
    "default": ([], 1.0),
    "no_base_classifier": (["MODEL.FSOD.BASE_CLASSIFIER.WEIGHT", "0.0"], 1.0),
    "no_global": (["MODEL.FSOD.GLOBAL_RELATION", "False"], 1.0),
    "no_local": (["MODEL.FSOD.LOCAL_RELATION", "False"], 1.0),
    "no_patch": (["MODEL.FSOD.PATCH_RELATION", "False"], 1.0),
    "support_128px": (["FSOD.SUPPORT.SIZE", "128", "FSOD.SUPPORT.CONTEXT", "8"], 1.0),
    "2_way": (["FSOD.N_WAY", "2"], 1.0),
    "8_way": (["FSOD.N_WAY", "8"], 1.0),
    "half_episodes": ([], 0.5),
    "rpn_late": (["MODEL.FSOD.RPN_CONDITIONING", "late"], 1.0),
    "class_contrast": (["MODEL.FSOD.CLASS_CONTRAST_WEIGHT", "1.0"], 1.0),
    # the two arms below were measured against the earlier default without the classifier
    # (trailing override MODEL.FSOD.BASE_CLASSIFIER.WEIGHT 0.0; see benchmarks/README.md)
    "base_classifier": (["MODEL.FSOD.BASE_CLASSIFIER.WEIGHT", "1.0"], 1.0),
    # the changes that helped alone, together
    "combined": (
        ["FSOD.SUPPORT.SIZE", "128", "FSOD.SUPPORT.CONTEXT", "8"]
        + ["MODEL.FSOD.RPN_CONDITIONING", "late", "MODEL.FSOD.CLASS_CONTRAST_WEIGHT", "1.0"]
        + ["MODEL.FSOD.BASE_CLASSIFIER.WEIGHT", "1.0"],
        1.0,
    ),
}


def run_arm(name: str, args) -> dict:
    opts, factor = ARMS[name]
    argv = [
        "--budget-min",
        str(args.budget_min * factor),
        "--shots",
        str(args.shots),
        "--seeds",
        *map(str, args.seeds),
        "--eval-images",
        str(args.eval_images),
        "--skip-tfa",
        "--skip-finetune",
        "--out-dir",
        str(Path(args.out_dir) / "fewshot_ablation_work" / name),
        *args.opts,
        *opts,
    ]
    logger.info("arm %s: fewshot_quality.py %s", name, " ".join(argv))
    report = fewshot_quality.main(argv)
    training = report["fsod_base_training"]
    k = args.shots
    return {
        "overrides": [*args.opts, *opts],
        "budget_min": args.budget_min * factor,
        "iterations": training["iterations"],
        "final_losses": {key: v[-1] for key, v in training.get("loss_terms", {}).items() if v},
        "fsod": report["summary"][f"fsod@{k}shot"],
        "fsod_shuffled": report["summary"][f"fsod_shuffled@{k}shot"],
        "wall_seconds": report["wall_seconds"],
    }


def table(results: dict) -> str:
    def cell(stats: dict) -> str:
        return f"{stats['mean']:.2f} ± {stats['std']:.2f}"

    rows = [
        "| arm | changes | train min | iterations | nAP50 | nAP | bAP | shuffled nAP50 "
        "| final loss_match | final loss_box_reg |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["arms"].items():
        losses = r["final_losses"]
        rows.append(
            f"| {name} | {' '.join(r['overrides']) or '-'} | {r['budget_min']:g} "
            f"| {r['iterations']} | {cell(r['fsod']['nAP50'])} | {cell(r['fsod']['nAP'])} "
            f"| {cell(r['fsod']['bAP'])} | {cell(r['fsod_shuffled']['nAP50'])} "
            f"| {losses.get('loss_match', float('nan')):.3f} "
            f"| {losses.get('loss_box_reg', float('nan')):.3f} |"
        )
    return "\n".join(rows)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--budget-min", type=float, default=4.0, help="training budget per arm")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--eval-images", type=int, default=100, help="first N val images")
    parser.add_argument(
        "--out-dir", default=os.environ.get("FSOD_BENCH_OUT", str(REPO / "benchmarks/results"))
    )
    parser.add_argument("--table", action="store_true", help="print the table of the JSON")
    parser.add_argument("--append", action="store_true", help="add the arms to the JSON's")
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides for every arm (before its own)"
    )
    args = parser.parse_args(argv)
    path = Path(args.out_dir) / "fewshot_ablation.json"
    if args.table:
        results = json.loads(path.read_text())
        print(table(results))
        return results
    results = {"machine": machine_info(), "args": vars(args), "arms": {}}
    if args.append and path.exists():
        results = json.loads(path.read_text())
        results.setdefault("appended_runs", []).append(
            {"machine": machine_info(), "args": vars(args)}
        )
    for name in args.arms:
        results["arms"][name] = run_arm(name, args)
        save_json("fewshot_ablation", results, args.out_dir)
    logger.info("ablation table:\n%s", table(results))
    return results


if __name__ == "__main__":
    main()
