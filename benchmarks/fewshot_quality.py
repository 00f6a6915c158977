"""Does it transfer? Novel-class AP on two generated benchmark families, pretrained vs scratch.

Cells are (family, arm). Families (both 40 base + 10 novel classes on real-photo backgrounds,
written independently of each other, same configs and schedules on both):

* ``shapes``: procedurally drawn shapes x fill patterns x colour schemes, 240 x 320 images,
  objects ~25-80 px, occluding clutter (:mod:`fsod_datagen.shapes`);
* ``objects``: :mod:`fsod_datagen.objects` (other object kinds, varying image sizes, objects
  from ~14 to ~180 px).

Arms (each trains once on the base classes with the schedule its config holds; nothing here
rescales it):

* ``fsod_pretrained``: FsodRCNN on torchvision's ImageNet MobileNetV2,
  ``configs/fsod_mnv2_cpu.yaml`` (the recipe users run); evaluated with its own supports and
  with the supports shuffled between classes (``fsod_pretrained_shuffled``, the
  support-agnostic control);
* ``fsod_scratch``: the tiny CNN trained from scratch,
  ``configs/benchmarks/fsod_tiny_scratch_cpu.yaml``;
* ``tfa_pretrained``: a plain Faster R-CNN on the same pretrained MobileNetV2
  (``configs/benchmarks/tfa_mnv2_cpu.yaml``), then TFA's stage 2 per K-shot set: only the last
  layer trains, on the balanced K-shot set of every class (``tfa_mnv2_cpu_finetune.yaml``);
* ``fsod_adapted``: the ``fsod_pretrained`` cell's base model (trained there first if it has not
  been), adapted per K-shot set with the keys ``configs/fsod_mnv2_cpu_adapt.yaml`` changes on the
  recipe (:func:`fsod_d2.engine.adapt.adaptation_overrides`), then evaluated with that set as
  supports; the cell also evaluates the same base model without adaptation (method
  ``fsod_pretrained``), so that the two are compared on one training. ``--train-seed S`` trains
  the base model with ``SEED S FSOD.SEED S`` (cells ``<family>_<arm>_seed<S>``).

Every cell is evaluated on the family's val set for K in ``--shots`` and K-shot draws
``--seeds`` (seeded TFA-style splits of the train set: the only novel-class data any method
sees). Each cell writes ``cells/<family>_<arm>.json`` (metrics per K and seed, training
iterations, seconds, per-term loss curves) and keeps each evaluation's detections
(``fewshot_quality_work/<family>_<arm>/eval/<method>_<K>shot_seed<S>/``, input of
``benchmarks/ap_by_size.py``); ``--table`` combines the cells into ``fewshot_quality.json`` and
a Markdown table (mean ± sample std over K-shot draws).

    python -m benchmarks.fewshot_quality --jobs 2            # every cell, 2 processes, ~2 h
    python -m benchmarks.fewshot_quality --family objects --arm fsod_pretrained
    python -m benchmarks.fewshot_quality --table             # combine the cells
    python -m benchmarks.fewshot_quality --arm fsod_adapted --train-seed 1   # another training
    python -m benchmarks.fewshot_quality --arm fsod_adapted --resume   # a stopped base training
"""

import argparse
import copy
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import inference_on_dataset
from detectron2.utils.logger import setup_logger

from benchmarks.common import machine_info, save_json
from fsod_d2.data import build_support_set, register_fewshot_coco
from fsod_d2.data.splits import dump_json, sample_kshot
from fsod_d2.engine.adapt import adaptation_overrides
from fsod_d2.engine.trainer import FsodTrainer, setup_cfg, unwrap_model
from fsod_d2.evaluation.fsod_evaluation import FsodCOCOEvaluator
from fsod_d2.utils import datasets_root, mean_std

