"""Smoke tests of the training benchmarks on the tiny CPU config: they run, and their JSON has the
fields the README and plots read. No timing assertions (the CI machine is shared)."""

import argparse
import dataclasses
import json
import logging
import shutil
import subprocess

import pytest

from benchmarks import (
    fewshot_ablation,
    fewshot_quality,
    plots,
    profile_train_step,
    train_throughput,
)

from .common import get_tiny_cfg


@pytest.fixture(scope="module")
def throughput(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    args = ["--quick", "--out-dir", str(out), "--isolate", "never", "--procs", "1", "2"]
    args += ["--unfolded"]
    # one sweep point per dimension, all equal to the headline: exercises the plot, no extra run
    args += ["--sweeps", "tiny", "--sweep-ways", "5", "--sweep-shots", "3", "--sweep-sizes", "64"]
    results = train_throughput.main(args)
    return out, results


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


def test_fewshot_quality_smoke(tmp_path, monkeypatch, restore_loggers):
    """A minutes-long benchmark shrunk to seconds: every method runs, the JSON has a row per
    (method, K, seed), the targets are computed from them, and the plots are written."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "data"))
    out = tmp_path / "out"
    argv = ["--budget-min", "0.01", "--finetune-iters", "2", "--tfa-finetune-iters", "2"]
    argv += ["--shots", "1", "2"]
    argv += ["--seeds", "0", "--num-train", "120", "--num-val", "6", "--out-dir", str(out)]
    report = fewshot_quality.main(argv + ["SOLVER.IMS_PER_BATCH", "2"])
    saved = json.loads((out / "fewshot_quality.json").read_text())
    runs = {(r["method"], r["k"]) for r in saved["runs"]}
    expected = {("fsod", 1), ("fsod", 2), ("fsod_shuffled", 2), ("fsod_finetuned", 1)}
    assert expected | {("fsod_finetuned", 2), ("tfa", 1), ("tfa", 2)} == runs
    assert all(0 <= r["nAP50"] <= 100 for r in saved["runs"])
    assert set(report["targets"]) >= {"vs_shuffled_ratio", "meets_3x_shuffled", "meets_tfa"}
    table = fewshot_quality.markdown_table(saved).splitlines()
    assert len(table) == 2 + 7 and table[2].startswith("| fsod | 1 | 1 |")
    for key in ("fsod_base_training", "tfa_base_training"):
        training = saved[key]
        # three stretches, each resuming where the last stopped; curves cover all of them
        stretches = training["stretches"]
        assert len(stretches) == 3 and stretches == sorted(set(stretches))
        assert stretches[-1] == training["iterations"] >= 15
        assert len(training["loss_curve"]) == min(50, training["iterations"])
    assert "loss_match" in saved["fsod_base_training"]["loss_terms"]
    for name in ("fewshot_quality", "fewshot_quality_losses", "fewshot_quality_detections"):
        assert (out / f"{name}.png").stat().st_size > 1000


def test_fewshot_quality_combines_runs_over_base_trainings(tmp_path, restore_loggers):
    """Each run's mean over seeds is one sample; a method missing from a run adds none; a
    source's ':methods' suffix takes only those rows from it (run d: its TFA model alone)."""

    def run(name, ours, tfa=None):
        rows = [("fsod", ours), ("fsod_shuffled", 0.5)] + ([("tfa", tfa)] if tfa else [])
        summary = {
            f"{method}@5shot": {m: {"mean": v if m == "nAP50" else 0.0, "std": 9.0, "n": 3}
            for m in ("nAP50", "nAP", "bAP", "bAP50", "AP")}
            for method, v in rows
        }  # fmt: skip
        report = {"summary": summary, "fsod_base_training": {"iterations": 10}}
        (tmp_path / name).mkdir()
        (tmp_path / name / "fewshot_quality.json").write_text(json.dumps(report))
        return str(tmp_path / name)

    dirs = [run("a", 10.0, 4.0), run("b", 14.0), run("c", 12.0, 8.0)]
    dirs.append(run("d", 100.0, 6.0) + "/fewshot_quality.json:tfa")
    argv = ["--combine", *dirs, "--shots", "5", "--out-dir", str(tmp_path / "out")]
    combined = fewshot_quality.main(argv)
    assert combined["summary"]["fsod@5shot"]["nAP50"] == {"mean": 12.0, "std": pytest.approx(
        (8 / 3) ** 0.5), "n": 3}  # fmt: skip
    assert combined["summary"]["tfa@5shot"]["nAP50"] == {"mean": 6.0, "std": pytest.approx(
        (8 / 3) ** 0.5), "n": 3}  # fmt: skip
    assert combined["targets"]["vs_tfa"] == 6.0 and combined["targets"]["meets_3x_shuffled"]
    saved = json.loads((tmp_path / "out" / "fewshot_quality_combined.json").read_text())
    trainings = [r["base_training_iterations"] for r in saved["runs"]]
    assert trainings == [{"fsod_base_training": 10}] * 3 + [{}]
    assert list(saved["runs"][3]["summary"]) == ["tfa@5shot"]
    assert "| fsod | 5 | 3 | 12.00 ± 1.63 |" in fewshot_quality.markdown_table(saved, "trainings")
    with pytest.raises(FileNotFoundError, match="missing"):
        fewshot_quality.main(["--combine", str(tmp_path / "missing"), "--out-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="no \\['tfa_typo'\\]"):
        fewshot_quality.main(["--combine", dirs[0] + ":tfa_typo", "--out-dir", str(tmp_path)])


def test_fewshot_ablation_arms_are_valid_overrides_and_table():
    for opts, factor in fewshot_ablation.ARMS.values():
        get_tiny_cfg(*opts)  # raises on a key that does not exist
        assert 0 < factor <= 1
    stats = {"mean": 1.5, "std": 0.25, "n": 3}
    arm = {
        "overrides": ["FSOD.N_WAY", "2"],
        "budget_min": 2.0,
        "iterations": 100,
        "final_losses": {"loss_match": 0.3, "loss_box_reg": 0.4},
        "fsod": {"nAP50": stats, "nAP": stats, "bAP": stats},
        "fsod_shuffled": {"nAP50": stats},
    }
    rows = fewshot_ablation.table({"arms": {"2_way": arm}}).splitlines()
    assert len(rows) == 3 and "| 2_way | FSOD.N_WAY 2 | 2 | 100 | 1.50 ± 0.25 |" in rows[2]


def test_fewshot_ablation_applies_trailing_overrides_to_every_arm_before_its_own(
    tmp_path, monkeypatch
):
    calls = []
    stats = {"mean": 1.0, "std": 0.0, "n": 1}

    def fake_main(argv):
        calls.append(argv)
        summary = {"nAP50": stats, "nAP": stats, "bAP": stats}
        training = {"iterations": 3, "loss_terms": {"loss_match": [0.5, 0.4]}}
        return {
            "fsod_base_training": training,
            "summary": {"fsod@5shot": summary, "fsod_shuffled@5shot": summary},
            "wall_seconds": 1.0,
        }

    monkeypatch.setattr(fewshot_ablation.fewshot_quality, "main", fake_main)
    argv = ["--arms", "default", "base_classifier", "--out-dir", str(tmp_path), "--budget-min"]
    results = fewshot_ablation.main(argv + ["1", "MODEL.FSOD.BASE_CLASSIFIER.WEIGHT", "0.0"])
    assert calls[0][-2:] == ["MODEL.FSOD.BASE_CLASSIFIER.WEIGHT", "0.0"]
    key = "MODEL.FSOD.BASE_CLASSIFIER.WEIGHT"
    assert calls[1][-4:] == [key, "0.0", key, "1.0"]  # the arm's own override wins
    assert results["arms"]["base_classifier"]["overrides"][-1] == "1.0"
    assert json.loads((tmp_path / "fewshot_ablation.json").read_text())["arms"].keys() == {
        "default",
        "base_classifier",
    }
