"""Training throughput and memory of FsodRCNN: episodes/min, images/s, peak memory.

One *episode* is one query image plus its N*K support crops; images/s counts both. A step is
what detectron2's trainers run per iteration (forward, backward, SGD with momentum) on
pre-built synthetic episodes (a photo query with random boxes, photo support crops; see
``benchmarks.common.train_episode``), so data loading is excluded (benchmarks/
loader_throughput.py measures that). Weights are random, FrozenBN calibrated so activations
and proposals are sane.

Cases form a star around the *headline* (first --ways-shots, last --support-sizes: 5-way 3-shot,
384 px supports) of each config:

* every --ways-shots x --support-sizes combination, 1 process, first --rpn conditioning;
* the headline with the other --rpn conditionings, with more --procs (DDP: GLOO on CPU, NCCL on
  GPUs; the CPU cores are split between the processes), with more --ims-per-batch;
* AMP on/off for each of those when CUDA is present (--amp);
* at the headline, in one process, timed interleaved so that all see the same machine load, the
  same weights (state_dict copied, fingerprint checked) as: ``batched`` (the model as
  configured), ``per_class`` (MODEL.FSOD.PER_CLASS_REFERENCE: each class's RPN, ROI sampling
  and relation run separately, FewX-style) -> ``per_class_over_batched``, and
  ``batched_fast`` (channels-last + fused SGD, see benchmarks/CHANGELOG.md) -> ``fast_speedup``;
* --sweeps: N-way, K-shot and support size varied one at a time around the headline (plots).

Steps: --warmup (CPU 1, GPU 3), then --iters timed (CPU 3, GPU 10), more on one process until
--min-seconds are timed. CPU: one torch thread per process unless --threads says otherwise (on a
shared VM more threads made every step slower, see benchmarks/README.md).

Memory: on CUDA ``torch.cuda.max_memory_allocated`` per step; on CPU the RSS peak sampled during
the timed steps, plus each process's lifetime peak (ru_maxrss). On CPU every case runs in fresh
processes so that lifetime peaks do not leak between cases.

    python -m benchmarks.train_throughput                    # CPU default, ~20 min on 2 cores
    python -m benchmarks.train_throughput --configs tiny     # tiny config + sweeps, ~5 min
    python -m benchmarks.train_throughput --quick            # smoke test, ~30 s

Results (printed table + JSON, rewritten after every case) go to benchmarks/results/ or
--out-dir / $FSOD_BENCH_OUT; plots to train_throughput.png beside the JSON.
"""

import argparse
import contextlib
import json
import logging
import os
import socket
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

from benchmarks.common import (
    RESULTS,
    PeakRSS,
    TrainStep,
    build_calibrated_model,
    load_cfg,
    machine_info,
    max_rss_mb,
    save_json,
    sync,
    train_episode,
)

logger = logging.getLogger("fsod_d2.benchmarks.train_throughput")

# model formulations; "<mode>_fast" runs that model with TrainStep(fast=True) in the same process
# "batched_unfolded": the batched model without MODEL.FSOD.FOLD_FROZEN_BN (before/after)
MODES = ("batched", "per_class", "batched_fast", "per_class_fast", "batched_unfolded")


@dataclass(frozen=True)
class Case:
    """One measured setting; ``modes`` share one process (and weights) and are interleaved."""

    config: str
    n_way: int
    k_shot: int
    support_size: int
    rpn: str = "early"
    procs: int = 1
    amp: bool = False
    ims_per_batch: int = 1
    fast: bool = False  # every mode with the fast step (channels-last + fused SGD)
    modes: Tuple[str, ...] = ("batched",)
    # a sweep point measured on its own, where the star has these settings only in a process
    # shared with other modes (whose memory and interleaving would skew the sweep)
    sweep: bool = False

    def key(self) -> tuple:
        return (self.config, self.n_way, self.k_shot, self.support_size, self.rpn, self.procs,
                self.amp, self.ims_per_batch, self.fast, self.sweep)  # fmt: skip

    def label(self) -> str:
        amp = " amp" if self.amp else ""
        fast = " fast" if self.fast else ""
        sweep = " (sweep)" if self.sweep else ""
        return (
            f"{self.config} {self.n_way}w{self.k_shot}s S{self.support_size} {self.rpn}-RPN "
            f"{self.procs}p B{self.ims_per_batch}{amp}{fast}{sweep}"
        )