logger = logging.getLogger("fsod_d2.benchmarks.fewshot_quality")
REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
FAMILIES = ("shapes", "objects")
ARMS = {
    "fsod_pretrained": CONFIGS / "fsod_mnv2_cpu.yaml",
    "fsod_scratch": CONFIGS / "benchmarks" / "fsod_tiny_scratch_cpu.yaml",
    "tfa_pretrained": CONFIGS / "benchmarks" / "tfa_mnv2_cpu.yaml",
    "fsod_adapted": CONFIGS / "fsod_mnv2_cpu.yaml",  # + ADAPT per K-shot set
}
TFA_FINETUNE = CONFIGS / "benchmarks" / "tfa_mnv2_cpu_finetune.yaml"
ADAPT = CONFIGS / "fsod_mnv2_cpu_adapt.yaml"
METRICS = ("AP", "AP50", "bAP", "bAP50", "nAP", "nAP50")
MIN_BOX_SIZE = setup_cfg(str(ARMS["fsod_pretrained"])).FSOD.SUPPORT.MIN_BOX_SIZE


# ------------------------------------------------------------------------------------ data
def generate_family(name: str, root: Path, *, num_train: int, num_val: int, seed: int = 0) -> dict:
    """Write (or reuse) a family's dataset under ``root``: 40 base + 10 novel classes from its
    generator; returns the generator's info dict (JSON paths, image root, class split, stats)."""
    sizes = dict(num_base=40, num_novel=10, num_train=num_train, num_val=num_val, seed=seed)
    if name == "shapes":
        from fsod_datagen.shapes import generate_toy_dataset

        return generate_toy_dataset(root, difficulty="hard", **sizes)
    from fsod_datagen.objects import generate_objects_dataset

    return generate_objects_dataset(root, **sizes)


class Family:
    """One benchmark family: generated (or reused) under $DETECTRON2_DATASETS/fewshot_<name>,
    registered as ``fq_<name>_{train,val}`` plus its seeded K-shot splits."""

    def __init__(self, name: str, shots: List[int], seeds: List[int], num_train: int, num_val: int):
        self.name = name
        self.train, self.val = f"fq_{name}_train", f"fq_{name}_val"
        root = Path(datasets_root())
        self.root = root / f"fewshot_{name}"
        info = generate_family(name, self.root, num_train=num_train, num_val=num_val)
        self.stats = info["stats"]
        base, novel = info["base_classes"], info["novel_classes"]
        # the family's names follow its data: a family drawn under another root replaces them
        for name_, path in ((self.train, info["train_json"]), (self.val, info["val_json"])):
            register_fewshot_coco(name_, path, info["image_root"], base, novel, overwrite=True)
        coco = json.loads(Path(info["train_json"]).read_text())
        for k in shots:
            for seed in seeds:
                path = self.root / "splits" / f"train_{k}shot_seed{seed}.json"
                if not path.exists():  # as prepare_fewshot_splits.py: boxes that can be supports
                    split = sample_kshot(coco, k, seed, min_box_size=MIN_BOX_SIZE,
                                         source=info["train_json"])  # fmt: skip
                    dump_json(split, str(path))
                register_fewshot_coco(
                    self.kshot(k, seed), path, info["image_root"], base, novel, overwrite=True
                )

    def kshot(self, k: int, seed: int) -> str:
        return f"{self.train}_{k}shot_seed{seed}"


# ------------------------------------------------------------------------------- training
def loss_curves(trainer, points: int = 50) -> Dict[str, list]:
    """Every loss term's per-iteration values (and the total), in ``points`` chunk means."""
    out = {}
    for key in sorted(trainer.storage.histories()):
        if key == "total_loss" or key.startswith("loss_"):
            values = np.array([v for v, _ in trainer.storage.history(key).values()])
            out[key] = [float(c.mean()) for c in np.array_split(values, min(points, len(values)))]
    return out


def train(trainer_cls, cfg, resume: bool = False) -> tuple:
    """Train with the config's own schedule; returns (trainer, record of the training).
    ``resume``: continue from the last checkpoint in ``cfg.OUTPUT_DIR`` if there is one (the
    record's seconds and losses then cover the resumed iterations only)."""
    start = time.perf_counter()
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=resume)
    start_iter = trainer.start_iter
    trainer.train()
    record = {
        "iterations": cfg.SOLVER.MAX_ITER,
        "episodes_or_images_per_iteration": cfg.SOLVER.IMS_PER_BATCH,
        "seconds": time.perf_counter() - start,
        "losses": loss_curves(trainer),
    }
    if start_iter:
        record["resumed_at_iteration"] = start_iter
    return trainer, record


