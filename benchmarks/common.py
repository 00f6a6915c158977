"""Shared benchmark helpers: configs, calibrated random weights, inputs, timing, JSON output."""

import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model

from fsod_d2 import add_fsod_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "tiny": REPO / "configs" / "quick_schedules" / "fsod_tiny_cpu.yaml",
    "R50-C4": REPO / "configs" / "Base-FSOD-C4.yaml",
}
RESULTS = REPO / "benchmarks" / "results"
logger = logging.getLogger("fsod_d2.benchmarks")


def load_cfg(name: str, *opts):
    cfg = get_cfg()
    add_fsod_config(cfg)
    cfg.merge_from_file(str(CONFIGS[name]))
    cfg.merge_from_list(["MODEL.WEIGHTS", ""] + [str(o) for o in opts])
    return cfg


@torch.no_grad()
def calibrate_frozen_bn(model: torch.nn.Module, images: torch.Tensor) -> None:
    """Give a randomly initialised FrozenBN network sane activations, as pretrained weights
    would: set each FrozenBN's statistics from one forward pass over ``images`` (normalized).
    Without it, activations of a random R-50 explode, no proposal survives and timings lie."""

    def hook(module, args):
        x = args[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)) + module.eps)

    layers = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    if not layers:
        return
    handles = [m.register_forward_pre_hook(hook) for m in layers]
    try:
        features = model.backbone(images)
        name = model.roi_heads.in_features[0]
        h, w = features[name].shape[-2:]
        stride = model.backbone.output_shape()[name].stride
        box = torch.tensor([[0.0, 0.0, w * stride - 1.0, h * stride - 1.0]])
        from detectron2.structures import Boxes

        model.roi_heads._shared_roi_transform([features[name]], [Boxes(box)])
    finally:
        for handle in handles:
            handle.remove()


def build_calibrated_model(cfg, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    image = query_image(cfg.INPUT.MIN_SIZE_TEST)
    calibrate_frozen_bn(model, model.preprocess_image([{"image": image}]).tensor)
    return model


def _photos():
    from skimage import data

    return [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]


def query_image(short_side: int, index: int = 0) -> torch.Tensor:
    """A real photo (scikit-image) resized to ``short_side``, as a BGR uint8 CHW tensor."""
    import cv2

    img = _photos()[index % 4][:, :, ::-1]
    h, w = img.shape[:2]
    scale = short_side / min(h, w)
    img = cv2.resize(np.ascontiguousarray(img), (round(w * scale), round(h * scale)))
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def support_set(num_classes: int, shots: int, size: int, seed: int = 0):
    """``num_classes * shots`` photo crops (class-major) with whole-crop boxes."""
    import cv2

    rng = np.random.default_rng(seed)
    photos = _photos()
    crops = []
    for i in range(num_classes * shots):
        img = photos[i % len(photos)]
        y, x = rng.integers(0, img.shape[0] - 128), rng.integers(0, img.shape[1] - 128)
        crop = cv2.resize(np.ascontiguousarray(img[y : y + 128, x : x + 128, ::-1]), (size, size))
        crops.append(crop.transpose(2, 0, 1))
    images = torch.from_numpy(np.ascontiguousarray(np.stack(crops)))
    boxes = torch.tensor([[0.0, 0.0, size - 1.0, size - 1.0]]).repeat(len(crops), 1)
    return images, boxes


def timed(fn, repeats: int, warmup: int = 1, min_seconds: float = 1.0, max_runs: int = 50) -> float:
    """Median wall seconds of ``fn()`` after ``warmup`` runs: at least ``repeats`` runs, more
    (up to ``max_runs``) until ``min_seconds`` have been spent, so that fast cases are not at the
    mercy of one scheduling hiccup on a shared machine."""
    for _ in range(warmup):
        fn()
    times = []
    while len(times) < repeats or (sum(times) < min_seconds and len(times) < max_runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def timed_interleaved(
    fns: dict, repeats: int, warmup: int = 1, min_seconds: float = 1.0, max_runs: int = 50
) -> dict:
    """Median wall seconds of each callable in ``fns``, timed in alternation (one run of each per
    round) so that load from other processes hits every variant alike. Same stopping rule as
    :func:`timed`, applied to the slowest variant."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    while True:
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
        rounds = len(next(iter(times.values())))
        spent = max(sum(v) for v in times.values())
        if rounds >= repeats and (spent >= min_seconds or rounds >= max_runs):
            break
    return {k: float(np.median(v)) for k, v in times.items()}


def machine_info() -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def save_json(name: str, payload: dict, out_dir=None) -> Path:
    out = Path(out_dir or os.environ.get("FSOD_BENCH_OUT", RESULTS))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    logger.info("wrote %s", path)
    return path
