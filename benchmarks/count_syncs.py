"""Host syncs per training step, counted on CPU: a proxy of the GPU's ``cudaStreamSynchronize``.

On a GPU, an op whose result the host must read (``.item()``, ``bool(tensor)``), or whose output
size depends on the data (``nonzero``, boolean-mask indexing, ``torch.unique``,
``masked_select``, NMS), makes the host wait for every queued kernel: the GPU then idles while
Python prepares the next launches. The same ops run on CPU, so ``torch.profiler`` can count them
without a GPU. A step is what detectron2's trainers run (forward, losses to Python floats for
logging, backward, SGD; ``benchmarks.common.TrainStep``), on episodes built before the profiler
starts (synthetic photo episodes at the config's sizes, ``benchmarks.common.train_episode``).

Counted: each *outermost* call of a sync-causing op (``aten::item`` calls
``aten::_local_scalar_dense``; boolean indexing calls ``aten::nonzero``: one sync each), by op
name and by the Python call site that issued it (``--by-site``), and all ``aten::`` ops (every
dispatcher call, nested ones included) as a measure of launch count. Not visible on CPU:
blocking host-to-device copies (``.to(cuda)`` without ``non_blocking``) and ``.tolist()`` /
``.cpu()`` of device tensors.

    python -m benchmarks.count_syncs                       # toy demo config, 5-way, 1 2 4 eps
    python -m benchmarks.count_syncs --episodes 1 8 --by-site
    python -m benchmarks.count_syncs --config-file configs/Base-FSOD-C4.yaml --device cuda \
        --calibrate --amp fp16 --episodes 8 --steps 3   # on a GPU: also CUDA time, real syncs

On CUDA the profile also records the CUDA side: ``cudaStreamSynchronize`` calls (the real
syncs), kernel launches, ``cudaMemcpyAsync`` calls, CUDA time and the top kernels.

Writes ``count_syncs.json`` (or ``--name``) to benchmarks/results/ or --out-dir.
"""

import argparse
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch.profiler import ProfilerActivity, _ExperimentalConfig, profile

from benchmarks.common import REPO, TrainStep, machine_info, save_json, train_episode
from fsod_d2.modeling.batched_rpn import HOST_SYNC_LABEL

logger = logging.getLogger("fsod_d2.benchmarks.count_syncs")

DEFAULT_CONFIG = REPO / "configs" / "demo" / "fsod_toy_base.yaml"
# ops that make the host wait for the device (a value read back, or a data-dependent shape)
SYNC_OPS = frozenset(
    {
        "aten::item",
        "aten::_local_scalar_dense",
        "aten::is_nonzero",
        "aten::nonzero",
        "aten::nonzero_numpy",
        "aten::argwhere",
        "aten::masked_select",
        "aten::unique",
        "aten::_unique",
        "aten::_unique2",
        "aten::unique_dim",
        "aten::unique_consecutive",
        "aten::unique_dim_consecutive",
        "aten::equal",
        "torchvision::nms",
        HOST_SYNC_LABEL,  # explicit host reads (.tolist()) in fsod_d2, marked by a range
    }
)


def build_cfg(
    config_file: str = str(DEFAULT_CONFIG), opts: Sequence[str] = (), device: str = "cpu"
):
    """detectron2 cfg + fsod keys from ``config_file`` and ``opts``, no weights file."""
    from detectron2.config import get_cfg

    from fsod_d2 import add_fsod_config

    cfg = add_fsod_config(get_cfg())
    cfg.merge_from_file(str(config_file))
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", device] + [str(o) for o in opts])
    return cfg


CUDA_RUNTIME = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaLaunchKernel")


def cuda_summary(prof, steps: int, top: int = 10) -> Dict:
    """Per step: CUDA kernel time, runtime calls (syncs, launches, copies), top kernels."""
    names = Counter(e.name for e in prof.events())
    kernels = [
        e
        for e in prof.key_averages()
        if getattr(e, "self_device_time_total", 0) > 0 and not e.key.startswith("aten::")
    ]
    kernels.sort(key=lambda e: -e.self_device_time_total)
    total = sum(e.self_device_time_total for e in kernels)
    return {
        "cuda_ms_per_step": total / 1e3 / steps,
        "runtime_calls_per_step": {
            k: v / steps for k, v in names.items() if k.startswith("cuda") or k in CUDA_RUNTIME
        },
        "top_kernels": [
            {
                "kernel": e.key[:120],
                "ms_per_step": e.self_device_time_total / 1e3 / steps,
                "calls_per_step": e.count / steps,
            }  # fmt: skip
            for e in kernels[:top]
        ],
    }


def _site(event) -> str:
    """The innermost Python frame of an event's stack outside torch (the issuing call site)."""
    for frame in getattr(event, "stack", None) or []:
        if not frame.startswith("torch/") and "built-in" not in frame:
            return frame.split(": ")[0]
    return "?"


def count_events(events) -> Dict:
    """Outermost sync-causing ops (by name and call site) and all aten ops in profiler events."""
    syncs, sites, aten = Counter(), Counter(), 0
    for e in events:
        if e.name.startswith("aten::"):
            aten += 1
        if e.name not in SYNC_OPS:
            continue
        parent, nested = e.cpu_parent, False
        while parent is not None:
            if parent.name in SYNC_OPS:
                nested = True
                break
            parent = parent.cpu_parent
        if not nested:
            syncs[e.name] += 1
            sites[_site(e)] += 1
    return {"syncs": sum(syncs.values()), "aten_ops": aten, "by_op": syncs, "by_site": sites}