class BaselineTrainer(DefaultTrainer):
    """Plain detectron2 training with the optimizer FsodTrainer uses (FSOD.ENGINE.OPTIMIZER)."""

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
def evaluate(cfg, model, dataset: str, out_dir: str) -> dict:
    prototypes = getattr(unwrap_model(model), "prototypes", None)
    class_ids = prototypes.class_ids.tolist() if prototypes is not None else None
    evaluator = FsodCOCOEvaluator(dataset, output_dir=out_dir, class_ids=class_ids)
    loader = build_detection_test_loader(cfg, dataset)
    bbox = inference_on_dataset(model, loader, evaluator)["bbox"]
    # COCOeval reports NaN when a model makes no detection at all; that is AP 0 here (every
    # group has ground truth in the val set)
    return {k: float(np.nan_to_num(bbox.get(k, float("nan")))) for k in METRICS}


def support_prototypes(cfg, model, family: Family, k: int, seed: int, shuffle=False):
    """Prototypes of every class from the seed's K-shot split; ``shuffle`` gives each class
    another class's prototype (a rotation: no class keeps its own), the support-agnostic
    control."""
    images, boxes, class_ids, names = build_support_set(cfg, family.kshot(k, seed), k, seed)
    protos = unwrap_model(model).compute_prototypes(images, boxes, class_ids, names)
    if shuffle:
        n = len(protos)
        perm = (torch.arange(n) + 1 + torch.randperm(n - 1)[0]) % n
        protos = protos.reorder(perm.tolist(), keep_labels=True)
    return protos


def eval_fsod(cfg, model, family: Family, k, seed, out_dir, shuffle=False) -> dict:
    model.eval()
    torch.manual_seed(seed)
    model.set_prototypes(support_prototypes(cfg, model, family, k, seed, shuffle))
    try:
        return evaluate(cfg, model, family.val, out_dir)
    finally:
        model.set_prototypes(None)


# ---------------------------------------------------------------------------------- cells
def cell_cfg(arm: str, family: Family, out_dir: Path, opts: List[str], train_seed: int = 0):
    # SEED too (the recipe leaves it at -1, a random seed), so that a training is repeatable
    seeds = ["SEED", str(train_seed), "FSOD.SEED", str(train_seed)]
    cfg = setup_cfg(str(ARMS[arm]), seeds + list(opts))
    cfg.defrost()
    cfg.DATASETS.TRAIN = (f"{family.train}_base",)
    cfg.DATASETS.TEST = ()  # evaluated below, per K-shot draw
    cfg.FSOD.TEST.SUPPORT_DATASET = family.train
    cfg.OUTPUT_DIR = str(out_dir)
    cfg.FSOD.SUPPORT.CACHE_DIR = str(out_dir.parent / f"support_cache_{family.name}")
    if arm == "tfa_pretrained":
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(MetadataCatalog.get(family.val).thing_classes)
    return cfg


def cell_name(family: str, arm: str, train_seed: int = 0) -> str:
    return f"{family}_{arm}" + (f"_seed{train_seed}" if train_seed else "")


def base_model(args, family: Family, work: Path):
    """The ``fsod_pretrained`` cell's base model (``--train-seed``): its ``model_final.pth``
    if that cell has trained it, else trained now (saved there). Returns (cfg, model, record)."""
    out = work / cell_name(family.name, "fsod_pretrained", args.train_seed)
    cfg = cell_cfg("fsod_pretrained", family, out, args.opts, args.train_seed)
    weights = out / "model_final.pth"
    if not weights.is_file():
        trainer, record = train(FsodTrainer, cfg, resume=args.resume)
        return cfg, trainer.model, record
    model = FsodTrainer.build_model(cfg)
    DetectionCheckpointer(model).load(str(weights))
    logger.info("%s: base model %s (trained by the fsod_pretrained cell)", family.name, weights)
    return cfg, model, {"iterations": cfg.SOLVER.MAX_ITER, "reused": str(weights.relative_to(work))}