# ---------------------------------------------------------------------------- one process
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _case_cfg(case: Case, settings: Dict, per_class: bool = False, fold: bool = True):
    opts = ["MODEL.DEVICE", settings["device"], "FSOD.N_WAY", case.n_way]
    opts += ["MODEL.FSOD.FOLD_FROZEN_BN", fold]
    opts += ["FSOD.K_SHOT", case.k_shot, "FSOD.SUPPORT.SIZE", case.support_size]
    opts += ["MODEL.FSOD.RPN_CONDITIONING", case.rpn, "MODEL.FSOD.PER_CLASS_REFERENCE", per_class]
    return load_cfg(case.config, *opts)


def build_models(case: Case, settings: Dict) -> Dict[str, torch.nn.Module]:
    """One model per mode, in train mode, all with the same weights: ``batched`` (calibrated
    random weights, seeded); ``per_class`` (MODEL.FSOD.PER_CLASS_REFERENCE) built from its own
    config with the batched model's state_dict; ``*_fast`` copies (the fast step changes the
    memory format in place). Raises if any fingerprint differs."""
    from detectron2.modeling import build_model

    from fsod_d2.modeling.support import weights_fingerprint

    batched = build_calibrated_model(_case_cfg(case, settings), seed=settings["seed"])
    state, reference = batched.state_dict(), weights_fingerprint(batched)
    models = {}
    for mode in case.modes:
        if mode == "batched":
            model = batched
        else:
            per_class, fold = mode.startswith("per_class"), not mode.endswith("_unfolded")
            model = build_model(_case_cfg(case, settings, per_class=per_class, fold=fold))
            model.load_state_dict(state)
        if weights_fingerprint(model) != reference:
            raise RuntimeError(f"{mode} model does not have the batched model's weights")
        models[mode] = model.train()
    return models


def episodes(case: Case, settings: Dict, rank: int) -> List[List[Dict]]:
    """Two distinct batches of ``ims_per_batch`` episodes per rank, cycled through the steps."""
    cfg = _case_cfg(case, settings)
    base = rank * 1000
    return [
        [
            train_episode(cfg, base + b * case.ims_per_batch + i, query_size=settings["query_size"])
            for i in range(case.ims_per_batch)
        ]
        for b in range(2)
    ]


