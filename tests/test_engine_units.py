"""Engine pieces without processes: evaluator maths, hooks, OOM explanation, AMP on CPU,
seed aggregation, the missing-dataset message."""

import json
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fsod_d2.data import register_fewshot_coco
from fsod_d2.engine import FsodTrainer, GPUStatsHook, ThroughputHook, gpu_stats, oom_message
from fsod_d2.engine.hooks import is_out_of_memory
from fsod_d2.evaluation import summarize_categories
from fsod_datagen.shapes import generate_toy_dataset

from .common import REPO_ROOT, get_tiny_cfg, load_tool

TOY = {"num_base": 5, "num_novel": 2, "num_train": 16, "num_val": 4, "image_size": (96, 128)}


# ---------------------------------------------------------------------------- evaluator maths
def _coco_pair(rng):
    """A small GT with 4 categories (ids 1, 3, 5, 7) and noisy detections."""
    images = [{"id": i, "width": 200, "height": 200, "file_name": f"{i}.jpg"} for i in range(6)]
    cats = [{"id": c, "name": f"c{c}"} for c in (1, 3, 5, 7)]
    anns, dets = [], []
    for im in images:
        for _ in range(3):
            c = int(rng.choice([1, 3, 5, 7]))
            x, y, s = (float(v) for v in rng.uniform([0, 0, 10], [120, 120, 70]))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": im["id"],
                    "category_id": c,
                    "bbox": [x, y, s, s],
                    "area": s * s,
                    "iscrowd": 0,
                }
            )
            jitter = rng.normal(0, 4, 4)
            dets.append(
                {
                    "image_id": im["id"],
                    "category_id": c if rng.random() < 0.7 else 1,
                    "bbox": [x + jitter[0], y + jitter[1], s + jitter[2], s + jitter[3]],
                    "score": float(rng.random()),
                }
            )
    gt = COCO()
    gt.dataset = {"images": images, "categories": cats, "annotations": anns}
    gt.createIndex()
    return gt, gt.loadRes(dets)