def adapt_cfg(cfg, family: Family, k: int, seed: int, weights: str, out_dir: Path, opts):
    """The base cell's config with the adaptation keys of ``configs/fsod_mnv2_cpu_adapt.yaml``
    and then ``opts`` (the benchmark's overrides of every training, then those of the
    adaptation, e.g. a schedule to compare), on the K-shot draw, from ``weights``."""
    ad = cfg.clone()
    ad.defrost()
    ad.merge_from_list(adaptation_overrides(str(ADAPT)) + list(opts))
    ad.DATASETS.TRAIN = (family.kshot(k, seed),)
    ad.MODEL.WEIGHTS = str(weights)
    ad.OUTPUT_DIR = str(out_dir)
    return ad


def run_adapted(args, family: Family, work: Path, rows: list) -> dict:
    """The ``fsod_adapted`` cell: per (K, draw) the base model without and with adaptation."""
    cfg, model, record = base_model(args, family, work)
    out = work / cell_name(family.name, "fsod_adapted", args.train_seed)
    weights = Path(cfg.OUTPUT_DIR) / "model_final.pth"  # written by training, or reused
    record["adaptation"] = []
    for k in args.shots:
        for seed in args.seeds:
            run_dir = str(out / "eval" / f"fsod_pretrained_{k}shot_seed{seed}")
            m = eval_fsod(cfg, model, family, k, seed, run_dir)
            rows.append({"method": "fsod_pretrained", "k": k, "seed": seed, **m})
            logger.info("%s fsod_pretrained K=%d seed=%d: %s", family.name, k, seed, m)
            ad = adapt_cfg(cfg, family, k, seed, weights, out / f"adapt_{k}shot_seed{seed}",
                           list(args.opts) + list(args.adapt_opts))  # fmt: skip
            trainer, ad_record = train(FsodTrainer, ad)
            ad_record["losses"] = {k_: v[-1] for k_, v in ad_record["losses"].items()}
            record["adaptation"].append({"k": k, "seed": seed, **ad_record})
            run_dir = str(out / "eval" / f"fsod_adapted_{k}shot_seed{seed}")
            m = eval_fsod(cfg, trainer.model, family, k, seed, run_dir)
            rows.append({"method": "fsod_adapted", "k": k, "seed": seed,
                         "adapt_seconds": ad_record["seconds"], **m})  # fmt: skip
            logger.info("%s fsod_adapted K=%d seed=%d (%.0f s): %s", family.name, k, seed,
                        ad_record["seconds"], m)  # fmt: skip
            (Path(ad.OUTPUT_DIR) / "model_final.pth").unlink(missing_ok=True)  # 1 file per draw
    return record


