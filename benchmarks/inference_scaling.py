"""Inference cost vs number of classes and shots: batched FsodRCNN vs the per-class loop.

For each config (tiny, R-50-C4) and each RPN conditioning (late = our fast path, early = paper),
one model with fixed random weights (FrozenBN calibrated so proposals are realistic) is timed:

* ``batched``: all classes in tensor passes, shared ROIs, patch relation on top-k classes per ROI;
* ``per_class_loop``: the same model and weights, each class's RPN, ROIs and relation run
  separately (FewX-style reference).

Seconds per query image for 1, 5, 20, 80 classes, and for K = 1, 5, 10 shots with cached
prototypes (plus the one-off prototype computation). Writes JSON and a PNG plot.

    python -m benchmarks.inference_scaling                 # everything (~10 min on 2 cores)
    python -m benchmarks.inference_scaling --configs tiny  # quick
"""

import argparse
import logging
import time
from functools import partial
from pathlib import Path

import torch

from benchmarks.common import (
    build_calibrated_model,
    load_cfg,
    machine_info,
    query_image,
    save_json,
    support_set,
    timed,
    timed_interleaved,
)

logger = logging.getLogger("fsod_d2.benchmarks.inference_scaling")


def _prototypes(model, num_classes: int, shots: int, size: int):
    images, boxes = support_set(num_classes, shots, size)
    start = time.perf_counter()
    protos = model.compute_prototypes(images, boxes, list(range(num_classes)))
    return protos, time.perf_counter() - start


def bench_config(name: str, args) -> dict:
    out = {}
    for conditioning in args.conditioning:
        cfg = load_cfg(
            name,
            "MODEL.DEVICE",
            args.device,
            "MODEL.FSOD.RPN_CONDITIONING",
            conditioning,
            "MODEL.FSOD.PATCH_TOPK",
            args.patch_topk,
        )
        model = build_calibrated_model(cfg)
        reference = build_calibrated_model(
            load_cfg(
                name,
                "MODEL.DEVICE",
                args.device,
                "MODEL.FSOD.RPN_CONDITIONING",
                conditioning,
                "MODEL.FSOD.PER_CLASS_REFERENCE",
                True,
            )
        )
        reference.load_state_dict(model.state_dict())  # same weights, calibration included
        size = cfg.FSOD.SUPPORT.SIZE
        query = [{"image": query_image(cfg.INPUT.MIN_SIZE_TEST)}]
        res = {
            "classes": {},
            "shots": {},
            "query_hw": list(query[0]["image"].shape[1:]),
            "support_size": size,
            "patch_topk": args.patch_topk,
        }
        with torch.no_grad():
            for n in args.classes:
                protos, _ = _prototypes(model, n, 1, size)
                model.set_prototypes(protos)
                reference.set_prototypes(protos)
                fns = {"batched": partial(model, query)}
                if n <= args.reference_max_classes:
                    fns["per_class_loop"] = partial(reference, query)
                slow = n >= 20 and len(fns) > 1  # the loop takes minutes per image on CPU at R-50
                row = timed_interleaved(fns, 1 if slow else args.repeats, warmup=0 if slow else 1)
                if "per_class_loop" in row:
                    row["speedup"] = row["per_class_loop"] / row["batched"]
                res["classes"][n] = row
                logger.info("%s %s N=%d %s", name, conditioning, n, row)
            for k in args.shots:
                protos, proto_s = _prototypes(model, args.shots_classes, k, size)
                model.set_prototypes(protos)
                res["shots"][k] = {
                    "batched": timed(partial(model, query), args.repeats),
                    "prototype_seconds_once": proto_s,
                }
                logger.info("%s %s K=%d %s", name, conditioning, k, res["shots"][k])
        c, s = res["classes"], res["shots"]
        lo, hi = min(c), max(c)
        res["ratio_max_over_1_class"] = c[hi]["batched"] / c[lo]["batched"]
        if "per_class_loop" in c[hi]:
            res["reference_ratio_max_over_1_class"] = (
                c[hi]["per_class_loop"] / c[lo]["per_class_loop"]
            )
        res["ratio_K_max_over_K_min"] = s[max(s)]["batched"] / s[min(s)]["batched"]
        out[conditioning] = res
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(results["configs"])
    fig, axes = plt.subplots(1, 2 * len(configs), figsize=(6 * 2 * len(configs), 4.5))
    for i, name in enumerate(configs):
        ax_c, ax_k = axes[2 * i], axes[2 * i + 1]
        for cond, res in results["configs"][name].items():
            ns = sorted(res["classes"], key=int)
            ax_c.plot(
                ns, [res["classes"][n]["batched"] for n in ns], "o-", label=f"batched ({cond} RPN)"
            )
            ref = [n for n in ns if "per_class_loop" in res["classes"][n]]
            ax_c.plot(
                ref,
                [res["classes"][n]["per_class_loop"] for n in ref],
                "s--",
                label=f"per-class loop ({cond} RPN)",
            )
            ks = sorted(res["shots"], key=int)
            ax_k.plot(
                ks,
                [res["shots"][k]["batched"] for k in ks],
                "o-",
                label=f"batched ({cond} RPN), cached prototypes",
            )
        ax_c.set(
            xscale="log",
            yscale="log",
            xlabel="classes",
            ylabel="s / image",
            title=f"{name}: cost vs classes",
        )
        ax_k.set(xlabel="K shots", ylabel="s / image", title=f"{name}: cost vs K", ylim=(0, None))
        ax_c.legend(fontsize=8)
        ax_k.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "R50-C4"])
    parser.add_argument("--conditioning", nargs="+", default=["late", "early"])
    parser.add_argument("--classes", nargs="+", type=int, default=[1, 5, 20, 80])
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 5, 10])
    parser.add_argument("--shots-classes", type=int, default=5, help="classes in the K sweep")
    parser.add_argument("--reference-max-classes", type=int, default=80)
    parser.add_argument("--patch-topk", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results = {"machine": machine_info(), "args": vars(args), "configs": {}}
    for name in args.configs:
        results["configs"][name] = bench_config(name, args)
    path = save_json("inference_scaling", results, args.out_dir)
    plot(results, path.with_suffix(".png"))
    for name, per_cond in results["configs"].items():
        for cond, res in per_cond.items():
            logger.info(
                "%s %s-RPN: t(%d cls)/t(%d cls) = %.2f (loop: %s); t(K=%d)/t(K=%d) = %.3f",
                name,
                cond,
                max(res["classes"]),
                min(res["classes"]),
                res["ratio_max_over_1_class"],
                f"{res.get('reference_ratio_max_over_1_class', float('nan')):.2f}",
                max(res["shots"]),
                min(res["shots"]),
                res["ratio_K_max_over_K_min"],
            )
    return results


if __name__ == "__main__":
    main()
