"""Where a training step's time goes: torch.profiler over FsodRCNN steps, by model part and op.

The same step and synthetic episodes as benchmarks/train_throughput.py (forward, backward, SGD).
The forward is split by model part with ``record_function`` ranges put around the parts'
methods (backbone on the query vs on the supports, RPN head, anchor labelling, proposal
selection, ROI pair sampling, pooler, res5, relation branches, losses); backward and optimizer
are whole phases. Prints the part table and the top operators by self CPU time, and writes
``profile_train_step_<config>.json`` (and a Chrome trace with --trace).

    python -m benchmarks.profile_train_step --config tiny
    python -m benchmarks.profile_train_step --config R50-C4 --steps 1   # ~3 min on 2 cores
"""

import argparse
import functools
import logging
import os
import time
from typing import Dict, List

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from benchmarks.common import (
    TrainStep,
    load_cfg,
    machine_info,
    save_json,
    train_episode,
)
from benchmarks.train_throughput import Case, _case_cfg, build_models

logger = logging.getLogger("fsod_d2.benchmarks.profile_train_step")

# (attribute path from the model, method, label); parts nest (e.g. res5 inside roi_heads)
PARTS = [
    ("", "encode_supports", "supports: backbone + pool + res5"),
    ("", "_episode_prototypes", "supports: all"),
    ("proposal_generator", "forward", "rpn: all"),
    ("proposal_generator.rpn_head", "forward", "rpn: head convs"),
    ("proposal_generator.anchor_generator", "forward", "rpn: anchors"),
    ("proposal_generator", "label_and_sample_anchors", "rpn: label anchors"),
    ("proposal_generator", "losses", "rpn: losses"),
    ("proposal_generator", "predict_proposals", "rpn: select proposals (top-k, NMS)"),
    ("roi_heads", "forward", "roi: all"),
    ("roi_heads", "_label_and_sample_pairs", "roi: label + sample pairs"),
    ("roi_heads.pooler", "forward", "roi: pooler (ROIAlign)"),
    ("roi_heads.res5", "forward", "roi: res5"),
    ("roi_heads.relation", "embed_queries", "roi: relation embed (ROIs)"),
    ("roi_heads.relation", "embed_supports", "roi: relation embed (classes)"),
    ("roi_heads.relation", "forward", "roi: relation pairs"),
]


def _resolve(model, path: str):
    for name in filter(None, path.split(".")):
        model = getattr(model, name)
    return model


def instrument(model) -> None:
    """Wrap the PARTS' bound methods on this model instance in ``record_function`` ranges."""
    for path, method, label in PARTS:
        obj = _resolve(model, path)
        fn = getattr(obj, method)

        @functools.wraps(fn)
        def wrapped(*args, _fn=fn, _label=label, **kwargs):
            with record_function(f"part: {_label}"):
                return _fn(*args, **kwargs)

        if method == "forward" and isinstance(obj, torch.nn.Module):
            obj.forward = wrapped  # nn.Module.__call__ looks the instance attribute up
        else:
            setattr(obj, method, wrapped)
    backbone = model.backbone
    query_forward = backbone.forward

    def backbone_forward(x):
        # query batch vs support crops: the supports' pass goes through encode_supports
        label = (
            "backbone (query)" if x.shape[0] == model._fsod_num_queries else "backbone (supports)"
        )
        with record_function(f"part: {label}"):
            return query_forward(x)

    backbone.forward = backbone_forward


def part_table(events, steps: int) -> List[Dict]:
    rows = []
    for e in events:
        if e.key.startswith("part: ") or e.key.startswith("step."):
            rows.append(
                {
                    "part": e.key.replace("part: ", ""),
                    "calls_per_step": e.count / steps,
                    "cpu_ms_per_step": e.cpu_time_total / 1e3 / steps,
                    "device_ms_per_step": getattr(e, "device_time_total", 0.0) / 1e3 / steps,
                }
            )
    return sorted(rows, key=lambda r: -r["cpu_ms_per_step"])


