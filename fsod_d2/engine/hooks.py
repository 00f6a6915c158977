"""Training hooks: episode throughput, per-GPU utilisation/memory, out-of-memory explanations.

Everything is written into detectron2's EventStorage, so it lands in ``metrics.json`` and
TensorBoard through the usual writers.
"""

import contextlib
import logging
import time
from typing import Callable, Dict, Iterator, List, Optional

import torch
from detectron2.config import CfgNode
from detectron2.engine import HookBase
from detectron2.utils import comm

logger = logging.getLogger(__name__)

__all__ = [
    "GPUStatsHook",
    "ThroughputHook",
    "explain_oom",
    "gpu_stats",
    "is_out_of_memory",
    "oom_message",
]

_MIB = 1024.0**2


class ThroughputHook(HookBase):
    """Episodes per minute and query images per second (all processes together).

    One episode is one query image with its N*K support crops; an iteration processes
    ``episodes_per_iter`` of them over all processes. The step time is measured around
    ``run_step`` (data loading included), like detectron2's ``time`` metric.

    Writes ``episodes_per_min``, ``images_per_s`` (query images) and ``support_crops_per_s``.
    """

    def __init__(self, episodes_per_iter: int, supports_per_episode: int, warmup_iters: int = 3):
        """
        Args:
            episodes_per_iter: global batch (SOLVER.IMS_PER_BATCH after auto-scaling).
            supports_per_episode: N_WAY * K_SHOT.
            warmup_iters: first iterations left out of the run summary logged at the end.
        """
        self.episodes_per_iter = int(episodes_per_iter)
        self.supports_per_episode = int(supports_per_episode)
        self.warmup_iters = int(warmup_iters)
        self._start: Optional[float] = None
        self._total_time = 0.0
        self._counted_iters = 0

    def before_step(self):
        self._start = time.perf_counter()

    def after_step(self):
        if self._start is None:
            return
        dt = max(time.perf_counter() - self._start, 1e-9)
        self._start = None
        episodes_per_s = self.episodes_per_iter / dt
        self.trainer.storage.put_scalars(
            episodes_per_min=episodes_per_s * 60.0,
            images_per_s=episodes_per_s,
            support_crops_per_s=episodes_per_s * self.supports_per_episode,
        )
        if self.trainer.iter - self.trainer.start_iter >= self.warmup_iters:
            self._total_time += dt
            self._counted_iters += 1

    def summary(self) -> Dict[str, float]:
        """Mean throughput over the iterations after warm-up (empty if there were none)."""
        if not self._counted_iters:
            return {}
        episodes_per_s = self._counted_iters * self.episodes_per_iter / self._total_time
        return {
            "iterations": self._counted_iters,
            "episodes_per_min": episodes_per_s * 60.0,
            "images_per_s": episodes_per_s,
        }

    def after_train(self):
        s = self.summary()
        if s and comm.is_main_process():
            logger.info(
                "Throughput over %d iterations (after %d warm-up): %.1f episodes/min, "
                "%.2f query images/s (%d processes)",
                s["iterations"],
                self.warmup_iters,
                s["episodes_per_min"],
                s["images_per_s"],
                comm.get_world_size(),
            )


def gpu_stats(device: Optional[torch.device] = None) -> Dict[str, float]:
    """Memory (MiB) and utilisation (%) of this process's GPU; ``{}`` without CUDA.

    torch.cuda statistics always; device-wide used memory from cudaMemGetInfo; utilisation and
    NVML memory only if NVML (``pynvml`` / nvidia-ml-py) is importable.
    """
    if not torch.cuda.is_available():
        return {}
    device = torch.device("cuda", torch.cuda.current_device()) if device is None else device
    stats = {
        "mem_allocated_MiB": torch.cuda.memory_allocated(device) / _MIB,
        "max_mem_allocated_MiB": torch.cuda.max_memory_allocated(device) / _MIB,
        "mem_reserved_MiB": torch.cuda.memory_reserved(device) / _MIB,
    }
    try:
        free, total = torch.cuda.mem_get_info(device)
        stats["mem_used_MiB"] = (total - free) / _MIB
        stats["mem_total_MiB"] = total / _MIB
    except RuntimeError:  # some drivers / MIG slices refuse
        pass
    try:  # torch maps the device index to NVML itself (CUDA_VISIBLE_DEVICES aware)
        stats["util_percent"] = float(torch.cuda.utilization(device))
    except Exception:  # NVML absent (ModuleNotFoundError) or not usable here
        pass
    return stats