def run_cell(args, family: Family, arm: str, work: Path) -> dict:
    out = work / cell_name(family.name, arm, args.train_seed)
    cfg = cell_cfg(arm, family, out, args.opts, args.train_seed)
    rows = []
    if arm == "fsod_adapted":
        record = run_adapted(args, family, work, rows)
    elif arm.startswith("fsod"):
        trainer, record = train(FsodTrainer, cfg, resume=args.resume)
        model = trainer.model
        for k in args.shots:
            for seed in args.seeds:
                control = arm == "fsod_pretrained" and k == max(args.shots) and args.control
                for shuffle in [False, True] if control else [False]:
                    method = arm + ("_shuffled" if shuffle else "")
                    run_dir = str(out / "eval" / f"{method}_{k}shot_seed{seed}")
                    m = eval_fsod(cfg, model, family, k, seed, run_dir, shuffle)
                    rows.append({"method": method, "k": k, "seed": seed, **m})
                    logger.info("%s %s K=%d seed=%d: %s", family.name, method, k, seed, m)
        grid = work / f"{family.name}_{arm}.png"
        plot_detections(cfg, model, family, max(args.shots), args.seeds[0], grid)
    else:
        trainer, record = train(BaselineTrainer, cfg)
        TFAFinetuneTrainer.base_weights = copy.deepcopy(trainer.model.state_dict())
        TFAFinetuneTrainer.novel_ids = list(MetadataCatalog.get(family.val).novel_ids)
        record["finetune"] = []
        for k in args.shots:
            for seed in args.seeds:
                ft = cfg.clone()
                ft.merge_from_file(str(TFA_FINETUNE))
                ft.merge_from_list(list(args.opts))  # overrides apply to every training
                ft.DATASETS.TRAIN = (family.kshot(k, seed),)
                ft.OUTPUT_DIR = str(out / f"finetune_{k}shot_seed{seed}")
                ft_trainer, ft_record = train(TFAFinetuneTrainer, ft)
                ft_record.pop("losses")
                record["finetune"].append({"k": k, "seed": seed, **ft_record})
                ft_trainer.model.eval()
                m = evaluate(ft, ft_trainer.model, family.val, ft.OUTPUT_DIR)
                rows.append({"method": arm, "k": k, "seed": seed, **m})
                logger.info("%s %s K=%d seed=%d: %s", family.name, arm, k, seed, m)
    config = str(ARMS[arm].relative_to(REPO))
    if arm == "fsod_adapted":
        config += " + " + str(ADAPT.relative_to(REPO))
    return {"family": family.name, "arm": arm, "config": config, "data": family.stats,
            "train_seed": args.train_seed, "training": record, "runs": rows}  # fmt: skip


# ---------------------------------------------------------------------------------- outputs
def summary_key(family: str, method: str, k: int, train_seed: int = 0) -> str:
    """``family/method@Kshot``, with ``/train<S>`` for a base training with ``SEED`` S > 0."""
    return f"{family}/{method}@{k}shot" + (f"/train{train_seed}" if train_seed else "")


def summarize(rows: list) -> dict:
    """Mean ± sample std over K-shot draws per (family, method, K, base training)."""
    groups: Dict[str, list] = {}
    for r in rows:
        key = summary_key(r["family"], r["method"], r["k"], r.get("train_seed", 0))
        groups.setdefault(key, []).append(r)
    out = {}
    for key, rs in groups.items():
        out[key] = {m: mean_std(r[m] for r in rs) for m in METRICS}
        if "adapt_seconds" in rs[0]:
            out[key]["adapt_seconds"] = mean_std(r["adapt_seconds"] for r in rs)
    return out


def over_trainings(rows: list) -> dict:
    """Per (family, method, K) with several base trainings: mean and sample std over the
    trainings of each training's mean over draws, beside the mean of the per-training
    sample std over draws."""
    per: Dict[tuple, Dict[int, list]] = {}
    for r in rows:
        key = (r["family"], r["method"], r["k"])
        per.setdefault(key, {}).setdefault(r.get("train_seed", 0), []).append(r)
    out = {}
    for (family, method, k), by_seed in per.items():
        if len(by_seed) < 2:
            continue
        entry = {"trainings": sorted(by_seed)}
        for m in ("nAP50", "bAP50"):
            means = [float(np.mean([r[m] for r in rs])) for rs in by_seed.values()]
            draws = [mean_std(r[m] for r in rs)["std"] for rs in by_seed.values()]
            entry[m] = {**mean_std(means), "draw_std_mean": float(np.nanmean(draws))}
        out[f"{family}/{method}@{k}shot"] = entry
    return out


