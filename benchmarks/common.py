"""Shared benchmark helpers: configs, calibrated random weights, inputs, timing, JSON output."""

import json
import logging
import os
import platform
import resource
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model

from fsod_d2.config import setup_cfg
from fsod_d2.modeling.fold_bn import frozen_bn_unfolded
from fsod_d2.utils import atomic_write

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "tiny": REPO / "configs" / "quick_schedules" / "fsod_tiny_cpu.yaml",
    "R50-C4": REPO / "configs" / "Base-FSOD-C4.yaml",
}
RESULTS = REPO / "benchmarks" / "results"
logger = logging.getLogger("fsod_d2.benchmarks")


def load_cfg(name: str, *opts):
    """The named benchmark config (unfrozen) without weights, with KEY VALUE overrides."""
    return setup_cfg(
        str(CONFIGS[name]), ["MODEL.WEIGHTS", ""] + [str(o) for o in opts], freeze=False
    )


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
        with frozen_bn_unfolded(model):  # the hooks need the norms run as modules
            features = model.backbone(images)
            name = model.roi_heads.in_features[0]
            h, w = features[name].shape[-2:]
            stride = model.backbone.output_shape()[name].stride
            box = torch.tensor(
                [[0.0, 0.0, w * stride - 1.0, h * stride - 1.0]], device=images.device
            )
            from detectron2.structures import Boxes

            model.roi_heads.roi_features(features, [Boxes(box)])
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


def sync(device=None) -> None:
    """Wait for queued CUDA work (a no-op on CPU), so that host clocks measure the work."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        if device is None or torch.device(device).type == "cuda":
            torch.cuda.synchronize()


def timed(fn, repeats: int, warmup: int = 1, min_seconds: float = 1.0, max_runs: int = 50) -> float:
    """Median wall seconds of ``fn()`` after ``warmup`` runs: at least ``repeats`` runs, more
    (up to ``max_runs``) until ``min_seconds`` have been spent, so that fast cases are not at the
    mercy of one scheduling hiccup on a shared machine."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    while len(times) < repeats or (sum(times) < min_seconds and len(times) < max_runs):
        t = time.perf_counter()
        fn()
        sync()
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
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next(ln.split(":", 1)[1].strip() for ln in f if "model name" in ln)
    except (OSError, StopIteration):
        pass
    if hasattr(os, "getloadavg"):
        info["loadavg_1_5_15"] = [round(v, 2) for v in os.getloadavg()]
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def save_json(name: str, payload: dict, out_dir=None) -> Path:
    out = Path(out_dir or os.environ.get("FSOD_BENCH_OUT", RESULTS))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    with atomic_write(path) as f:  # a run killed mid-write keeps the last file
        f.write(json.dumps(payload, indent=2))
    logger.info("wrote %s", path)
    return path


# ---------------------------------------------------------------- training episodes and steps
def train_episode(cfg, index: int = 0, *, query_size: Optional[int] = None, seed: int = 0) -> Dict:
    """One synthetic training episode in FsodRCNN's input format, at the config's sizes.

    Query: a photo (landscape, ~3:2) with shorter side ``query_size`` (default: the largest
    ``INPUT.MIN_SIZE_TRAIN``), 1-2 random boxes for each of the first
    ``min(FSOD.MAX_POSITIVE_CLASSES, N)`` episode classes; the other classes are negatives.
    Supports: ``FSOD.N_WAY * FSOD.K_SHOT`` photo crops of ``FSOD.SUPPORT.SIZE`` (class-major).
    Deterministic in ``(seed, index)``.
    """
    from detectron2.structures import Boxes, Instances

    n_way, k_shot, size = cfg.FSOD.N_WAY, cfg.FSOD.K_SHOT, cfg.FSOD.SUPPORT.SIZE
    query_size = query_size or max(cfg.INPUT.MIN_SIZE_TRAIN)
    rng = np.random.default_rng([seed, index])
    image = query_image(query_size, 1 + index % 3)  # photos 1-3 are ~3:2 landscapes
    h, w = image.shape[1:]
    boxes, classes = [], []
    for c in range(min(cfg.FSOD.MAX_POSITIVE_CLASSES, n_way)):
        for _ in range(int(rng.integers(1, 3))):
            bw, bh = rng.uniform(0.15, 0.5) * w, rng.uniform(0.15, 0.5) * h
            x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            boxes.append([x0, y0, x0 + bw, y0 + bh])
            classes.append(c)
    instances = Instances(
        (h, w),
        gt_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32)),
        gt_classes=torch.tensor(classes, dtype=torch.long),
    )
    support_images, support_boxes = support_set(n_way, k_shot, size, seed=seed * 100_003 + index)
    return {
        "image": image,
        "height": h,
        "width": w,
        "instances": instances,
        "support_images": support_images,
        "support_boxes": support_boxes,
        "support_classes": torch.arange(n_way),
    }


