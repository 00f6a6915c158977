"""Smoke tests of the training benchmarks on the tiny CPU config: they run, and their JSON has the
fields the README and plots read. No timing assertions (the CI machine is shared)."""

import argparse
import dataclasses
import json
import logging
import shutil
import subprocess

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from benchmarks import (
    ap_by_size,
    app_latency,
    fewshot_ablation,
    fewshot_quality,
    plots,
    profile_train_step,
    train_throughput,
)
from fsod_d2.data import register_fewshot_coco
from fsod_d2.engine import FsodTrainer

from .common import get_tiny_cfg, make_coco_dataset


@pytest.fixture(scope="module")
def throughput(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    args = ["--quick", "--out-dir", str(out), "--isolate", "never", "--procs", "1", "2"]
    args += ["--unfolded"]
    # one sweep point per dimension, all equal to the headline: exercises the plot, no extra run
    args += ["--sweeps", "tiny", "--sweep-ways", "5", "--sweep-shots", "3", "--sweep-sizes", "64"]
    results = train_throughput.main(args)
    return out, results


@pytest.mark.slow
def test_throughput_json_fields(throughput):
    out, results = throughput
    saved = json.loads((out / "train_throughput.json").read_text())
    assert saved["cases"] == json.loads(json.dumps(results["cases"]))
    assert {"machine", "args", "cases", "sweeps", "total_seconds"} <= set(saved)
    assert not saved.get("failed") and not saved.get("skipped")
    head, ddp, point = saved["cases"]
    assert (head["config"], head["n_way"], head["k_shot"], head["procs"]) == ("tiny", 5, 3, 1)
    assert set(head["modes"]) == {"batched", "per_class", "batched_fast", "batched_unfolded"}
    assert head["same_weights"] is True
    assert head["per_class_over_batched"] > 0 and head["fast_speedup"] > 0
    assert head["fold_speedup"] > 0
    assert head["images_per_episode"] == 1 + 5 * 3 and head["iters"] == 2
    for case in (head, ddp):
        for v in case["modes"].values():
            assert len(v["step_s_all"]) == 2 and v["step_s"] > 0
            expected = case["episodes_per_step"] * case["images_per_episode"] / v["step_s"]
            assert v["images_per_s"] == pytest.approx(expected)
            assert v["episodes_per_min"] == pytest.approx(
                60 * case["episodes_per_step"] / v["step_s"]
            )
            assert v["peak_memory_mb"] > 0 and v["memory_kind"] == "rss_step_peak"
            assert set(v["losses"]) == {
                "loss_rpn_cls",
                "loss_rpn_loc",
                "loss_match",
                "loss_box_reg",
            }
    assert ddp["procs"] == 2 and ddp["episodes_per_step"] == 2
    assert len(ddp["proc_max_rss_mb"]) == 2 and ddp["threads_per_proc"] >= 1
    sweeps = saved["sweeps"]["tiny"]
    assert [p["x"] for p in sweeps["n_way"]] == [5] and sweeps["base"]["support_size"] == 64
    assert head["in_star"] and ddp["in_star"] and not point["in_star"]
    # the sweep measures the headline settings alone, not in the head's 3-model process
    assert point["sweep"] and list(point["modes"]) == ["batched"] and point["support_size"] == 64


@pytest.mark.slow
def test_throughput_plot_and_table(throughput):
    out, results = throughput
    png = out / "train_throughput.png"
    assert png.is_file() and png.stat().st_size > 1000
    rows = plots.markdown_table(results).splitlines()
    assert len(rows) == 2 + 4 + 1  # header, rule; head x 4 modes; 2 processes
    assert "per_class" in rows[3] and "x wall" in rows[3]


def test_plan_is_a_star_around_the_headline():
    args = argparse.Namespace(
        configs=["tiny"], ways_shots=["5x3", "5x4"], support_sizes=[320, 384],
        rpn=["early", "late"], procs=[1, 2], ims_per_batch=[1], amp="off",
        reference="headline", fast="compare", unfolded=False,
        sweeps=["tiny"], sweep_ways=[1, 5], sweep_shots=[3], sweep_sizes=[384],
    )  # fmt: skip
    cases, sweeps, star = train_throughput.plan(args)
    head = cases[0]
    assert (head.n_way, head.k_shot, head.support_size, head.rpn) == (5, 3, 384, "early")
    assert head.modes == ("batched", "per_class", "batched_fast")
    labels = [c.label() for c in cases]
    # N,K x S; late RPN; 2 procs; sweep points 1-way and the headline measured alone
    assert len(labels) == len(set(labels)) == 4 + 1 + 1 + 2
    assert sweeps["tiny"]["n_way"][1] == dataclasses.replace(head, sweep=True).key()
    assert len(star) == 6 and sweeps["tiny"]["n_way"][0] not in star


def test_profile_train_step(tmp_path):
    result = profile_train_step.main(
        ["--config", "tiny", "--steps", "1", "--warmup", "0", "--out-dir", str(tmp_path)]
    )
    parts = {r["part"] for r in result["parts"]}
    assert {"step.forward", "step.backward", "backbone (query)", "roi: res5"} <= parts
    assert result["top_ops"] and (tmp_path / "profile_train_step_tiny.json").is_file()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_script_parses():
    subprocess.run(["bash", "-n", "benchmarks/gpu_check.sh"], check=True, cwd=_repo())


def _repo():
    from benchmarks.common import REPO

    return REPO


@pytest.fixture
def restore_loggers():
    """fewshot_quality.main calls detectron2's setup_logger, which stops the "fsod_d2" and
    "detectron2" loggers from propagating (caplog in later tests would see nothing)."""
    loggers = [logging.getLogger(n) for n in ("fsod_d2", "detectron2", "d2")]
    saved = [(lg, lg.handlers[:], lg.propagate, lg.level) for lg in loggers]
    yield
    for lg, handlers, propagate, level in saved:
        lg.handlers[:] = handlers
        lg.propagate = propagate
        lg.setLevel(level)


ARMS = ["fsod_pretrained", "fsod_scratch", "tfa_pretrained"]


@pytest.mark.slow
def test_fewshot_quality_smoke(tmp_path, monkeypatch, restore_loggers):
    """The benchmark shrunk to seconds (2 iterations, a few images, random backbone weights):
    every (family, arm) cell runs with its own config, the JSON has a row per (method, K,
    seed), the table and targets are computed from them, and the plots are written."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "data"))
    out = tmp_path / "out"
    argv = ["--shots", "1", "2", "--seeds", "0", "1", "--num-train", "40", "--num-val", "4"]
    argv += ["--arm", *ARMS]  # the adaptation arm: tests/test_adapt.py (needs every class)
    argv += ["--out-dir", str(out), "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "0"]
    argv += ["SOLVER.STEPS", "()", "MODEL.TORCHVISION.WEIGHTS", ""]  # nothing downloaded
    report = fewshot_quality.main(argv)
    saved = json.loads((out / "fewshot_quality.json").read_text())
    assert sorted(saved["cells"]) == [f"{f}/{a}" for f in ("objects", "shapes") for a in ARMS]
    for family in fewshot_quality.FAMILIES:
        for method in ("fsod_pretrained", "fsod_scratch", "tfa_pretrained"):
            for k in (1, 2):
                stats = saved["summary"][f"{family}/{method}@{k}shot"]
                assert stats["nAP50"]["n"] == 2 and 0 <= stats["nAP50"]["mean"] <= 100
        assert f"{family}/fsod_pretrained_shuffled@2shot" in saved["summary"]
        assert f"{family}/fsod_pretrained_shuffled@1shot" not in saved["summary"]
        assert set(report["targets"][family]) >= {"meets_2x_scratch", "meets_tfa", "bAP50"}
        training = saved["cells"][f"{family}/tfa_pretrained"]["training"]
        assert training["iterations"] == 2 and len(training["finetune"]) == 4
        losses = saved["cells"][f"{family}/fsod_pretrained"]["training"]["losses"]
        assert {"total_loss", "loss_match", "loss_base_cls"} <= set(losses)
    table = fewshot_quality.markdown_table(saved["summary"], [1, 2]).splitlines()
    assert len(table) == 2 + 8 and table[2].startswith("| shapes | fsod_pretrained |")
    assert (out / "fewshot_quality_losses.png").stat().st_size > 1000
    assert (out / "fewshot_quality_work" / "objects_fsod_pretrained.png").stat().st_size > 1000


def test_fewshot_quality_train_resumes_from_the_last_checkpoint(tmp_path):
    """``--resume``: a stopped base training continues at the iteration after its last
    checkpoint, with the optimizer's state, and the record says where it resumed."""
    json_path, image_root, _ = make_coco_dataset(tmp_path, num_images=8, category_ids=(3, 7, 11))
    register_fewshot_coco("t_fq_resume", json_path, image_root, ["class3", "class7", "class11"])
    try:
        cfg = get_tiny_cfg(
            "DATASETS.TRAIN", "('t_fq_resume_base',)", "DATASETS.TEST", "()",
            "OUTPUT_DIR", str(tmp_path / "cell"), "SOLVER.MAX_ITER", "2",
            "SOLVER.WARMUP_ITERS", "0", "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "1",
        )  # fmt: skip
        _, first = fewshot_quality.train(FsodTrainer, cfg)
        assert "resumed_at_iteration" not in first and len(first["losses"]["total_loss"]) == 2
        cfg.defrost()
        cfg.SOLVER.MAX_ITER = 5
        trainer, record = fewshot_quality.train(FsodTrainer, cfg, resume=True)
        assert record["resumed_at_iteration"] == 2 and trainer.iter == 5  # max_iter: done
        assert len(record["losses"]["total_loss"]) == 3  # iterations 2-4 only
        assert (tmp_path / "cell" / "model_final.pth").is_file()
        _, again = fewshot_quality.train(FsodTrainer, cfg)  # without resume: from the start
        assert "resumed_at_iteration" not in again and len(again["losses"]["total_loss"]) == 5
    finally:
        for name in ("t_fq_resume", "t_fq_resume_base", "t_fq_resume_novel"):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    assert fewshot_quality.parse_args(["--resume"]).resume
    assert not fewshot_quality.parse_args([]).resume


def test_fewshot_quality_summary_uses_sample_std_and_targets():
    rows = [
        {"family": "shapes", "method": m, "k": 5, "seed": s, **{k: v for k in metrics}}
        for m, values in (("fsod_pretrained", (20, 22, 24)), ("fsod_scratch", (9, 10, 11)),
                          ("tfa_pretrained", (21, 21, 21)))
        for s, v in enumerate(values)
        for metrics in [fewshot_quality.METRICS]
    ]  # fmt: skip
    summary = fewshot_quality.summarize(rows)
    assert summary["shapes/fsod_pretrained@5shot"]["nAP50"] == {"mean": 22.0, "std": 2.0, "n": 3}
    target = fewshot_quality.targets(summary, 5)["shapes"]
    assert target["vs_scratch_ratio"] == pytest.approx(2.2) and target["meets_2x_scratch"]
    assert target["vs_tfa"] == pytest.approx(1.0) and target["meets_tfa"]
    assert target["bAP50"] == 22.0 and not target["meets_bAP50_50"]
    one = fewshot_quality.summarize(rows[:1])["shapes/fsod_pretrained@5shot"]["nAP50"]
    assert one["n"] == 1 and one["std"] != one["std"]  # NaN for n=1 (ddof=1)


def test_fewshot_ablation_arms_are_valid_overrides_and_table():
    for opts in fewshot_ablation.ARMS.values():
        get_tiny_cfg(*opts)  # raises on a key that does not exist
    stats = {"mean": 1.5, "std": 0.25, "n": 3}
    arm = {
        "overrides": ["FSOD.N_WAY", "2"],
        "iterations": 100,
        "final_losses": {"loss_match": 0.3, "loss_box_reg": 0.4},
        "fsod": {"nAP50": stats, "nAP": stats, "bAP": stats},
        "fsod_shuffled": {"nAP50": stats},
    }
    rows = fewshot_ablation.table({"arms": {"2_way": arm}}).splitlines()
    assert len(rows) == 3 and "| 2_way | FSOD.N_WAY 2 | 100 | 1.50 ± 0.25 |" in rows[2]


def test_fewshot_ablation_applies_trailing_overrides_to_every_arm_before_its_own(
    tmp_path, monkeypatch
):
    calls = []
    stats = {"mean": 1.0, "std": 0.0, "n": 1}

    def fake_main(argv):
        calls.append(argv)
        summary = {"nAP50": stats, "nAP": stats, "bAP": stats}
        training = {"iterations": 3, "losses": {"loss_match": [0.5, 0.4]}}
        cell = "shapes/fsod_pretrained"
        return {
            "cells": {cell: {"training": training, "wall_seconds": 1.0}},
            "summary": {f"{cell}@5shot": summary, f"{cell}_shuffled@5shot": summary},
        }

    monkeypatch.setattr(fewshot_ablation.fewshot_quality, "main", fake_main)
    argv = ["--arms", "default", "base_classifier", "--out-dir", str(tmp_path)]
    results = fewshot_ablation.main(argv + ["MODEL.FSOD.BASE_CLASSIFIER.WEIGHT", "0.0"])
    assert calls[0][-2:] == ["MODEL.FSOD.BASE_CLASSIFIER.WEIGHT", "0.0"]
    key = "MODEL.FSOD.BASE_CLASSIFIER.WEIGHT"
    assert calls[1][-4:] == [key, "0.0", key, "1.0"]  # the arm's own override wins
    assert results["arms"]["base_classifier"]["overrides"][-1] == "1.0"
    assert json.loads((tmp_path / "fewshot_ablation.json").read_text())["arms"].keys() == {
        "default",
        "base_classifier",
    }


def test_fewshot_quality_no_control_flag():
    assert fewshot_quality.parse_args([]).control
    assert not fewshot_quality.parse_args(["--no-control", "SOLVER.MAX_ITER", "2"]).control


def _box_gt():
    """Two images: class 1 has a small (20 x 20) and a large (120 x 120) box, class 2 (novel) a
    medium (50 x 50) box."""
    images = [{"id": i, "width": 320, "height": 240, "file_name": f"{i}.jpg"} for i in (1, 2)]
    boxes = [(1, 1, [10, 10, 20, 20]), (1, 1, [100, 50, 120, 120]), (2, 2, [30, 30, 50, 50])]
    annotations = [
        {"id": i, "image_id": im, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
        for i, (im, c, b) in enumerate(boxes, 1)
    ]
    categories = [{"id": 1, "name": "cup"}, {"id": 2, "name": "key"}]
    return {"images": images, "annotations": annotations, "categories": categories}


def test_ap_by_size_splits_ap_and_recall_by_area_and_group():
    gt = _box_gt()
    detections = [  # the large cup and the key found, the small cup missed (wrong place)
        {"image_id": 1, "category_id": 1, "bbox": [100, 50, 120, 120], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [200, 150, 20, 20], "score": 0.8},
        {"image_id": 2, "category_id": 2, "bbox": [31, 31, 50, 50], "score": 0.7},
    ]
    report = ap_by_size.ap_by_size(gt, detections, {"base": ["cup"], "novel": ["key"]})
    assert set(report) == {"all", "base", "novel"}
    base, novel = report["base"], report["novel"]
    assert base["small"]["recall50"] == 0 and base["small"]["AP50"] == 0
    assert base["large"]["recall50"] == 100 and base["large"]["AP50"] == pytest.approx(100)
    assert base["all"]["recall50"] == 50 and base["small"]["gt_share"] == 50
    assert novel["medium"]["AP50"] == pytest.approx(100) and novel["medium"]["gt_share"] == 100
    assert novel["small"]["AP50"] != novel["small"]["AP50"]  # no ground truth there: NaN
    table = ap_by_size.markdown("toy", report).splitlines()
    assert len(table) == 2 + 3 * 3 and table[3].startswith("| all AP50 |")


def test_ap_by_size_refuses_unknown_split_names_and_no_detections():
    gt = _box_gt()
    det = [{"image_id": 1, "category_id": 1, "bbox": [100, 50, 120, 120], "score": 0.9}]
    with pytest.raises(KeyError, match="not in the ground truth"):
        ap_by_size.ap_by_size(gt, det, {"base": ["mug"], "novel": ["key"]})
    with pytest.raises(KeyError, match="'novel'"):
        ap_by_size.ap_by_size(gt, det, {"base": ["cup"]})
    with pytest.raises(ValueError, match="no detections"):
        ap_by_size.ap_by_size(gt, [], None)


def test_ap_by_size_thresholds_count_boxes_precision_and_recall():
    gt = _box_gt()
    detections = [
        {"image_id": 1, "category_id": 1, "bbox": [100, 50, 120, 120], "score": 0.9},  # hit
        {"image_id": 1, "category_id": 1, "bbox": [102, 52, 118, 118], "score": 0.6},  # duplicate
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.25},  # hit (small)
        {"image_id": 2, "category_id": 1, "bbox": [30, 30, 50, 50], "score": 0.8},  # wrong class
    ]
    out = ap_by_size.at_thresholds(gt, detections, [0.2, 0.5, 0.95])
    # only class 1 has detections: its 2 objects are the evaluated ones (the key is not)
    assert out["0.2"] == {"boxes_per_image": 2.0, "precision": 0.5, "recall": 1.0}
    assert out["0.5"] == {"boxes_per_image": 1.5, "precision": pytest.approx(1 / 3), "recall": 0.5}
    assert out["0.95"]["boxes_per_image"] == 0 and out["0.95"]["recall"] == 0
    assert out["0.95"]["precision"] != out["0.95"]["precision"]  # nothing kept: NaN


def test_ap_by_size_records_paths_without_machine_folders(tmp_path, monkeypatch):
    data, work = tmp_path / "data", tmp_path / "work"
    (data / "fam").mkdir(parents=True)
    (work / "eval").mkdir(parents=True)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(data))
    monkeypatch.chdir(work)
    gt = ap_by_size.portable(str(data / "fam" / "val.json"))
    assert gt == "$DETECTRON2_DATASETS/fam/val.json"
    assert ap_by_size.portable("eval/results.json") == "eval/results.json"
    elsewhere = tmp_path / "other" / "run0" / "results.json"
    assert ap_by_size.portable(str(elsewhere)) == "run0/results.json"


def test_app_latency_summary_scaling_and_paths_without_machine_folders(tmp_path):
    import cv2
    import numpy as np

    out = app_latency.summary([0.5, 0.7, 0.6, 1.2])
    assert out == {
        "median_s": pytest.approx(0.65),
        "std_s": pytest.approx(float(np.std([0.5, 0.7, 0.6, 1.2], ddof=1))),
        "min_s": 0.5,
        "max_s": 1.2,
        "n": 4,
    }
    image = tmp_path / "run0" / "query.jpg"
    image.parent.mkdir()
    cv2.imwrite(str(image), np.zeros((240, 320, 3), np.uint8))
    scaled = app_latency.scaled_image(str(image), 640, str(tmp_path))
    assert cv2.imread(scaled).shape == (480, 640, 3)
    assert app_latency.shown(str(image)) == "run0/query.jpg"
    assert app_latency.shown(str(app_latency.RECIPE)) == "configs/fsod_mnv2_cpu.yaml"
    assert app_latency.shown("--repeats") == "--repeats"
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(SystemExit, match="notes.txt is not a readable image"):
        app_latency.scaled_image(str(tmp_path / "notes.txt"), 640, str(tmp_path))