def run_rank(rank: int, case: Case, settings: Dict, port: int = 0) -> Dict:
    """Build, warm up and time ``case`` in this process (rank ``rank`` of ``case.procs``)."""
    device = torch.device(settings["device"])
    if device.type == "cpu":
        torch.set_num_threads(settings["threads_per_proc"])
    if case.procs > 1:
        import torch.distributed as dist

        if device.type == "cuda":
            torch.cuda.set_device(rank)
            device = torch.device("cuda", rank)
            settings = dict(settings, device=str(device))
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=case.procs,
        )
    models = build_models(case, settings)
    from fsod_d2.modeling.support import weights_fingerprint

    fingerprint = weights_fingerprint(next(iter(models.values())))[:12]
    fast = {m: case.fast or m.endswith("_fast") for m in models}
    for m, model in models.items():
        if fast[m]:  # before DDP builds its gradient buckets (TrainStep(fast) would do it too)
            model.to(memory_format=torch.channels_last)
    if case.procs > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        # as detectron2's create_ddp_model; the newer spelling does not exist in older torch
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*deprecated")
        models = {
            m: DistributedDataParallel(
                model, device_ids=ids, broadcast_buffers=False, find_unused_parameters=False
            )
            for m, model in models.items()
        }
    cfg = _case_cfg(case, settings)
    steps = {
        m: TrainStep(
            model,
            cfg,
            amp=case.amp,
            amp_dtype=settings["amp_dtype"],
            fast=fast[m],
        )
        for m, model in models.items()
    }
    batches = episodes(case, settings, rank)
    for i in range(settings["warmup"]):
        for step in steps.values():
            step(batches[i % len(batches)])
    out = {m: {"wall_s": [], "cpu_s": [], "peak_mb": 0.0, "extra_mb": 0.0} for m in steps}
    i, first = 0, next(iter(out.values()))
    # at least `iters` steps; on one process more (up to 4x) until `min_seconds` of the first
    # mode were timed, so that fast settings average over more than a scheduling hiccup
    while i < settings["iters"] or (
        case.procs == 1
        and sum(first["wall_s"]) < settings["min_seconds"]
        and i < 4 * settings["iters"]
    ):
        i += 1
        for m, step in steps.items():  # interleaved: every mode sees the same machine load
            batch = batches[(settings["warmup"] + i) % len(batches)]
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                start_mb = torch.cuda.memory_allocated(device) / 2**20
            sync(device)
            with PeakRSS() if device.type == "cpu" else contextlib.nullcontext() as rss:
                t, c = time.perf_counter(), time.process_time()
                step(batch)
                wall, cpu = time.perf_counter() - t, time.process_time() - c
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device) / 2**20
                extra = peak - start_mb
            else:
                peak, extra = rss.peak_mb, rss.peak_mb - rss.start_mb
            r = out[m]
            r["wall_s"].append(wall)
            r["cpu_s"].append(cpu)
            r["peak_mb"], r["extra_mb"] = max(r["peak_mb"], peak), max(r["extra_mb"], extra)
            r["losses"] = step.last_losses
    if case.procs > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    query_hw = list(batches[0][0]["image"].shape[1:])
    return {"modes": out, "max_rss_mb": max_rss_mb(), "fingerprint": fingerprint,
            "query_hw": query_hw}  # fmt: skip


def _rank_entry(rank: int, case: Case, settings: Dict, port: int, queue) -> None:
    try:
        queue.put((rank, run_rank(rank, case, settings, port), None))
    except BaseException:  # report, do not hang the parent
        queue.put((rank, None, traceback.format_exc()))


def run_case(case: Case, settings: Dict) -> Dict:
    """Run ``case`` (spawning ``case.procs`` fresh processes when isolated) and summarise."""
    start, load = time.perf_counter(), _loadavg()
    isolate = settings["isolate"] or case.procs > 1
    if isolate:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        queue, port = ctx.Queue(), _free_port()
        procs = [
            ctx.Process(target=_rank_entry, args=(r, case, settings, port, queue))
            for r in range(case.procs)
        ]
        for p in procs:
            p.start()
        results, errors = {}, []
        while len(results) + len(errors) < case.procs:
            try:
                rank, res, err = queue.get(timeout=5)
            except Exception:  # queue.Empty: check that the ranks are alive
                if any(p.exitcode not in (None, 0) for p in procs):
                    errors.append(f"a rank died: exit codes {[p.exitcode for p in procs]}")
                    break
                continue
            if err:
                errors.append(f"rank {rank}:\n{err}")
            else:
                results[rank] = res
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
        if errors:
            raise RuntimeError(f"{case.label()} failed:\n" + "\n".join(errors))
        ranks = [results[r] for r in range(case.procs)]
    else:
        ranks = [run_rank(0, case, settings)]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    res = summarise(case, settings, ranks, time.perf_counter() - start)
    # the machine may be shared: record how busy it was (1-minute load, before and after)
    res["loadavg_1m_before_after"] = [load, _loadavg()]
    return res


