"""Why is novel-class AP what it is? Ablations of the few-shot benchmark, one arm at a time.

Each arm is a ``fewshot_quality.py`` run of one FsodRCNN cell (``--cell-arm``, default the
pretrained recipe; same generated data, the config's own schedule, K = 5, seeds 0-2, supports
shuffled as the control for the pretrained arm) with one change to the model or the episodes:

* relations: global / local / patch branch off (one at a time);
* support size: crops at a larger size than the config's;
* N-way: fewer / more classes per training episode;
* RPN conditioning: ``late`` instead of the paper's ``early``;
* loss: the class-contrast term (foreground ROIs against all N prototypes of their episode);
  the auxiliary base-class classifier on or off;
* combined: the changes that helped alone, together.

Writes ``fewshot_ablation.json`` (every arm's summary, iterations and final loss terms; saved
after each arm) and prints a Markdown table (also ``--table`` from an existing JSON).

    python -m benchmarks.fewshot_ablation --family shapes                  # all arms
    python -m benchmarks.fewshot_ablation --arms default no_patch --family objects
    # overrides after the options apply to every arm, before the arm's own:
    python -m benchmarks.fewshot_ablation --arms default no_patch SOLVER.MAX_ITER 100
"""

import argparse
import json
import logging
import os
from pathlib import Path

from benchmarks import fewshot_quality
from benchmarks.common import machine_info, save_json

logger = logging.getLogger("fsod_d2.benchmarks.fewshot_ablation")
REPO = Path(__file__).resolve().parents[1]

# arm -> config overrides, on top of the cell's config and of the command line's trailing ones
ARMS = {
    "default": [],
    "no_base_classifier": ["MODEL.FSOD.BASE_CLASSIFIER.WEIGHT", "0.0"],
    "base_classifier": ["MODEL.FSOD.BASE_CLASSIFIER.WEIGHT", "1.0"],
    "no_global": ["MODEL.FSOD.RELATIONS", "['LocalRelation', 'PatchRelation']"],
    "no_local": ["MODEL.FSOD.RELATIONS", "['GlobalRelation', 'PatchRelation']"],
    "no_patch": ["MODEL.FSOD.RELATIONS", "['GlobalRelation', 'LocalRelation']"],
    "support_160px": ["FSOD.SUPPORT.SIZE", "160"],
    "2_way": ["FSOD.N_WAY", "2"],
    "5_way": ["FSOD.N_WAY", "5"],
    "rpn_late": ["MODEL.FSOD.RPN_CONDITIONING", "late"],
    "class_contrast": ["MODEL.FSOD.CLASS_CONTRAST_WEIGHT", "1.0"],
    # the changes that helped alone, together (edit after a round of single-change arms)
    "combined": ["MODEL.FSOD.RPN_CONDITIONING", "late", "MODEL.FSOD.CLASS_CONTRAST_WEIGHT", "1.0"],
}


def run_arm(name: str, args) -> dict:
    opts = ARMS[name]
    out = Path(args.out_dir) / "fewshot_ablation_work" / name
    argv = ["--family", args.family, "--arm", args.cell_arm, "--shots", str(args.shots)]
    argv += ["--seeds", *map(str, args.seeds), "--out-dir", str(out), *args.opts, *opts]
    logger.info("arm %s: fewshot_quality.py %s", name, " ".join(argv))
    report = fewshot_quality.main(argv)
    cell = f"{args.family}/{args.cell_arm}"
    training = report["cells"][cell]["training"]
    summary = report["summary"]
    return {
        "overrides": [*args.opts, *opts],
        "iterations": training["iterations"],
        "final_losses": {key: v[-1] for key, v in training["losses"].items() if v},
        "fsod": summary[f"{cell}@{args.shots}shot"],
        "fsod_shuffled": summary.get(f"{cell}_shuffled@{args.shots}shot"),
        "wall_seconds": report["cells"][cell].get("wall_seconds"),
    }


def table(results: dict) -> str:
    def cell(stats) -> str:
        return f"{stats['mean']:.2f} ± {stats['std']:.2f}" if stats else "-"

    rows = [
        "| arm | changes | iterations | nAP50 | nAP | bAP | shuffled nAP50 "
        "| final loss_match | final loss_box_reg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["arms"].items():
        losses = r["final_losses"]
        shuffled = (r.get("fsod_shuffled") or {}).get("nAP50")
        rows.append(
            f"| {name} | {' '.join(r['overrides']) or '-'} "
            f"| {r['iterations']} | {cell(r['fsod']['nAP50'])} | {cell(r['fsod']['nAP'])} "
            f"| {cell(r['fsod']['bAP'])} | {cell(shuffled)} "
            f"| {losses.get('loss_match', float('nan')):.3f} "
            f"| {losses.get('loss_box_reg', float('nan')):.3f} |"
        )
    return "\n".join(rows)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--family", default="shapes", choices=fewshot_quality.FAMILIES)
    parser.add_argument(
        "--cell-arm", default="fsod_pretrained", choices=["fsod_pretrained", "fsod_scratch"]
    )
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
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