def adaptation_targets(summary: dict, shots: List[int]) -> dict:
    """Adaptation vs the same base model without it, per family and base training: 5-shot
    nAP50 gain >= 5, 10-shot >= 5-shot, 1-shot not below no adaptation, bAP50 drop <= 2 at
    every K. A training is judged at the K it was measured at (a target needing another K is
    left out, not failed)."""
    out = {}
    for key in sorted(summary):
        family, rest = key.split("/", 1)
        if not rest.startswith("fsod_adapted@"):
            continue
        train = rest.split("/")[1] if "/" in rest else "train0"
        seed = int(train[len("train") :])
        name = f"{family}/{train}"
        if name in out:
            continue

        def get(method, k, metric="nAP50", family=family, seed=seed):
            stats = summary.get(summary_key(family, method, k, seed), {}).get(metric, {})
            return stats.get("mean", float("nan"))

        t = {}
        measured = [k for k in shots if summary_key(family, "fsod_adapted", k, seed) in summary]
        shots_ = [k for k in measured if summary_key(family, "fsod_pretrained", k, seed) in summary]
        for k in shots_:
            t[f"{k}shot_gain_nAP50"] = get("fsod_adapted", k) - get("fsod_pretrained", k)
            t[f"{k}shot_bAP50_drop"] = get("fsod_pretrained", k, "bAP50") - get(
                "fsod_adapted", k, "bAP50"
            )
        if 5 in shots_:
            t["meets_5shot_gain_5"] = bool(t["5shot_gain_nAP50"] >= 5)
        if 5 in shots_ and 10 in shots_:
            t["meets_10shot_ge_5shot"] = bool(get("fsod_adapted", 10) >= get("fsod_adapted", 5))
        if 1 in shots_:
            t["meets_1shot_not_below"] = bool(t["1shot_gain_nAP50"] >= 0)
        if shots_:
            drops = [t[f"{k}shot_bAP50_drop"] for k in shots_]
            t["meets_bAP50_drop_le_2"] = bool(max(drops) <= 2)
        out[name] = t
    return out


def markdown_adapt_table(summary: dict, shots: List[int]) -> str:
    """Adaptation rows: per family and base training, nAP50 and bAP50 per K without and with
    adaptation (mean ± sample std over draws), and the adaptation's seconds per K."""
    head = "| family | training | method | " + " | ".join(f"{k}-shot nAP50" for k in shots)
    head += " | " + " | ".join(f"{k}-shot bAP50" for k in shots) + " | adapt s per K |"
    lines = [head, "|---|---|---|" + "---|" * (2 * len(shots) + 1)]

    def cell(stats):
        return f"{stats['mean']:.2f} ± {stats['std']:.2f}" if stats else "-"

    keys = sorted({k.split("@")[0] + "|" + (k.split("/train")[1] if "/train" in k else "0")
                   for k in summary if "/fsod_adapted@" in k})  # fmt: skip
    for item in keys:
        prefix, train = item.split("|")
        family = prefix.split("/")[0]
        for method in ("fsod_pretrained", "fsod_adapted"):
            stats = [summary.get(summary_key(family, method, k, int(train)), {}) for k in shots]
            cells = [cell(s.get("nAP50")) for s in stats] + [cell(s.get("bAP50")) for s in stats]
            secs = " / ".join(f"{s['adapt_seconds']['mean']:.0f}" for s in stats
                              if "adapt_seconds" in s) or "-"  # fmt: skip
            lines.append(f"| {family} | SEED {train} | {method} | " + " | ".join(cells)
                         + f" | {secs} |")  # fmt: skip
    return "\n".join(lines)


def targets(summary: dict, k: int) -> dict:
    """Pretrained FsodRCNN at K shots: >= 2x the scratch model and >= TFA in nAP50, bAP50 >= 50,
    per family."""

    def get(family, method, metric="nAP50"):
        stats = summary.get(f"{family}/{method}@{k}shot", {}).get(metric, {})
        return stats.get("mean", float("nan"))

    out = {}
    for family in FAMILIES:
        ours, scratch = get(family, "fsod_pretrained"), get(family, "fsod_scratch")
        tfa, base = get(family, "tfa_pretrained"), get(family, "fsod_pretrained", "bAP50")
        out[family] = {
            f"{k}shot_nAP50": ours,
            "vs_scratch_ratio": ours / scratch if scratch > 0 else float("inf"),
            "meets_2x_scratch": bool(ours > 0 and ours >= 2 * scratch),
            "vs_tfa": ours - tfa,
            "meets_tfa": bool(ours >= tfa),
            "bAP50": base,
            "meets_bAP50_50": bool(base >= 50),
        }
    return out