def test_summarize_categories_equals_cocoeval_on_the_subset():
    gt, dt = _coco_pair(np.random.default_rng(0))
    full = COCOeval(gt, dt, "bbox")
    full.evaluate()
    full.accumulate()
    for subset in ([1, 5], [3], [1, 3, 5, 7]):
        ref = COCOeval(gt, dt, "bbox")
        ref.params.catIds = subset
        ref.evaluate()
        ref.accumulate()
        ref.summarize()
        ours = summarize_categories(full, subset)
        expected = [ref.stats[i] * 100 if ref.stats[i] >= 0 else float("nan") for i in range(6)]
        got = [ours[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9, equal_nan=True)


def test_summarize_categories_without_ground_truth_is_nan():
    gt, dt = _coco_pair(np.random.default_rng(1))
    ev = COCOeval(gt, dt, "bbox")
    ev.evaluate()
    ev.accumulate()
    assert all(np.isnan(v) for v in summarize_categories(ev, []).values())


# ---------------------------------------------------------------------------- hooks
class _FakeTrainer:
    def __init__(self, it, max_iter=100, start_iter=0):
        self.iter, self.max_iter, self.start_iter = it, max_iter, start_iter
        self.storage = EventStorage(it)


def test_gpu_stats_absent_without_cuda_and_hook_records_per_gpu(monkeypatch):
    if torch.cuda.is_available():  # this machine's GPU: torch's memory statistics at least
        stats = gpu_stats()
        assert stats["mem_allocated_MiB"] >= 0 and "max_mem_allocated_MiB" in stats
    with monkeypatch.context() as m:
        m.setattr(torch.cuda, "is_available", lambda: False)
        assert gpu_stats() == {}
    hook = GPUStatsHook(period=5, stats_fn=lambda: {"util_percent": 42.0, "mem_used_MiB": 7.0})
    hook.trainer = _FakeTrainer(it=4)
    with hook.trainer.storage:
        hook.after_step()
    latest = hook.trainer.storage.latest()
    assert latest["gpu0/util_percent"][0] == 42.0 and latest["gpu0/mem_used_MiB"][0] == 7.0
    quiet = GPUStatsHook(period=5, stats_fn=dict)  # CPU: nothing recorded, nothing raised
    quiet.trainer = _FakeTrainer(it=4)
    with quiet.trainer.storage:
        quiet.after_step()
    assert not quiet.trainer.storage.latest()


def test_throughput_hook_counts_episodes(monkeypatch):
    """Steps of 0.5 s and 2 s (a fake clock), 8 episodes of 15 supports per iteration."""
    from fsod_d2.engine import hooks

    clock = iter([10.0, 10.5, 20.0, 22.0, 30.0, 32.0])
    monkeypatch.setattr(hooks.time, "perf_counter", lambda: next(clock))
    hook = ThroughputHook(episodes_per_iter=8, supports_per_episode=15, warmup_iters=1)
    hook.trainer = _FakeTrainer(it=0)
    with hook.trainer.storage:
        hook.before_step()
        hook.after_step()  # 0.5 s: 16 episodes/s
        latest = hook.trainer.storage.latest()
        assert latest["episodes_per_min"][0] == pytest.approx(960.0)
        assert latest["images_per_s"][0] == pytest.approx(16.0)
        assert latest["support_crops_per_s"][0] == pytest.approx(240.0)
        assert hook.summary() == {}  # iteration 0 is warm-up
        for it in (1, 2):  # 2 s each: 4 episodes/s
            hook.trainer.iter = it
            hook.before_step()
            hook.after_step()
    latest = hook.trainer.storage.latest()
    assert latest["episodes_per_min"][0] == pytest.approx(240.0)
    assert latest["support_crops_per_s"][0] == pytest.approx(60.0)
    assert hook.summary() == pytest.approx(
        {"iterations": 2, "episodes_per_min": 240.0, "images_per_s": 4.0}
    )


def test_oom_message_names_the_knobs():
    cfg = get_tiny_cfg("FSOD.K_SHOT", 4, "FSOD.SUPPORT.SIZE", 96)
    err = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    msg = oom_message(cfg, err)
    for part in (
        "FSOD.K_SHOT=4",
        "FSOD.N_WAY=3",
        "FSOD.SUPPORT.SIZE=96",
        "INPUT.MIN_SIZE_TRAIN=(128,)",
        "INPUT.MAX_SIZE_TRAIN=192",
        "SOLVER.AMP.ENABLED=False",
        "Tried to allocate 2.00 GiB",
    ):
        assert part in msg
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


# ---------------------------------------------------------------------------- in-process trainer
@pytest.fixture(scope="module")
def toy_names(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_units")
    result = generate_toy_dataset(root, **TOY)
    name = f"engine_units_{uuid.uuid4().hex[:8]}"
    for split in ("train", "val"):
        register_fewshot_coco(
            f"{name}_{split}",
            result[f"{split}_json"],
            result["image_root"],
            result["base_classes"],
            result["novel_classes"],
        )
    return name


def _trainer_cfg(toy_names, tmp_path, *opts):
    return get_tiny_cfg(
        "DATASETS.TRAIN",
        (f"{toy_names}_train_base",),
        "DATASETS.TEST",
        (f"{toy_names}_val",),
        "FSOD.TEST.SUPPORT_DATASET",
        f"{toy_names}_train",
        "OUTPUT_DIR",
        str(tmp_path),
        *opts,
    )


def test_simulated_oom_in_a_step_is_explained(toy_names, tmp_path):
    cfg = _trainer_cfg(toy_names, tmp_path, "SOLVER.MAX_ITER", 2)
    trainer = FsodTrainer(cfg)

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB")

    trainer.model.forward = oom
    with pytest.raises(torch.OutOfMemoryError) as info:
        trainer.train()
    msg = str(info.value)
    assert "training iteration 0" in msg and "FSOD.K_SHOT=2" in msg and "FSOD.N_WAY=3" in msg
    assert "FSOD.SUPPORT.SIZE=64" in msg and "SOLVER.AMP.ENABLED=False" in msg
    assert "Tried to allocate 3.00 GiB" in msg

    def other(*args, **kwargs):
        raise ValueError("not memory")

    trainer2 = FsodTrainer(cfg)
    trainer2.model.forward = other
    with pytest.raises(ValueError, match="not memory"):
        trainer2.train()


def test_amp_training_on_cpu_and_throughput_in_metrics(toy_names, tmp_path):
    cfg = _trainer_cfg(
        toy_names, tmp_path, "SOLVER.MAX_ITER", 3, "SOLVER.AMP.ENABLED", True, "DATASETS.TEST", ()
    )
    trainer = FsodTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = trainer.storage.latest()
    assert np.isfinite(losses["total_loss"][0])
    assert losses["episodes_per_min"][0] > 0 and losses["images_per_s"][0] > 0
    with open(os.path.join(tmp_path, "metrics.json")) as f:
        last = [json.loads(line) for line in f][-1]
    assert last["episodes_per_min"] > 0 and "support_crops_per_s" in last


# ---------------------------------------------------------------------------- tools
def test_aggregate_seeds(tmp_path):
    aggregate_seeds = load_tool("aggregate_seeds")
    for seed, ap in enumerate([10.0, 12.0, 14.0]):
        d = tmp_path / f"run{seed}" / "inference" / "toy_val"
        d.mkdir(parents=True)
        record = {
            "dataset": "toy_val",
            "k_shot": 3,
            "seed": seed,
            "weights": "model_final.pth",  # one model evaluated into three folders
            "metrics": {"bbox": {"AP": ap, "nAP": ap / 2, "bAP": float("nan")}},
        }
        (d / f"fsod_metrics_3shot_seed{seed}.json").write_text(json.dumps(record))
    rows = aggregate_seeds.main([str(tmp_path), "--json", str(tmp_path / "agg.json")])
    (row,) = rows
    assert row["seeds"] == [0, 1, 2]
    assert row["AP"]["mean"] == pytest.approx(12.0) and row["AP"]["std"] == pytest.approx(2.0)
    assert row["nAP"]["mean"] == pytest.approx(6.0) and row["bAP"]["n"] == 0
    assert json.loads((tmp_path / "agg.json").read_text())[0]["k_shot"] == 3


def test_headline_without_coco_stops_at_once_with_instructions(tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path))
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "tools" / "train_net.py"),
            "--config-file",
            str(REPO_ROOT / "configs" / "fsod_5way3shot.yaml"),
            "--num-gpus",
            "2",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 1 and "train_net.py: error: Dataset" in proc.stderr
    for part in ("coco/", "prepare_fewshot_splits.py coco17", "make demo", "datasets/README.md"):
        assert part in proc.stderr


