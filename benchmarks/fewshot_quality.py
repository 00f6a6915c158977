"""Does it transfer? Novel-class AP on a generated few-shot benchmark, with baselines, on CPU.

One command builds (or reuses) a hard generated dataset (40 base + 10 novel procedurally drawn
categories on real photos, strong intra-class variation, occluding clutter), then, in one run:

1. trains FsodRCNN episodically on the base classes only, within a wall-clock budget;
2. evaluates all classes with K-shot supports (K = 1, 5; several seeds of the K-shot draw):
   ``fsod`` (no fine-tuning) and ``fsod_shuffled`` (same model, supports shuffled between
   classes: must collapse toward chance);
3. ``fsod_finetuned``: the episodic model fine-tuned on the K-shot set of every class;
4. ``tfa``: a plain detectron2 Faster R-CNN (same backbone, input sizes and budget) trained on
   the base classes, then its last layer fine-tuned on the K-shot set (TFA-style).

The K-shot draw of a seed (a TFA-style split of the train set) is the only novel-class data any
method sees: supports are drawn from it, and fine-tuning trains on it.

Writes ``fewshot_quality.json`` (nAP, nAP50, bAP, bAP50 per method, K and seed, plus means,
targets and per-term loss curves), a bar chart, the loss curves and a grid of detections on
novel classes. Results and their analysis: benchmarks/README.md, *Few-shot quality*.

    python benchmarks/fewshot_quality.py --budget-min 15          # full run, ~50 min on 2 cores
    python benchmarks/fewshot_quality.py --budget-min 1 --seeds 0 --shots 1 --finetune-iters 5
    python benchmarks/fewshot_quality.py --table                  # Markdown table of the JSON
    python benchmarks/fewshot_quality.py --combine RUN[:METHODS] ... --out-dir DIR  # over trainings
"""

import argparse
import copy
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import List

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import inference_on_dataset
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine_info, save_json  # noqa: E402
from fsod_d2.data import build_support_set, register_fewshot_coco  # noqa: E402
from fsod_d2.data.splits import dump_json, sample_kshot  # noqa: E402
from fsod_d2.data.toy import generate_toy_dataset  # noqa: E402
from fsod_d2.engine.trainer import FsodTrainer, setup_cfg, unwrap_model  # noqa: E402
from fsod_d2.evaluation.fsod_evaluation import FsodCOCOEvaluator  # noqa: E402
from fsod_d2.modeling import PrototypeSet  # noqa: E402

logger = logging.getLogger("fsod_d2.benchmarks.fewshot_quality")
REPO = Path(__file__).resolve().parents[1]
TRAIN, VAL = "fsodq_train", "fsodq_val"


# ------------------------------------------------------------------------------------ data
def prepare_data(args) -> dict:
    root = Path(os.environ.get("DETECTRON2_DATASETS", "datasets")) / "fsod_quality"
    info = generate_toy_dataset(
        root,
        num_base=40,
        num_novel=10,
        num_train=args.num_train,
        num_val=args.num_val,
        difficulty="hard",
        seed=args.data_seed,
    )
    base, novel = info["base_classes"], info["novel_classes"]
    val_json = info["val_json"]
    if args.eval_images:  # evaluate on the first N val images (time budget)
        val = json.loads(Path(val_json).read_text())
        keep = {im["id"] for im in val["images"][: args.eval_images]}
        val["images"] = [im for im in val["images"] if im["id"] in keep]
        val["annotations"] = [a for a in val["annotations"] if a["image_id"] in keep]
        val_json = str(root / "splits" / f"val_first{args.eval_images}.json")
        dump_json(val, val_json)
    for name, path in ((TRAIN, info["train_json"]), (VAL, val_json)):
        register_fewshot_coco(name, path, info["image_root"], base, novel)
    coco = json.loads(Path(info["train_json"]).read_text())
    for k in args.shots:
        for seed in args.seeds:
            path = root / "splits" / f"train_{k}shot_seed{seed}.json"
            if not path.exists():
                dump_json(sample_kshot(coco, k, seed, source=info["train_json"]), str(path))
            register_fewshot_coco(kshot_name(k, seed), path, info["image_root"], base, novel)
    return info