class TrainStep:
    """One training iteration as detectron2's trainers run it: forward (in an EventStorage),
    sum of losses, backward, SGD step with detectron2's parameter groups, momentum and weight
    decay (``detectron2.solver.build_optimizer``, minus its LR schedule).

    Args:
        cfg: the model's config (SOLVER.*); the learning rate is ``lr``: the arithmetic of a
            step does not depend on it, and a tiny one keeps random weights sane.
        amp: autocast, float16 + GradScaler as detectron2's AMPTrainer (or bfloat16) on CUDA;
            on CPU bfloat16, a functional check only.
        fast: the two changes the CPU profile points to (benchmarks/CHANGELOG.md): the model in
            channels-last memory format (oneDNN/cuDNN convolutions without layout reorders) and
            a fused SGD (one kernel over all parameters instead of a Python loop over tensors).
    """

    def __init__(
        self,
        model,
        cfg,
        *,
        lr: float = 1e-5,
        amp: bool = False,
        amp_dtype: str = "fp16",
        fast: bool = False,
    ):
        from detectron2.solver import get_default_optimizer_params
        from detectron2.utils.events import EventStorage

        self.model = model
        module = getattr(model, "module", model)
        self.device = module.device
        if fast:
            module.to(memory_format=torch.channels_last)
        params = get_default_optimizer_params(
            module, base_lr=lr, weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM
        )
        self.optimizer = torch.optim.SGD(
            params,
            lr=lr,
            momentum=cfg.SOLVER.MOMENTUM,
            nesterov=cfg.SOLVER.NESTEROV,
            weight_decay=cfg.SOLVER.WEIGHT_DECAY,
            **({"fused": True} if fast else {}),
        )
        self.amp = amp
        fp16 = amp_dtype == "fp16" and self.device.type == "cuda"
        self.amp_dtype = torch.float16 if fp16 else torch.bfloat16
        use_scaler = amp and self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.storage = EventStorage(0)
        self.last_losses: Dict[str, float] = {}

    def __call__(self, batch: List[Dict]) -> None:
        from torch.profiler import record_function  # phases named for profiles

        with record_function("step.forward"), self.storage:
            with torch.autocast(self.device.type, self.amp_dtype, enabled=self.amp):
                losses = self.model(batch)
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        with record_function("step.backward"):
            self.scaler.scale(total).backward()
        with record_function("step.optimizer"):
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.storage.iter += 1
        self.last_losses = {k: float(v.detach()) for k, v in losses.items()}
        sync(self.device)


# ---------------------------------------------------------------- memory
def rss_mb() -> float:
    """Resident set size of this process now, MiB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def max_rss_mb() -> float:
    """Peak resident set size of this process over its lifetime, MiB (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakRSS:
    """Highest RSS of this process while the ``with`` block runs, sampled every ``interval``
    seconds by a thread. Freed memory that the allocator keeps stays counted, so read it as
    an upper bound of what the block itself needed on top of ``start_mb``."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.start_mb = self.peak_mb = 0.0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, rss_mb())

    def __enter__(self) -> "PeakRSS":
        self.start_mb = self.peak_mb = rss_mb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())