def test_eval_novel_only_set_and_prototype_file_cache(toy_names, tmp_path):
    proto_file = tmp_path / "protos.pth"
    cfg = _trainer_cfg(
        toy_names,
        tmp_path,
        "DATASETS.TEST",
        (f"{toy_names}_val_novel", f"{toy_names}_val"),
        "FSOD.TEST.PROTOTYPE_FILE",
        str(proto_file),
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
        0.0,
    )
    torch.manual_seed(0)
    model = FsodTrainer.build_model(cfg)
    results = FsodTrainer.test(cfg, model)
    novel, full = results[f"{toy_names}_val_novel"]["bbox"], results[f"{toy_names}_val"]["bbox"]
    assert np.isnan(novel["bAP"]) and np.isfinite(novel["nAP"])  # novel classes only
    assert np.isfinite(full["bAP"]) and np.isfinite(full["nAP"])
    assert proto_file.is_file() and model.prototypes is None  # cleared after evaluation
    stored = proto_file.stat().st_mtime_ns
    again = FsodTrainer.test(cfg, model)  # same weights and supports: loaded, not rewritten
    assert proto_file.stat().st_mtime_ns == stored
    assert again[f"{toy_names}_val"]["bbox"]["AP"] == pytest.approx(full["AP"])


def test_evaluator_without_any_detection_reports_zero_where_there_is_ground_truth(
    toy_names, tmp_path
):
    from fsod_d2.evaluation import FsodCOCOEvaluator

    ev = FsodCOCOEvaluator(f"{toy_names}_val", output_dir=str(tmp_path), distributed=False)
    ev.reset()
    for d in DatasetCatalog.get(f"{toy_names}_val"):  # every image, no detection
        empty = Instances(
            (d["height"], d["width"]),
            pred_boxes=Boxes(torch.zeros(0, 4)),
            scores=torch.zeros(0),
            pred_classes=torch.zeros(0, dtype=torch.long),
        )
        ev.process([{"image_id": d["image_id"]}], [{"instances": empty}])
    res = ev.evaluate()["bbox"]
    assert res["AP"] == 0.0 and res["bAP"] == 0.0 and res["nAP50"] == 0.0
    # COCO's size ranges: an AP is 0 where the val set has such objects, NaN where it has none
    areas = [
        a["area"] for a in COCO(MetadataCatalog.get(f"{toy_names}_val").json_file).anns.values()
    ]
    for key, (lo, hi) in {"APs": (0, 32**2), "APm": (32**2, 96**2), "APl": (96**2, 1e10)}.items():
        if any(lo <= a <= hi for a in areas):  # COCOeval: inclusive ranges
            assert res[key] == 0.0, key
        else:
            assert np.isnan(res[key]), key
    assert any(a < 96**2 for a in areas)  # at least one of APs / APm is a real 0