def _loadavg() -> float:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else float("nan")


def summarise(case: Case, settings: Dict, ranks: List[Dict], seconds: float) -> Dict:
    images_per_episode = 1 + case.n_way * case.k_shot
    episodes_per_step = case.procs * case.ims_per_batch
    res = {
        **asdict(case),
        "device": settings["device"],
        "threads_per_proc": settings["threads_per_proc"] if settings["device"] == "cpu" else None,
        "query_hw": ranks[0]["query_hw"],
        "images_per_episode": images_per_episode,
        "episodes_per_step": episodes_per_step,
        "warmup": settings["warmup"],
        "iters": len(ranks[0]["modes"][case.modes[0]]["wall_s"]),
        "weights_fingerprint": ranks[0]["fingerprint"],
        "proc_max_rss_mb": [round(r["max_rss_mb"]) for r in ranks],
        "case_seconds": round(seconds, 1),
        "modes": {},
    }
    mem_kind = "cuda_max_allocated" if settings["device"].startswith("cuda") else "rss_step_peak"
    for m in case.modes:
        # a DDP step ends when the slowest rank does: per step, the max over ranks
        wall = np.max([r["modes"][m]["wall_s"] for r in ranks], axis=0)
        cpu = np.max([r["modes"][m]["cpu_s"] for r in ranks], axis=0)
        step = float(np.median(wall))
        res["modes"][m] = {
            "step_s": step,
            "step_s_all": [round(float(t), 4) for t in wall],
            "cpu_s_per_step": float(np.median(cpu)),
            "episodes_per_min": episodes_per_step * 60.0 / step,
            "images_per_s": episodes_per_step * images_per_episode / step,
            "memory_kind": mem_kind,
            "peak_memory_mb": round(max(r["modes"][m]["peak_mb"] for r in ranks)),
            "step_extra_memory_mb": round(max(r["modes"][m]["extra_mb"] for r in ranks)),
            "losses": ranks[0]["modes"][m].get("losses", {}),
        }
    if {"batched", "per_class"} <= set(case.modes):
        b, p = res["modes"]["batched"], res["modes"]["per_class"]
        res["same_weights"] = True  # build_models raises otherwise
        res["per_class_over_batched"] = p["step_s"] / b["step_s"]
        res["per_class_over_batched_cpu_time"] = p["cpu_s_per_step"] / b["cpu_s_per_step"]
    if {"batched", "batched_fast"} <= set(case.modes):
        b, f = res["modes"]["batched"], res["modes"]["batched_fast"]
        res["fast_speedup"] = b["step_s"] / f["step_s"]
        res["fast_speedup_cpu_time"] = b["cpu_s_per_step"] / f["cpu_s_per_step"]
    if {"batched", "batched_unfolded"} <= set(case.modes):
        b, u = res["modes"]["batched"], res["modes"]["batched_unfolded"]
        res["fold_speedup"] = u["step_s"] / b["step_s"]
        res["fold_speedup_cpu_time"] = u["cpu_s_per_step"] / b["cpu_s_per_step"]
    return res