def markdown_table(summary: dict, shots: List[int]) -> str:
    """One row per (family, method): nAP50 per K and bAP50 at the largest K, mean ± std."""
    top = max(shots)
    head = "| family | method | " + " | ".join(f"{k}-shot nAP50" for k in shots)
    lines = [head + f" | bAP50 ({top}-shot) | draws |", "|---|---|" + "---|" * (len(shots) + 2)]
    methods = ("fsod_pretrained", "fsod_pretrained_shuffled", "fsod_scratch", "tfa_pretrained")

    def cell(key, metric):
        s = summary.get(key, {}).get(metric)
        return f"{s['mean']:.2f} ± {s['std']:.2f}" if s else "-"

    for family in FAMILIES:
        for method in methods:
            keys = [f"{family}/{method}@{k}shot" for k in shots]
            if not any(key in summary for key in keys):
                continue
            n = max(summary[key]["nAP50"]["n"] for key in keys if key in summary)
            cells = [cell(key, "nAP50") for key in keys] + [cell(keys[-1], "bAP50")]
            lines.append(f"| {family} | {method} | " + " | ".join(cells) + f" | {n} |")
    return "\n".join(lines)


def combine(out_dir: Path, shots: List[int]) -> dict:
    cells = [json.loads(p.read_text()) for p in sorted((out_dir / "cells").glob("*.json"))]
    if not cells:
        raise FileNotFoundError(f"no cells in {out_dir / 'cells'}: run the benchmark first")
    rows = [
        {"family": c["family"], "train_seed": c.get("train_seed", 0), **r}
        for c in cells
        for r in c["runs"]
    ]
    summary = summarize(rows)
    keep = ("config", "data", "training", "wall_seconds")
    report = {
        "machine": machine_info(),
        "cells": {
            cell_name(c["family"], c["arm"], c.get("train_seed", 0)).replace("_", "/", 1): {
                k: c[k] for k in keep if k in c
            }
            for c in cells
        },
        "summary": summary,
        "targets": targets(summary, max(shots)),
    }
    if any(c["arm"] == "fsod_adapted" for c in cells):
        report["adaptation_targets"] = adaptation_targets(summary, shots)
        report["over_trainings"] = over_trainings(rows)
        logger.info("\n%s", markdown_adapt_table(summary, shots))
        logger.info("adaptation targets: %s", json.dumps(report["adaptation_targets"], indent=1))
    save_json("fewshot_quality", report, out_dir)
    plot_losses(report, out_dir / "fewshot_quality_losses.png")
    logger.info("\n%s", markdown_table(summary, shots))
    logger.info("targets: %s", json.dumps(report["targets"], indent=1))
    return report


