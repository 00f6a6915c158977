"""PNG plots of the benchmark JSONs; rerun on results fetched from another machine.

    python -m benchmarks.plots [RESULTS_DIR]   # default benchmarks/results (or $FSOD_BENCH_OUT)
    python -m benchmarks.plots --table [DIR]   # Markdown table of train_throughput.json

Writes train_throughput.png from train_throughput.json (throughput and memory vs N-way, K-shot
and support size) and inference_scaling.png from inference_scaling.json, where present.
"""

import json
import os
import sys
from pathlib import Path
from typing import Dict

_DIMS = (("n_way", "N-way"), ("k_shot", "K-shot"), ("support_size", "support size (px)"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_train_sweeps(results: Dict, path: Path) -> None:
    """Two rows (episodes/min; peak memory) x three columns (N, K, support size), one line per
    swept config; fixed settings in each panel's title."""
    plt = _pyplot()
    sweeps = {c: dims for c, dims in results["sweeps"].items() if any(dims.values())}
    if not sweeps:
        return
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for col, (dim, label) in enumerate(_DIMS):
        ax_t, ax_m = axes[0, col], axes[1, col]
        fixed = []
        for config, dims in sweeps.items():
            points = sorted(dims.get(dim, []), key=lambda p: p["x"])
            if not points:
                continue
            c = dims["base"]
            amp = ", AMP" if c["amp"] else ""
            held = {"n_way": f"{c['n_way']}-way", "k_shot": f"{c['k_shot']}-shot",
                    "support_size": f"S={c['support_size']}"}  # fmt: skip
            held.pop(dim)
            fixed.append(f"{config}: {' '.join(held.values())} {c['rpn']}-RPN{amp}")
            xs = [p["x"] for p in points]
            ax_t.plot(xs, [p["episodes_per_min"] for p in points], "o-", label=config)
            mem = "GPU max allocated" if c["device"].startswith("cuda") else "RSS peak in step"
            ax_m.plot(xs, [p["peak_memory_mb"] for p in points], "o-", label=f"{config}: {mem}")
            if not c["device"].startswith("cuda"):
                ax_m.plot(
                    xs,
                    [p["proc_max_rss_mb"] for p in points],
                    "s--",
                    alpha=0.6,
                    label=f"{config}: process max RSS",
                )
        ax_t.set(xlabel=label, ylabel="episodes / min", yscale="log")
        ax_t.set_title(f"throughput vs {label}\n" + "; ".join(fixed), fontsize=9)
        ax_m.set(xlabel=label, ylabel="MiB", ylim=(0, None))
        ax_m.set_title(f"peak memory vs {label}", fontsize=9)
        ax_t.legend(fontsize=8)
        ax_m.legend(fontsize=8)
    machine = results.get("machine", {})
    where = machine.get("gpu") or machine.get("cpu_model", machine.get("processor", ""))
    fig.suptitle(f"FsodRCNN training step (batched), {where}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def markdown_table(results: Dict) -> str:
    """The non-sweep cases of a train_throughput.json as a Markdown table (benchmarks/README)."""
    cuda = any(c["device"].startswith("cuda") for c in results["cases"])
    mem = "GPU max alloc MiB" if cuda else "peak RSS MiB"
    lines = [
        f"| config | N-way x K-shot | support px | RPN | procs | episodes/step | AMP | mode | "
        f"step s (wall) | CPU s/step | episodes/min | images/s | {mem} | vs batched |",
        "|" + " --- |" * 14,
    ]
    for c in results["cases"]:
        if not c.get("in_star", True):
            continue
        for m, v in c["modes"].items():
            ratio = {"per_class": c.get("per_class_over_batched"),
                     "batched_fast": c.get("fast_speedup"),
                     "batched_unfolded": c.get("fold_speedup")}.get(m)  # fmt: skip
            ratio_cpu = {"per_class": c.get("per_class_over_batched_cpu_time"),
                         "batched_fast": c.get("fast_speedup_cpu_time"),
                         "batched_unfolded": c.get("fold_speedup_cpu_time")}.get(m)  # fmt: skip
            # one mode per process: its lifetime peak; several: the RSS peak of its own steps
            memory = v["peak_memory_mb"]
            if not cuda and len(c["modes"]) == 1:
                memory = max(c["proc_max_rss_mb"])
            lines.append(
                f"| {c['config']} | {c['n_way']}x{c['k_shot']} | {c['support_size']} | "
                f"{c['rpn']} | {c['procs']} | {c['episodes_per_step']} | "
                f"{'on' if c['amp'] else 'off'} | {m}{' (fast)' if c['fast'] else ''} | "
                f"{v['step_s']:.3g} | {v['cpu_s_per_step']:.3g} | {v['episodes_per_min']:.3g} | "
                f"{v['images_per_s']:.3g} | {memory} | "
                + (f"{ratio:.2f}x wall, {ratio_cpu:.2f}x CPU |" if ratio else " |")
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    from benchmarks.common import RESULTS

    table = "--table" in argv
    argv = [a for a in argv if a != "--table"]
    root = Path(argv[0] if argv else os.environ.get("FSOD_BENCH_OUT", RESULTS))
    train = root / "train_throughput.json"
    if train.is_file():
        results = json.loads(train.read_text())
        if table:
            print(markdown_table(results))
            return
        plot_train_sweeps(results, train.with_suffix(".png"))
        print(f"wrote {train.with_suffix('.png')}")
    inference = root / "inference_scaling.json"
    if inference.is_file():
        from benchmarks.inference_scaling import plot

        plot(json.loads(inference.read_text()), inference.with_suffix(".png"))
        print(f"wrote {inference.with_suffix('.png')}")


if __name__ == "__main__":
    main()