# ---------------------------------------------------------------------------- plan
def plan(args) -> Tuple[List[Case], Dict[str, Dict[str, List[tuple]]], set]:
    """The star of cases (see module docstring), per swept config the keys of each sweep, and
    the keys of the star itself (sweep points may coincide with them)."""
    amps = {"off": [False], "on": [True], "both": [False, True]}[args.amp]
    ways_shots = [tuple(int(v) for v in ws.lower().split("x")) for ws in args.ways_shots]
    head_n, head_k = ways_shots[0]
    head_s = args.support_sizes[-1]
    cases: Dict[tuple, Case] = {}

    def add(case: Case) -> Case:
        old = cases.get(case.key())
        if old is not None:  # merge the modes of identical settings
            case = replace(old, modes=tuple(m for m in MODES if m in old.modes + case.modes))
        cases[case.key()] = case
        return case

    ref_modes = ("batched", "per_class") if args.reference != "none" else ("batched",)
    head_modes = ref_modes + (("batched_fast",) if args.fast == "compare" else ())
    head_modes += ("batched_unfolded",) if args.unfolded else ()
    fast = args.fast == "on"
    for config in args.configs:
        head = Case(config, head_n, head_k, head_s, args.rpn[0], 1, amps[0], args.ims_per_batch[0],
                    fast)  # fmt: skip
        for amp in amps:  # first, so that a --time-budget keeps them
            add(replace(head, amp=amp, modes=head_modes))
        for n, k in ways_shots:
            for s in args.support_sizes:
                for amp in amps:
                    is_head = (n, k, s) == (head_n, head_k, head_s)
                    modes = head_modes if is_head else ("batched",)
                    modes = ref_modes if args.reference == "all" and not is_head else modes
                    add(replace(head, n_way=n, k_shot=k, support_size=s, amp=amp, modes=modes))
        for rpn in args.rpn[1:]:
            for amp in amps:
                add(replace(head, rpn=rpn, amp=amp, modes=ref_modes))
        for procs in args.procs:
            if procs > 1:
                add(replace(head, procs=procs))
        for ims in args.ims_per_batch[1:]:
            for amp in amps:
                add(replace(head, ims_per_batch=ims, amp=amp))
    star, sweeps = set(cases), {}

    def point(case: Case) -> tuple:
        old = cases.get(case.key())
        if old is not None and old.modes != ("batched",):
            case = replace(case, sweep=True)
        return add(case).key()

    for config in args.sweeps:
        base = Case(config, head_n, head_k, head_s, args.rpn[0], 1, amps[-1], args.ims_per_batch[0],
                    fast)  # fmt: skip
        sweeps[config] = {
            "n_way": [point(replace(base, n_way=n)) for n in args.sweep_ways],
            "k_shot": [point(replace(base, k_shot=k)) for k in args.sweep_shots],
            "support_size": [point(replace(base, support_size=s)) for s in args.sweep_sizes],
        }
    return list(cases.values()), sweeps, star