def kshot_name(k: int, seed: int) -> str:
    return f"{TRAIN}_{k}shot_seed{seed}"


# ------------------------------------------------------------------------------- training
def _median_step_seconds(trainer) -> float:
    hist = trainer.storage.history("time").values()
    times = [t for t, _ in hist][3:] or [t for t, _ in hist]
    return float(np.median(times))


def scaled_for_world_size(cfg):
    """``cfg`` with SOLVER.REFERENCE_WORLD_SIZE scaling applied now (batch, LR, schedule), so
    that iteration counts and LRs set afterwards are the ones that run."""
    cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
    cfg.defrost()
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 0
    return cfg


def train_within_budget(trainer_cls, cfg, budget_s: float, calib_iters: int = 15, phases: int = 3):
    """Train a fresh model for ``budget_s`` of wall clock; returns (trainers, iterations,
    seconds), one trainer per phase.

    A timing of the first steps gives the first plan. A step's cost drifts as the model learns
    (the timing was 14 % fast for FsodRCNN and 11 % slow for Faster R-CNN in one run), so the
    training runs in ``phases`` stretches: after each, the iteration count is planned again from
    the rate of the last stretch (model and loader builds included), and the next stretch
    resumes from its checkpoint with the new SOLVER.MAX_ITER. LR steps at 80 % and 95 % of the
    latest plan. A loader that cannot resume mid-stream (no ``start_iter``, e.g. detectron2's
    default) gets a new SEED per stretch instead, so no stretch repeats an earlier data order.
    """
    cfg = scaled_for_world_size(cfg)
    calib = cfg.clone()
    calib.SOLVER.MAX_ITER = calib_iters
    calib.SOLVER.CHECKPOINT_PERIOD = 10**9
    calib.OUTPUT_DIR = os.path.join(cfg.OUTPUT_DIR, "calibration")
    trainer = trainer_cls(calib)
    trainer.resume_or_load(resume=False)
    trainer.train()
    rate = _median_step_seconds(trainer)
    start = time.perf_counter()
    done, trainers = 0, []
    for phase in range(phases):
        remaining = budget_s - (time.perf_counter() - start)
        total = max(done + int(remaining / rate), done + 1, calib_iters)
        end = total if phase == phases - 1 else done + max((total - done) // (phases - phase), 1)
        logger.info(
            "%s: %.3f s/iter -> %d iterations in %.1f min; stretch %d/%d to iteration %d",
            trainer_cls.__name__, rate, total, budget_s / 60, phase + 1, phases, end,
        )  # fmt: skip
        run = cfg.clone()
        run.SOLVER.MAX_ITER = end
        run.SOLVER.STEPS = (int(0.8 * total), int(0.95 * total))
        run.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, total // 10)
        run.SOLVER.CHECKPOINT_PERIOD = end
        if trainers and not hasattr(trainers[0].data_loader, "start_iter"):
            run.SEED = cfg.SEED + phase
        began = time.perf_counter()
        trainer = trainer_cls(run)
        trainer.resume_or_load(resume=phase > 0)
        trainer.train()
        trainers.append(trainer)
        rate = (time.perf_counter() - began) / (end - done)  # end > done
        done = end
    return trainers, done, time.perf_counter() - start


def loss_curve(trainers: list, key: str = "total_loss", points: int = 50) -> list:
    """``key``'s per-iteration values over the stretches of a training, in ``points`` chunk
    means."""
    values = [
        v
        for t in trainers
        if key in t.storage.histories()
        for v, _ in t.storage.history(key).values()
    ]
    if not values:
        return []
    chunks = np.array_split(np.array(values), min(points, len(values)))
    return [float(c.mean()) for c in chunks]


class BaselineTrainer(DefaultTrainer):
    """Plain detectron2 training with the optimizer FsodTrainer uses (FSOD.ENGINE.OPTIMIZER),
    so that the baseline gets the same optimizer, LR and budget as FsodRCNN."""

    build_optimizer = FsodTrainer.build_optimizer  # bound: its super() resolves in FsodTrainer


class TFAFinetuneTrainer(BaselineTrainer):
    """TFA (Wang et al. 2020) stage 2: all layers frozen but the box predictor, whose novel
    rows are re-initialised; trained on the balanced K-shot set of every class."""

    base_weights: dict = {}
    novel_ids: list = []

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        model.load_state_dict(cls.base_weights)
        predictor = model.roi_heads.box_predictor
        with torch.no_grad():
            for c in cls.novel_ids:
                torch.nn.init.normal_(predictor.cls_score.weight[c], std=0.01)
                predictor.cls_score.bias[c] = 0
                rows = slice(4 * c, 4 * c + 4)
                torch.nn.init.normal_(predictor.bbox_pred.weight[rows], std=0.001)
                predictor.bbox_pred.bias[rows] = 0
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("roi_heads.box_predictor")
        return model


# ----------------------------------------------------------------------------- evaluation
def evaluate(cfg, model, out_dir: str) -> dict:
    evaluator = FsodCOCOEvaluator(VAL, output_dir=out_dir)
    prototypes = getattr(unwrap_model(model), "prototypes", None)
    if prototypes is not None:
        evaluator.class_ids = prototypes.class_ids.tolist()
    loader = build_detection_test_loader(cfg, VAL)
    bbox = inference_on_dataset(model, loader, evaluator)["bbox"]
    # COCOeval reports NaN when a model makes no detection at all; for us that is AP 0 (every
    # group has ground truth in the val set)
    metrics = ("AP", "AP50", "bAP", "bAP50", "nAP", "nAP50")
    return {k: float(np.nan_to_num(bbox.get(k, float("nan")))) for k in metrics}


def support_prototypes(cfg, model, k: int, seed: int, shuffle: bool = False) -> PrototypeSet:
    """Prototypes of every class from the seed's K-shot split; ``shuffle`` assigns each class
    another class's prototype (a derangement), the support-agnostic baseline."""
    images, boxes, class_ids, names = build_support_set(cfg, kshot_name(k, seed), k, seed)
    protos = unwrap_model(model).compute_prototypes(images, boxes, class_ids, names)
    if shuffle:
        n = len(protos)
        perm = (torch.arange(n) + 1 + torch.randperm(n - 1)[0]) % n  # a rotation: no fixed point
        protos = PrototypeSet(
            protos.class_ids,
            protos.rpn_kernels[perm],
            protos.roi_prototypes[perm],
            protos.class_names,
        )
    return protos


def eval_fsod(cfg, model, k, seed, out_dir, shuffle=False) -> dict:
    model.eval()
    model.set_prototypes(support_prototypes(cfg, model, k, seed, shuffle))
    try:
        return evaluate(cfg, model, out_dir)
    finally:
        model.set_prototypes(None)


# ---------------------------------------------------------------------------------- outputs
def summarize(runs: list) -> dict:
    table = {}
    for r in runs:
        table.setdefault(f"{r['method']}@{r['k']}shot", []).append(r)
    out = {}
    for key, rs in table.items():
        out[key] = {
            m: {
                "mean": float(np.nanmean([r[m] for r in rs])),
                "std": float(np.nanstd([r[m] for r in rs])),
                "n": len(rs),
            }
            for m in ("nAP", "nAP50", "bAP", "bAP50", "AP")
        }
    return out


def markdown_table(report: dict, count: str = "seeds") -> str:
    """Mean ± std over seeds (or, for combined runs, over base trainings: ``count``) per
    method and K (COCO AP in %), as in benchmarks/README.md."""
    metrics = ("nAP50", "nAP", "bAP50", "bAP")
    rows = [
        f"| method | K | {count} | " + " | ".join(metrics) + " |",
        "|---|---|---|" + "---|" * len(metrics),
    ]
    order = ("fsod", "fsod_shuffled", "fsod_finetuned", "tfa")
    keys = sorted(report["summary"], key=lambda k: (order.index(k.split("@")[0]), k))
    for key in keys:
        stats = report["summary"][key]
        method, k = key.split("@")
        cells = [
            f"{stats[m]['mean']:.2f} ± {stats[m]['std']:.2f}" if m in stats else "-"
            for m in metrics
        ]
        n = next(iter(stats.values()))["n"]
        rows.append(f"| {method} | {k.removesuffix('shot')} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot_bars(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(summary)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, metric in zip(axes, ("nAP50", "nAP")):
        means = [summary[k][metric]["mean"] for k in keys]
        stds = [summary[k][metric]["std"] for k in keys]
        ax.bar(
            range(len(keys)),
            means,
            yerr=stds,
            capsize=3,
            color=[
                "C0"
                if k.startswith("fsod@")
                else "C1"
                if "finetuned" in k
                else "C3"
                if "shuffled" in k
                else "C2"
                for k in keys
            ],
        )
        ax.set_xticks(range(len(keys)), keys, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(f"{metric} (novel classes)")
        ax.set_title(f"{metric}: mean +/- std over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def plot_losses(report: dict, path: Path) -> None:
    """Training loss curves (total and per term) of every base training in the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [k for k in ("fsod_base_training", "tfa_base_training") if report.get(k)]
    fig, axes = plt.subplots(1, len(runs), figsize=(6.5 * len(runs), 4), squeeze=False)
    for ax, key in zip(axes[0], runs):
        rec = report[key]
        n = rec.get("iterations") or 1
        curves = {"total_loss": rec.get("loss_curve", []), **rec.get("loss_terms", {})}
        for name, values in curves.items():
            if values:
                xs = np.linspace(0, n, len(values) + 1)[1:]
                ax.plot(xs, values, label=name, lw=2 if name == "total_loss" else 1)
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss (mean per chunk)")
        ax.set_title(key.replace("_", " "))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def plot_detections(cfg, model, k, seed, path: Path, num: int = 6, thresh: float = 0.3) -> None:
    """Grid of val images with novel objects, detections of the K-shot model drawn."""
    import cv2
    from detectron2.data.detection_utils import read_image
    from detectron2.utils.visualizer import Visualizer

    meta = MetadataCatalog.get(VAL)
    novel = set(meta.novel_ids)
    dicts = [
        d
        for d in DatasetCatalog.get(VAL)
        if any(a["category_id"] in novel for a in d["annotations"])
    ][:num]
    model.eval()
    model.set_prototypes(support_prototypes(cfg, model, k, seed))
    tiles = []
    with torch.no_grad():
        for d in dicts:
            image = read_image(d["file_name"], format=cfg.INPUT.FORMAT)
            tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
            inst = model([{"image": tensor}])[0]["instances"].to("cpu")
            inst = inst[inst.scores > thresh]
            rgb = image[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else image
            vis = Visualizer(rgb, meta, scale=1.5).draw_instance_predictions(inst)
            tiles.append(vis.get_image())
    model.set_prototypes(None)
    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    tiles = [
        cv2.copyMakeBorder(t, 0, h - t.shape[0], 0, w - t.shape[1], cv2.BORDER_CONSTANT)
        for t in tiles
    ]
    rows = [np.concatenate(tiles[i : i + 3], axis=1) for i in range(0, len(tiles), 3)]
    rows = [np.pad(r, ((0, 0), (0, rows[0].shape[1] - r.shape[1]), (0, 0))) for r in rows]
    cv2.imwrite(str(path), np.concatenate(rows, axis=0)[:, :, ::-1])


# ------------------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", default=str(REPO / "configs/benchmarks/fsod_quality.yaml"))
    parser.add_argument(
        "--budget-min",
        type=float,
        default=15.0,
        help="training wall-clock budget per method (episodic and TFA base)",
    )
    parser.add_argument("--finetune-iters", type=int, default=120, help="ours, per K-shot set")
    parser.add_argument(
        "--finetune-lr-scale", type=float, default=0.01,
        help="our fine-tuning LR / base-training LR (the whole model trains)",
    )  # fmt: skip
    parser.add_argument(
        "--tfa-finetune-iters", type=int, default=2000,
        help="TFA's last-layer fine-tuning, per K-shot set (its novel rows start from scratch)",
    )  # fmt: skip
    parser.add_argument(
        "--tfa-finetune-lr-scale", type=float, default=4.0,
        help="TFA fine-tuning LR / base-training LR (only the box predictor trains)",
    )  # fmt: skip
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--num-train", type=int, default=1200)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--skip-tfa", action="store_true")
    parser.add_argument("--skip-fsod", action="store_true", help="baseline only (experiments)")
    parser.add_argument("--skip-finetune", action="store_true", help="no fine-tuning of ours")
    parser.add_argument("--eval-images", type=int, default=0, help="first N val images (0: all)")
    parser.add_argument("--fsod-weights", default="", help="reuse a base-trained FsodRCNN")
    parser.add_argument("--tfa-weights", default="", help="reuse a base-trained Faster R-CNN")
    parser.add_argument("--out-dir", default=None)
    parser.add_argument(
        "--table", action="store_true", help="print the Markdown table of the JSON in --out-dir"
    )
    parser.add_argument(
        "--combine", nargs="+", default=[], metavar="RUN[:METHODS]",
        help="no training: mean ± std over the base trainings of these runs (an --out-dir or "
        "its JSON; ':tfa' or ':fsod,fsod_shuffled' takes only those methods; each run's mean "
        "over seeds counts once) -> fewshot_quality_combined.json in --out-dir",
    )  # fmt: skip
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (ablations)")
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir or os.environ.get("FSOD_BENCH_OUT", REPO / "benchmarks/results"))
    if args.table:
        print(markdown_table(json.loads((out_dir / "fewshot_quality.json").read_text())))
        return {}
    work = out_dir / "fewshot_quality_work"
    setup_logger(name="fsod_d2")
    setup_logger(name="detectron2", abbrev_name="d2")
    logger.setLevel(logging.INFO)
    if args.combine:
        return combine_runs(args.combine, out_dir, max(args.shots))
    t0 = time.perf_counter()

    info = prepare_data(args)
    cfg = setup_cfg(args.config_file, list(args.opts) + ["OUTPUT_DIR", str(work / "fsod")])
    cfg.defrost()
    # training runs below evaluate explicitly, not through DefaultTrainer's final EvalHook
    cfg.DATASETS.TEST = ()
    cfg.FSOD.SUPPORT.CACHE_DIR = str(work / "support_cache")
    budget = args.budget_min * 60
    report = {"machine": machine_info(), "args": vars(args), "data": info["stats"], "runs": []}

    if not args.skip_fsod:
        run_fsod(args, cfg, budget, work, out_dir, report)
    if not args.skip_tfa:
        run_tfa(args, cfg, budget, work, report)

    report["summary"] = summarize(report["runs"])
    report["targets"] = targets(report["summary"], max(args.shots))
    report["wall_seconds"] = time.perf_counter() - t0
    path = save_json("fewshot_quality", report, out_dir)
    plot_bars(report["summary"], out_dir / "fewshot_quality.png")
    plot_losses(report, out_dir / "fewshot_quality_losses.png")
    logger.info("summary:\n%s", markdown_table(report))
    logger.info(
        "targets: %s; wall %.1f min; %s", report["targets"], report["wall_seconds"] / 60, path
    )
    return report


def run_fsod(args, cfg, budget: float, work: Path, out_dir: Path, report: dict) -> None:
    """FsodRCNN: base training (or reuse), K-shot evaluation with own and shuffled supports,
    the detection grid, then our fine-tuning stage; rows appended to ``report["runs"]``."""
    model, report["fsod_base_training"] = base_model(FsodTrainer, cfg, budget, args.fsod_weights)
    base_weights = copy.deepcopy(unwrap_model(model).state_dict())
    for k in args.shots:
        for seed in args.seeds:
            for method, shuffle in (("fsod", False), ("fsod_shuffled", True)):
                if shuffle and k != max(args.shots):
                    continue
                torch.manual_seed(seed)
                m = eval_fsod(cfg, model, k, seed, str(work / method), shuffle)
                report["runs"].append({"method": method, "k": k, "seed": seed, **m})
                logger.info("%s K=%d seed=%d: %s", method, k, seed, m)
    path = out_dir / "fewshot_quality_detections.png"
    plot_detections(cfg, model, max(args.shots), args.seeds[0], path)

    for k in [] if args.skip_finetune else args.shots:
        for seed in args.seeds:
            ft = finetune_cfg(
                cfg, k, seed, args.finetune_iters, args.finetune_lr_scale, work / "fsod_ft"
            )
            ft.FSOD.K_SHOT = k
            ft_trainer = FsodTrainer(ft)
            unwrap_model(ft_trainer.model).load_state_dict(base_weights)
            ft_trainer.train()
            m = eval_fsod(ft, ft_trainer.model, k, seed, ft.OUTPUT_DIR)
            report["runs"].append({"method": "fsod_finetuned", "k": k, "seed": seed, **m})
            logger.info("fsod_finetuned K=%d seed=%d: %s", k, seed, m)


def run_tfa(args, cfg, budget: float, work: Path, report: dict) -> None:
    """TFA-style baseline: Faster R-CNN on the base classes (or reuse), then last-layer
    fine-tuning on each K-shot set and evaluation; rows appended to ``report["runs"]``."""
    tfa = tfa_cfg(cfg, work)
    tfa_model, report["tfa_base_training"] = base_model(
        BaselineTrainer, tfa, budget, args.tfa_weights
    )
    TFAFinetuneTrainer.base_weights = copy.deepcopy(tfa_model.state_dict())
    TFAFinetuneTrainer.novel_ids = list(MetadataCatalog.get(VAL).novel_ids)
    for k in args.shots:
        for seed in args.seeds:
            ft = finetune_cfg(
                tfa, k, seed, args.tfa_finetune_iters, args.tfa_finetune_lr_scale, work / "tfa_ft"
            )
            ft_trainer = TFAFinetuneTrainer(ft)
            ft_trainer.train()
            ft_trainer.model.eval()
            m = evaluate(ft, ft_trainer.model, ft.OUTPUT_DIR)
            report["runs"].append({"method": "tfa", "k": k, "seed": seed, **m})
            logger.info("tfa K=%d seed=%d: %s", k, seed, m)


def base_model(trainer_cls, cfg, budget_s: float, weights: str = ""):
    """The base-trained model and a record of its training: trained now within ``budget_s``,
    or loaded from ``weights`` (an earlier run's model_final.pth)."""
    if weights:
        model = trainer_cls.build_model(cfg)
        DetectionCheckpointer(model).load(weights)
        return model, previous_training(weights)
    trainers, iters, secs = train_within_budget(trainer_cls, cfg, budget_s)
    trainer = trainers[-1]
    record = {
        "iterations": iters,
        "seconds": secs,
        "stretches": [t.iter for t in trainers],
        "loss_curve": loss_curve(trainers),
        "loss_terms": {
            key: loss_curve(trainers, key)
            for key in sorted(trainer.storage.histories())
            if key.startswith("loss_")
        },
    }
    if hasattr(trainer, "throughput"):  # FsodTrainer's episode throughput, last stretch
        record["throughput"] = trainer.throughput.summary()
    return trainer.model, record


def finetune_cfg(cfg, k: int, seed: int, iters: int, lr_scale: float, out_prefix: Path):
    """Fine-tuning on the seed's K-shot set of every class: ``iters`` iterations at
    ``lr_scale`` x the base LR (both after SOLVER.REFERENCE_WORLD_SIZE scaling, as in base
    training), constant LR, no checkpoints; supports may come from the query image when a
    class has no other shot (FSOD.SUPPORT.QUERY_FALLBACK, as in the *_finetune configs)."""
    ft = scaled_for_world_size(cfg)
    ft.DATASETS.TRAIN = (kshot_name(k, seed),)
    ft.FSOD.SUPPORT.QUERY_FALLBACK = True
    ft.SOLVER.MAX_ITER = iters
    ft.SOLVER.BASE_LR = ft.SOLVER.BASE_LR * lr_scale
    ft.SOLVER.STEPS = ()
    ft.SOLVER.WARMUP_ITERS = 0
    ft.SOLVER.CHECKPOINT_PERIOD = 10**9
    ft.OUTPUT_DIR = f"{out_prefix}_{k}shot_seed{seed}"
    return ft


def previous_training(weights: str) -> dict:
    """What an earlier run recorded about the training of ``weights`` (its metrics.json)."""
    metrics = Path(weights).with_name("metrics.json")
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    rows = [r for r in map(json.loads, lines) if "total_loss" in r]
    terms = sorted({k for r in rows for k in r if k.startswith("loss_")})
    return {
        "weights": str(weights),
        "iterations": rows[-1]["iteration"] + 1 if rows else None,
        "loss_curve": [r["total_loss"] for r in rows],
        "loss_terms": {k: [r[k] for r in rows if k in r] for k in terms},
    }


def tfa_cfg(cfg, work: Path):
    """The same backbone, input sizes, batch and LR as a plain Faster R-CNN (C4)."""
    tfa = cfg.clone()
    tfa.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    tfa.MODEL.PROPOSAL_GENERATOR.NAME = "RPN"
    tfa.MODEL.RPN.HEAD_NAME = "StandardRPNHead"
    tfa.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"
    tfa.MODEL.ROI_HEADS.NUM_CLASSES = len(MetadataCatalog.get(VAL).thing_classes)
    tfa.DATASETS.TRAIN = (f"{TRAIN}_base",)
    tfa.OUTPUT_DIR = str(work / "tfa")
    return tfa


def combine_runs(sources: List[str], out_dir: Path, k: int) -> dict:
    """Training-run variance: every run's mean over K-shot seeds becomes one sample per
    (method, K), and the summary is the mean ± std over runs (``n``: base trainings).

    A source is a run's ``--out-dir`` or its JSON file, optionally followed by
    ``:method,method`` to take only those methods from it (e.g. the ``tfa`` rows of a run whose
    FsodRCNN model is re-evaluated elsewhere, so that no training counts twice). A run without
    a method (``--skip-tfa``) adds no sample to it."""
    rows, runs = [], []
    for i, source in enumerate(sources):
        where, _, only = source.partition(":")
        path = Path(where)
        path = path / "fewshot_quality.json" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"--combine: {path} does not exist (run the benchmark first)")
        report = json.loads(path.read_text())
        methods = set(only.split(",")) if only else None
        known = {key.split("@")[0] for key in report["summary"]}
        if methods and not methods <= known:
            raise ValueError(f"--combine {source}: no {sorted(methods - known)} in {path}")
        trainings = {
            key: report[key].get("iterations")
            for key in ("fsod_base_training", "tfa_base_training")
            if report.get(key) and (methods is None or key.split("_")[0] in methods)
        }
        summary = {
            key: stats
            for key, stats in report["summary"].items()
            if methods is None or key.split("@")[0] in methods
        }
        runs.append({"source": source, "base_training_iterations": trainings, "summary": summary})
        for key, stats in summary.items():
            method, shots = key.split("@")
            means = {m: v["mean"] for m, v in stats.items()}
            k_shots = int(shots.removesuffix("shot"))
            rows.append({"method": method, "k": k_shots, "seed": i, **means})
    summary = summarize(rows)
    combined = {"runs": runs, "summary": summary, "targets": targets(summary, k)}
    save_json("fewshot_quality_combined", combined, out_dir)
    logger.info("over base trainings:\n%s", markdown_table(combined, "trainings"))
    logger.info("targets: %s", combined["targets"])
    return combined


def targets(summary: dict, k: int) -> dict:
    ours = summary.get(f"fsod@{k}shot", {}).get("nAP50", {}).get("mean", float("nan"))
    shuffled = summary.get(f"fsod_shuffled@{k}shot", {}).get("nAP50", {}).get("mean", float("nan"))
    tfa = summary.get(f"tfa@{k}shot", {}).get("nAP50", {}).get("mean", float("nan"))
    return {
        f"{k}shot_nAP50": ours,
        "vs_shuffled_ratio": ours / shuffled if shuffled > 0 else float("inf"),
        "meets_3x_shuffled": bool(ours > 0 and ours >= 3 * shuffled),
        "vs_tfa": ours - tfa,
        "meets_tfa": bool(ours > 0 and ours >= tfa),
    }


if __name__ == "__main__":
    main()