def plot_losses(report: dict, path: Path) -> None:
    """Training loss curves (total and per term) of every cell's base training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = sorted(k for k, c in report["cells"].items() if c["training"].get("losses"))
    if not cells:
        return  # every base model was reused
    cols = (len(cells) + 1) // 2
    fig, axes = plt.subplots(2, cols, figsize=(5.5 * cols, 8), squeeze=False)
    for ax, key in zip(axes.flat, cells):
        rec = report["cells"][key]["training"]
        for name, values in rec["losses"].items():
            xs = np.linspace(0, rec["iterations"], len(values) + 1)[1:]
            ax.plot(xs, values, label=name, lw=2 if name == "total_loss" else 1)
        ax.set(xlabel="iteration", ylabel="loss (chunk mean)", title=key)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def plot_detections(cfg, model, family: Family, k, seed, path: Path, num=6, thresh=0.3) -> None:
    """Grid of val images with novel objects, detections of the K-shot model drawn."""
    import cv2
    from detectron2.data.detection_utils import read_image
    from detectron2.utils.visualizer import Visualizer

    meta = MetadataCatalog.get(family.val)
    novel = set(meta.novel_ids)
    dicts = [
        d
        for d in DatasetCatalog.get(family.val)
        if any(a["category_id"] in novel for a in d["annotations"])
    ][:num]
    model.eval()
    model.set_prototypes(support_prototypes(cfg, model, family, k, seed))
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
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--arm", nargs="+", choices=sorted(ARMS), default=sorted(ARMS))
    parser.add_argument("--jobs", type=int, default=1, help="cells run in this many processes")
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 5, 10])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--num-train", type=int, default=1200)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--out-dir", default=None, help="default: benchmarks/results")
    parser.add_argument("--table", action="store_true", help="only combine the cells' JSONs")
    parser.add_argument(
        "--train-seed", type=int, default=0,
        help="SEED and FSOD.SEED of the base training (cells <family>_<arm>_seed<S> if > 0)",
    )  # fmt: skip
    parser.add_argument(
        "--adapt-opts", nargs="+", default=[], metavar="KEY VALUE",
        help="overrides of the adaptation only (after configs/fsod_mnv2_cpu_adapt.yaml's keys)",
    )  # fmt: skip
    parser.add_argument(
        "--resume", action="store_true",
        help="FsodRCNN base trainings continue from the last checkpoint in their cell's folder "
        "(a run that was stopped) instead of starting again",
    )  # fmt: skip
    parser.add_argument(
        "--no-control", dest="control", action="store_false",
        help="skip the supports-shuffled control (ablations)",
    )  # fmt: skip
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (every arm)")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    out_dir = Path(args.out_dir or os.environ.get("FSOD_BENCH_OUT", REPO / "benchmarks/results"))
    setup_logger(name="fsod_d2")
    setup_logger(name="detectron2", abbrev_name="d2")
    logger.setLevel(logging.INFO)
    # the longest cells first, so that parallel jobs finish together
    order = ("fsod_adapted", "tfa_pretrained", "fsod_pretrained", "fsod_scratch")
    cells = [(f, a) for a in sorted(args.arm, key=order.index) for f in args.family]
    if not args.table:
        if args.jobs > 1 and len(cells) > 1:
            run_parallel(args, cells, out_dir, argv)
        else:
            for family_name, arm in cells:
                start = time.perf_counter()
                family = Family(family_name, args.shots, args.seeds, args.num_train, args.num_val)
                cell = run_cell(args, family, arm, out_dir / "fewshot_quality_work")
                cell["wall_seconds"] = time.perf_counter() - start
                (out_dir / "cells").mkdir(parents=True, exist_ok=True)
                save_json(cell_name(family_name, arm, args.train_seed), cell, out_dir / "cells")
    return combine(out_dir, args.shots)


def run_parallel(args, cells, out_dir: Path, argv) -> None:
    """Each cell in its own process (one thread each), ``--jobs`` at a time; the data of each
    family is generated first, once."""
    for family_name in args.family:
        Family(family_name, args.shots, args.seeds, args.num_train, args.num_val)
    argv = list(sys.argv[1:] if argv is None else argv)
    common = _drop_option(_drop_option(_drop_option(argv, "--jobs"), "--family"), "--arm")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    pending, running = list(cells), []
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    while pending or running:
        while pending and len(running) < args.jobs:
            family_name, arm = pending.pop(0)
            cmd = [sys.executable, "-m", "benchmarks.fewshot_quality"]
            cmd += ["--family", family_name, "--arm", arm, *common]
            log = open(logs / f"{family_name}_{arm}.log", "w")
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            running.append((proc, log))
            logger.info("started %s / %s", family_name, arm)
        time.sleep(5)
        for proc, log in list(running):
            if proc.poll() is not None:
                log.close()
                running.remove((proc, log))
                if proc.returncode:
                    cell = " ".join(proc.args[3:8])
                    logger.error("%s failed (exit %d): see %s", cell, proc.returncode, log.name)


def _drop_option(argv: List[str], option: str) -> List[str]:
    """``argv`` without ``option`` and its values (up to the next ``--flag``)."""
    out, skipping = [], False
    for a in argv:
        if a.startswith("--"):
            skipping = a == option or a.startswith(option + "=")
            if skipping:
                continue
        if not skipping:
            out.append(a)
    return out


if __name__ == "__main__":
    main()