# ---------------------------------------------------------------------------- report
def table(results: List[Dict]) -> str:
    """One line per (case, mode); ``vs batched``: per_class step time / batched step time
    (the loop's slowdown), batched_fast: batched step time / fast step time (the speed-up),
    batched_unfolded: its step time / batched step time (what FrozenBN folding saves)."""
    head = (f"{'config':7} {'NxK':>5} {'S':>4} {'rpn':5} {'P':>1} {'B':>2} {'amp':3} "
            f"{'mode':16} {'step s':>8} {'cpu s':>7} {'ep/min':>8} {'img/s':>7} {'mem MB':>7} "
            f"{'vs batched':>10}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in results:
        for m, v in r["modes"].items():
            ratio = {"per_class": r.get("per_class_over_batched"),
                     "batched_fast": r.get("fast_speedup"),
                     "batched_unfolded": r.get("fold_speedup")}.get(m)  # fmt: skip
            mode = m + (" (fast)" if r["fast"] else "")
            lines.append(
                f"{r['config']:7} {r['n_way']:>2}x{r['k_shot']:<2} {r['support_size']:>4} "
                f"{r['rpn']:5} {r['procs']:>1} {r['ims_per_batch']:>2} "
                f"{'on' if r['amp'] else 'off':3} {mode:16} {v['step_s']:8.3f} "
                f"{v['cpu_s_per_step']:7.2f} {v['episodes_per_min']:8.1f} "
                f"{v['images_per_s']:7.1f} {v['peak_memory_mb']:7d} "
                f"{f'{ratio:.2f}x' if ratio else '':>10}"
            )
    return "\n".join(lines)


def _defaults(args, device: str) -> None:
    cuda = device.startswith("cuda")
    if args.amp == "auto":
        args.amp = "both" if cuda else "off"
    if args.sweeps is None:
        args.sweeps = ["tiny"] if not cuda else list(args.configs)
    if args.isolate == "auto":
        args.isolate = "never" if cuda else "always"


def _iters(args, config: str, cuda: bool) -> Tuple[int, int]:
    """(warmup, timed) steps: few on CPU for R-50-C4, where one step takes tens of seconds."""
    warmup, iters = (3, 10) if cuda else (1, 3)
    return (
        warmup if args.warmup is None else args.warmup,
        iters if args.iters is None else args.iters,
    )


def sweep_points(sweeps: Dict, by_key: Dict[tuple, Dict]) -> Dict:
    """Per swept config: ``base`` (the settings held fixed) and, per dimension, the measured
    points (batched mode) in sweep order."""
    out = {}
    for config, dims in sweeps.items():
        out[config] = {}
        for dim, keys in dims.items():
            points = []
            for k in keys:
                if k not in by_key:
                    continue
                r = by_key[k]
                v = r["modes"]["batched"]
                fixed = ("n_way", "k_shot", "support_size", "rpn", "amp", "fast", "device")
                out[config]["base"] = {f: r[f] for f in fixed}
                points.append(
                    {
                        "x": r[dim],
                        "step_s": v["step_s"],
                        "episodes_per_min": v["episodes_per_min"],
                        "images_per_s": v["images_per_s"],
                        "peak_memory_mb": v["peak_memory_mb"],
                        "step_extra_memory_mb": v["step_extra_memory_mb"],
                        "proc_max_rss_mb": max(r["proc_max_rss_mb"]),
                    }
                )
            out[config][dim] = points
    return out


def load_results(out_dir=None) -> Dict:
    """The train_throughput.json in ``out_dir`` (or $FSOD_BENCH_OUT / benchmarks/results), or {}."""
    path = Path(out_dir or os.environ.get("FSOD_BENCH_OUT", RESULTS)) / "train_throughput.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "R50-C4"], help="tiny, R50-C4")
    parser.add_argument("--ways-shots", nargs="+", default=["5x3", "5x4"], help="NxK; 1st: head")
    parser.add_argument("--support-sizes", nargs="+", type=int, default=[320, 384])
    parser.add_argument("--rpn", nargs="+", default=["early", "late"], choices=["early", "late"])
    parser.add_argument("--procs", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--ims-per-batch", nargs="+", type=int, default=[1], help="per process")
    parser.add_argument("--amp", default="auto", choices=["auto", "off", "on", "both"])
    parser.add_argument("--amp-dtype", default="fp16", choices=["fp16", "bf16"])
    parser.add_argument(
        "--fast", default="compare", choices=["off", "compare", "on"],
        help="fast step (channels-last + fused SGD): compare = also at the headline; on = always",
    )  # fmt: skip
    parser.add_argument(
        "--reference", default="headline", choices=["headline", "all", "none"],
        help="where the per-class loop runs beside the batched model",
    )  # fmt: skip
    parser.add_argument(
        "--unfolded", action="store_true",
        help="also time the headline without MODEL.FSOD.FOLD_FROZEN_BN (its before/after)",
    )  # fmt: skip
    parser.add_argument("--sweeps", nargs="*", default=None, help="configs to sweep (CPU: tiny)")
    parser.add_argument("--sweep-ways", nargs="+", type=int, default=[1, 2, 3, 5, 8, 10])
    parser.add_argument("--sweep-shots", nargs="+", type=int, default=[1, 2, 3, 5, 10])
    parser.add_argument("--sweep-sizes", nargs="+", type=int, default=[128, 192, 256, 320, 384])
    parser.add_argument("--query-size", type=int, default=None, help="default: max MIN_SIZE_TRAIN")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--iters", type=int, default=None, help="timed steps (default by config)")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="1 process: time more")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="CPU threads of each process (default 1; 0: all cores split between processes)",
    )  # fmt: skip
    parser.add_argument("--isolate", default="auto", choices=["auto", "always", "never"])
    parser.add_argument("--time-budget", type=float, default=None, help="seconds; skip the rest")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=None)
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--append", action="store_true",
        help="keep the results of other configs from the JSON already in the output folder",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true",
        help="smoke run: tiny config, 5x3 at 64 px, 1 and 2 processes, reference, 1+2 steps",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.configs, args.ways_shots, args.support_sizes = ["tiny"], ["5x3"], [64]
        args.rpn, args.warmup, args.iters, args.min_seconds = ["early"], 1, 2, 0.0
        args.sweeps = [] if args.sweeps is None else args.sweeps
        args.query_size = args.query_size or 128
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    _defaults(args, args.device)
    cuda = args.device.startswith("cuda")
    cases, sweeps, star = plan(args)
    # one thread per process unless asked: on a shared VM, multi-threaded small ops stall at
    # OpenMP barriers (2 threads were 1.8x-100x slower than 1 on a 2-vCPU VM; benchmarks/README.md)
    cores = os.cpu_count() or 1
    results = {"machine": machine_info(), "args": vars(args), "cases": [], "sweeps": {}}
    kept_sweeps = {}
    if args.append:  # keep the other configs' results of an earlier run in the same JSON
        prior = load_results(args.out_dir)
        if prior:
            results["cases"] = [c for c in prior["cases"] if c["config"] not in args.configs]
            kept_sweeps = {c: v for c, v in prior["sweeps"].items() if c not in args.sweeps}
            results["sweeps"] = dict(kept_sweeps)
            results["earlier_runs"] = prior.get("earlier_runs", []) + [
                {k: prior[k] for k in ("machine", "args", "total_seconds") if k in prior}
            ]
    logger.info("%d cases on %s", len(cases), args.device)
    start, by_key = time.perf_counter(), {}
    for i, case in enumerate(cases):
        if args.time_budget and time.perf_counter() - start > args.time_budget:
            results.setdefault("skipped", []).append(case.label())
            logger.warning("time budget spent: skipping %s", case.label())
            continue
        warmup, iters = _iters(args, case.config, cuda)
        settings = {
            "device": args.device,
            "threads_per_proc": max(1, cores // case.procs)
            if args.threads == 0
            else (args.threads or 1),
            "amp_dtype": args.amp_dtype,
            "warmup": warmup,
            "iters": iters,
            "min_seconds": args.min_seconds,
            "seed": args.seed,
            "query_size": args.query_size,
            "isolate": args.isolate == "always",
        }
        logger.info("[%d/%d] %s modes=%s", i + 1, len(cases), case.label(), case.modes)
        try:
            res = run_case(case, settings)
        except Exception as e:  # keep going: one failing setting must not lose the others
            logger.error("%s failed: %s", case.label(), e)
            results.setdefault("failed", []).append({"case": case.label(), "error": str(e)})
            continue
        res["in_star"] = case.key() in star  # False: a sweep point only
        by_key[case.key()] = res
        results["cases"].append(res)
        logger.info(
            "%s: %s",
            case.label(),
            {m: f"{v['step_s']:.3f}s {v['episodes_per_min']:.1f} ep/min" for m, v in
             res["modes"].items()},
        )  # fmt: skip
        results["sweeps"] = {**kept_sweeps, **sweep_points(sweeps, by_key)}
        path = save_json("train_throughput", results, args.out_dir)  # after every case
    results["total_seconds"] = round(time.perf_counter() - start, 1)
    path = save_json("train_throughput", results, args.out_dir)
    print(table(results["cases"]))
    if not args.no_plot and results["sweeps"]:
        from benchmarks.plots import plot_train_sweeps

        plot_train_sweeps(results, path.with_suffix(".png"))
    return results


if __name__ == "__main__":
    main()
