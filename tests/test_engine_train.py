"""tools/train_net.py end to end on CPU: 2 processes (GLOO), resume, eval in 1 process,
2 "machines" on loopback, eval-only output. Tiny model, tiny toy dataset in a temp folder."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid

import pytest
import torch

from fsod_datagen.shapes import generate_toy_dataset

from .common import REPO_ROOT

pytestmark = pytest.mark.slow  # every test here trains or evaluates in 1-2 processes

TRAIN_NET = str(REPO_ROOT / "tools" / "train_net.py")
CONFIG = str(REPO_ROOT / "configs" / "quick_schedules" / "fsod_toy_tiny_train.yaml")
TOY = {"num_base": 5, "num_novel": 2, "num_train": 24, "num_val": 6, "image_size": (120, 160)}
TIMEOUT = 300


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def toy_opts(tmp_path_factory):
    """Config overrides that declare a small toy dataset (FSOD.REGISTER) and use it."""
    root = tmp_path_factory.mktemp("toy_train")
    r = generate_toy_dataset(root, **TOY)
    name = f"engine_train_{uuid.uuid4().hex[:8]}"
    entries = [
        f"name={name}_{split};json={r[split + '_json']};images={r['image_root']};"
        f"base={','.join(r['base_classes'])};novel={','.join(r['novel_classes'])}"
        for split in ("train", "val")
    ]
    return [
        "FSOD.REGISTER",
        repr(entries),
        "DATASETS.TRAIN",
        f"('{name}_train_base',)",
        "DATASETS.TEST",
        f"('{name}_val',)",
        "FSOD.TEST.SUPPORT_DATASET",
        f"{name}_train",
        "FSOD.SUPPORT.CACHE_DIR",
        str(root / "support_cache"),
    ]


def train_net(*args, env=None, wait=True):
    cmd = [sys.executable, TRAIN_NET, "--config-file", CONFIG, *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    if not wait:
        return subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    proc = subprocess.run(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT
    )
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


def metrics_lines(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f]


def fsod_metrics(output_dir, dataset):
    path = os.path.join(output_dir, "inference", dataset, "fsod_metrics_2shot_seed0.json")
    with open(path) as f:
        return json.load(f)["metrics"]["bbox"]


@pytest.fixture(scope="module")
def two_process_runs(toy_opts, tmp_path_factory):
    """2-process run to 20 iterations, then --resume to 30; and an uninterrupted 30-iteration
    run as reference."""
    base = tmp_path_factory.mktemp("ddp")
    out, ref = base / "resumed", base / "reference"
    opts = [*toy_opts, "SOLVER.CHECKPOINT_PERIOD", 10]

    def run(output_dir, max_iter, *flags):
        url = f"tcp://127.0.0.1:{free_port()}"
        return train_net(
            "--num-gpus", 2, "--dist-url", url, *flags,
            *opts, "OUTPUT_DIR", output_dir, "SOLVER.MAX_ITER", max_iter,
        )  # fmt: skip

    log20 = run(out, 20)
    shutil.copytree(out / "inference", base / "at_20" / "inference")
    log30 = run(out, 30, "--resume")
    run(ref, 30)
    dataset = toy_opts[toy_opts.index("DATASETS.TEST") + 1].strip("(),'")
    return {"out": out, "ref": ref, "base": base, "log20": log20, "log30": log30, "ds": dataset}


def test_two_processes_on_gloo(two_process_runs):
    log = two_process_runs["log20"]
    assert "World size: 2" in log
    lines = metrics_lines(two_process_runs["out"])
    assert any(m.get("iteration") == 19 and "total_loss" in m for m in lines)
    assert any(m.get("episodes_per_min", 0) > 0 for m in lines)


def test_resume_continues_the_same_schedule(two_process_runs):
    out, ref = two_process_runs["out"], two_process_runs["ref"]
    log30 = two_process_runs["log30"]
    assert re.search(r"Loading .*model_final\.pth|Resum", log30)
    iters = [m["iteration"] for m in metrics_lines(out) if "total_loss" in m]
    assert max(iters) == 29 and 20 <= min(i for i in iters if i > 19) <= 29
    # same episodes, same RNG per step: the resumed weights equal the uninterrupted run's
    resumed = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    reference = torch.load(ref / "model_final.pth", map_location="cpu", weights_only=False)
    reference = reference["model"]
    assert resumed.keys() == reference.keys()
    for k in reference:
        torch.testing.assert_close(resumed[k], reference[k], rtol=1e-4, atol=1e-5, msg=k)


def test_checkpoint_of_two_processes_evaluates_the_same_in_one(two_process_runs, toy_opts):
    base, dataset = two_process_runs["base"], two_process_runs["ds"]
    out = base / "eval_1proc"
    log = train_net(
        "--eval-only", "--num-gpus", 1, *toy_opts, "OUTPUT_DIR", out,
        "MODEL.WEIGHTS", two_process_runs["out"] / "model_0000019.pth",
    )  # fmt: skip
    during_training = fsod_metrics(base / "at_20", dataset)
    one_process = fsod_metrics(out, dataset)
    keys = [k for k in during_training if not k.startswith("AP-")]
    assert {"AP", "bAP", "nAP", "bAP50", "nAP50", "nAP75"} <= set(keys)
    for k in keys:
        a, b = during_training[k], one_process[k]
        assert a == pytest.approx(b, abs=1e-6, nan_ok=True), k
    # eval-only prints the base/novel numbers
    assert re.search(r"copypaste: AP,AP50,.*bAP,.*nAP", log)
    assert re.search(r"bAP [\d.]+ \| nAP [\d.]+", log)


def test_two_machines_one_process_each_on_loopback(toy_opts, tmp_path):
    url = f"tcp://127.0.0.1:{free_port()}"

    def machine(rank):
        flags = ["--num-machines", 2, "--machine-rank", rank, "--num-gpus", 1, "--dist-url", url]
        out = tmp_path / f"machine{rank}"
        opts = ["OUTPUT_DIR", out, "SOLVER.MAX_ITER", 4, "DATASETS.TEST", "()"]
        return train_net(*flags, *toy_opts, *opts, wait=False)

    procs = [machine(rank) for rank in (0, 1)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=TIMEOUT)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, outputs):
        assert p.returncode == 0, log[-6000:]
    lines = metrics_lines(tmp_path / "machine0")  # the global main process writes metrics
    assert max(m["iteration"] for m in lines) == 3
    assert not os.path.exists(tmp_path / "machine1" / "metrics.json")