def op_table(events, steps: int, top: int) -> List[Dict]:
    ops = [e for e in events if not (e.key.startswith("part: ") or e.key.startswith("step."))]
    ops.sort(key=lambda e: -e.self_cpu_time_total)
    return [
        {
            "op": e.key + (f" {e.input_shapes}" if getattr(e, "input_shapes", None) else ""),
            "calls_per_step": e.count / steps,
            "self_cpu_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
            "cpu_ms_per_step": e.cpu_time_total / 1e3 / steps,
        }
        for e in ops[:top]
    ]


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="tiny", help="tiny or R50-C4")
    parser.add_argument("--ways-shots", default="5x3")
    parser.add_argument("--support-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--rpn", default="early", choices=["early", "late"])
    parser.add_argument("--mode", default="batched", choices=["batched", "per_class"])
    parser.add_argument("--query-size", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="profiled steps (tiny 5, R-50 1)")
    parser.add_argument("--fast", action="store_true", help="channels-last + fused SGD step")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--shapes", action="store_true", help="ops grouped by input shapes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 0: torch default")
    parser.add_argument("--tag", default="", help="suffix of the JSON name (before/after runs)")
    parser.add_argument("--trace", action="store_true", help="also write a Chrome trace")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or (1 if args.config == "R50-C4" else 5)
    n, k = (int(v) for v in args.ways_shots.lower().split("x"))
    size = args.support_size or load_cfg(args.config).FSOD.SUPPORT.SIZE
    case = Case(args.config, n, k, size, args.rpn, modes=(args.mode,))
    settings = {"device": args.device, "seed": 0, "query_size": args.query_size}
    model = build_models(case, settings)[args.mode]
    model._fsod_num_queries = 1
    instrument(model)
    cfg = _case_cfg(case, settings)
    step = TrainStep(model, cfg, fast=args.fast)
    batches = [[train_episode(cfg, i, query_size=args.query_size)] for i in range(2)]
    for i in range(args.warmup):
        step(batches[i % 2])
    activities = [ProfilerActivity.CPU]
    if args.device.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
    start = time.perf_counter()
    with profile(activities=activities, record_shapes=args.shapes) as prof:
        for i in range(steps):
            step(batches[(args.warmup + i) % 2])
    wall = (time.perf_counter() - start) / steps
    events = prof.key_averages()
    parts = part_table(events, steps)
    ops = op_table(prof.key_averages(group_by_input_shape=args.shapes), steps, args.top)
    name = f"profile_train_step_{args.config}{'_' + args.tag if args.tag else ''}"
    result = {
        "machine": machine_info(),
        "args": vars(args),
        "case": case.label(),
        "query_hw": list(batches[0][0]["image"].shape[1:]),
        "wall_s_per_step_profiled": wall,
        "parts": parts,
        "top_ops": ops,
    }
    path = save_json(name, result, args.out_dir)
    if args.trace:
        prof.export_chrome_trace(str(path.with_suffix(".trace.json")))
    fast = " fast step" if args.fast else ""
    print(
        f"\n{case.label()} {args.mode}{fast}: {wall:.3f} s/step under the profiler ({steps} steps)"
    )
    print(f"{'part':45} {'calls':>6} {'CPU ms/step':>12}")
    for r in parts:
        print(f"{r['part']:45} {r['calls_per_step']:6.1f} {r['cpu_ms_per_step']:12.1f}")
    print(f"\n{'op (top by self CPU)':45} {'calls':>6} {'self ms/step':>12} {'total ms':>10}")
    for r in ops:
        width = 160 if args.shapes else 45
        print(
            f"{r['op'][:width]:45} {r['calls_per_step']:6.0f} "
            f"{r['self_cpu_ms_per_step']:12.1f} {r['cpu_ms_per_step']:10.1f}"
        )
    logger.info("threads=%d pid=%d", torch.get_num_threads(), os.getpid())
    return result


if __name__ == "__main__":
    main()