def count_step(
    step: TrainStep, batch: List[Dict], *, with_stack: bool = False, steps: int = 1
) -> Dict:
    """Counts per training step over ``steps`` steps on ``batch`` (after warm-up steps)."""
    # verbose: Python frames on the events, for the call sites
    extra = {"experimental_config": _ExperimentalConfig(verbose=True)} if with_stack else {}
    activities = [ProfilerActivity.CPU]
    cuda = step.device.type == "cuda"
    if cuda:
        activities.append(ProfilerActivity.CUDA)
    start = time.perf_counter()
    with profile(activities=activities, with_stack=with_stack, **extra) as prof:
        for _ in range(steps):
            step(batch)
    wall = (time.perf_counter() - start) / steps
    counts = count_events(prof.events())
    for key in ("syncs", "aten_ops"):
        counts[key] = counts[key] / steps
    counts["wall_ms_per_step"] = wall * 1e3
    if cuda:
        counts["cuda"] = cuda_summary(prof, steps)
    return counts


def measure(
    cfg,
    episodes: Sequence[int] = (1, 2, 4),
    *,
    warmup: int = 1,
    by_site: bool = False,
    seed: int = 0,
    steps: int = 1,
    calibrate: bool = False,
    amp: str = "off",
) -> List[Dict]:
    """Per batch size (episodes per step): syncs and aten ops per profiled step. ``calibrate``:
    FrozenBN statistics from a photo (random R-50 weights stay sane); ``amp``: off, fp16, bf16."""
    from detectron2.modeling import build_model

    from benchmarks.common import build_calibrated_model

    torch.manual_seed(seed)
    model = build_calibrated_model(cfg, seed) if calibrate else build_model(cfg)
    model.train()
    step = TrainStep(model, cfg, amp=amp != "off", amp_dtype=amp)
    rows = []
    for b in episodes:
        batches = [[train_episode(cfg, i * b + j) for j in range(b)] for i in range(warmup + 1)]
        for batch in batches[:warmup]:
            step(batch)
        torch.manual_seed(seed)
        counts = count_step(step, batches[-1], with_stack=by_site, steps=steps)
        rows.append(
            {
                "episodes": b,
                "syncs": counts["syncs"],
                "aten_ops": counts["aten_ops"],
                "wall_ms_per_step": counts["wall_ms_per_step"],
                "by_op": {k: v / steps for k, v in counts["by_op"].most_common()},
                "by_site": {k: v / steps for k, v in counts["by_site"].most_common()}
                if by_site
                else {},
                "losses": step.last_losses,
                **({"cuda": counts["cuda"]} if "cuda" in counts else {}),
            }
        )
        logger.info(
            "%d episodes/step: %d syncs, %d aten ops", b, rows[-1]["syncs"], counts["aten_ops"]
        )
    return rows


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", default=str(DEFAULT_CONFIG))
    parser.add_argument("--n-way", type=int, default=5, help="FSOD.N_WAY")
    parser.add_argument("--episodes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--by-site", action="store_true", help="also count by Python call site")
    parser.add_argument("--steps", type=int, default=1, help="profiled steps (counts per step)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--calibrate", action="store_true", help="FrozenBN stats from a photo")
    parser.add_argument("--amp", default="off", choices=["off", "fp16", "bf16"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="count_syncs", help="JSON file name (no extension)")
    parser.add_argument("--out-dir", default=None)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    cfg = build_cfg(args.config_file, ["FSOD.N_WAY", args.n_way, *args.opts], args.device)
    rows = measure(
        cfg,
        args.episodes,
        warmup=args.warmup,
        by_site=args.by_site,
        steps=args.steps,
        calibrate=args.calibrate,
        amp=args.amp,
    )
    result = {
        "machine": machine_info(),
        "config_file": str(Path(args.config_file).resolve().relative_to(REPO))
        if Path(args.config_file).resolve().is_relative_to(REPO)
        else args.config_file,
        "n_way": args.n_way,
        "k_shot": cfg.FSOD.K_SHOT,
        "opts": args.opts,
        "device": args.device,
        "amp": args.amp,
        "rows": rows,
        "growth_syncs": rows[-1]["syncs"] - rows[0]["syncs"],
    }
    save_json(args.name, result, args.out_dir)
    print(f"\n{'episodes/step':>13} {'syncs':>6} {'aten ops':>9}  top sync ops")
    for r in rows:
        top = ", ".join(f"{k.replace('aten::', '')} {v:g}" for k, v in list(r["by_op"].items())[:5])
        print(f"{r['episodes']:13d} {r['syncs']:6g} {r['aten_ops']:9g}  {top}")
        for site, n in list(r["by_site"].items())[:15]:
            print(f"{'':31}{n:5g}  {site}")
        if "cuda" in r:
            c = r["cuda"]
            calls = c["runtime_calls_per_step"]
            print(
                f"{'':15}CUDA {c['cuda_ms_per_step']:.1f} ms in {r['wall_ms_per_step']:.1f} ms "
                f"wall per step; cudaStreamSynchronize {calls.get('cudaStreamSynchronize', 0):g}, "
                f"launches {calls.get('cudaLaunchKernel', 0):g}, "
                f"cudaMemcpyAsync {calls.get('cudaMemcpyAsync', 0):g}"
            )
            for k in c["top_kernels"][:6]:
                print(
                    f"{'':15}{k['ms_per_step']:7.2f} ms "
                    f"{k['calls_per_step']:5g}x {k['kernel'][:70]}"
                )
    return result


if __name__ == "__main__":
    main()