class GPUStatsHook(HookBase):
    """Every ``period`` iterations, record each process's GPU memory and utilisation.

    Collective: all ranks gather their stats so the main process (which writes metrics.json
    and TensorBoard) records every GPU, as ``gpu<global rank>/<stat>``. Does nothing when
    ``stats_fn`` returns nothing on every rank (CPU training).
    """

    def __init__(self, period: int, stats_fn: Callable[[], Dict[str, float]] = gpu_stats):
        self.period = int(period)
        self.stats_fn = stats_fn

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if self.period <= 0 or (next_iter % self.period and next_iter != self.trainer.max_iter):
            return
        per_rank: List[Dict[str, float]] = comm.all_gather(self.stats_fn())
        scalars = {
            f"gpu{rank}/{name}": value
            for rank, stats in enumerate(per_rank)
            for name, value in stats.items()
        }
        if scalars:
            self.trainer.storage.put_scalars(**scalars, smoothing_hint=False)


# ---------------------------------------------------------------------------- out of memory
_OOM_PATTERNS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA OOM (``torch.OutOfMemoryError``) and CPU allocator failures."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(p in str(error) for p in _OOM_PATTERNS)


def oom_message(cfg: CfgNode, error: BaseException, where: str = "a training step") -> str:
    """The explanation attached to an out-of-memory error: the knobs that set memory use,
    their current values, and what to change."""
    world = comm.get_world_size()
    per_process = cfg.SOLVER.IMS_PER_BATCH // max(world, 1)
    n, k = cfg.FSOD.N_WAY, cfg.FSOD.K_SHOT
    lines = [
        f"Out of memory during {where} (process {comm.get_rank()} of {world}). "
        "Memory use grows with these settings (current values):",
        f"  FSOD.K_SHOT={k}, FSOD.N_WAY={n}: {n * k} support crops per episode",
        f"  FSOD.SUPPORT.SIZE={cfg.FSOD.SUPPORT.SIZE}: support crops are SIZE x SIZE",
        f"  INPUT.MIN_SIZE_TRAIN={tuple(cfg.INPUT.MIN_SIZE_TRAIN)}, "
        f"INPUT.MAX_SIZE_TRAIN={cfg.INPUT.MAX_SIZE_TRAIN}: query input sizes",
        f"  SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH}: {per_process} episodes per process",
        f"  SOLVER.AMP.ENABLED={cfg.SOLVER.AMP.ENABLED}: mixed precision roughly halves "
        "activation memory on GPUs",
        f"  MODEL.FSOD.PAIRS_PER_IMAGE={cfg.MODEL.FSOD.PAIRS_PER_IMAGE}, "
        f"MODEL.RPN.POST_NMS_TOPK_TRAIN={cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN}: ROIs per episode",
        "Try SOLVER.AMP.ENABLED True, fewer episodes per process (lower SOLVER.IMS_PER_BATCH or "
        "use more GPUs), a smaller FSOD.SUPPORT.SIZE or K_SHOT/N_WAY, or smaller query sizes.",
    ]
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / _MIB
        lines.append(f"Peak memory allocated by this process so far: {peak:.0f} MiB.")
    lines.append(f"Original error: {type(error).__name__}: {error}")
    return "\n".join(lines)


@contextlib.contextmanager
def explain_oom(cfg: CfgNode, where: str = "a training step") -> Iterator[None]:
    """Re-raise an out-of-memory error as ``torch.OutOfMemoryError`` with :func:`oom_message`."""
    try:
        yield
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        raise torch.OutOfMemoryError(oom_message(cfg, e, where)) from e
