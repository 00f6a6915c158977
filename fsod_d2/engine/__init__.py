"""Training engine: FsodTrainer and hooks."""

from .hooks import GPUStatsHook, ThroughputHook, explain_oom, gpu_stats, oom_message
from .trainer import (
    DatasetNotFoundError,
    FsodAMPTrainer,
    FsodTrainer,
    check_datasets,
    setup_cfg,
    unwrap_model,
)

__all__ = [
    "DatasetNotFoundError",
    "FsodAMPTrainer",
    "FsodTrainer",
    "GPUStatsHook",
    "ThroughputHook",
    "check_datasets",
    "explain_oom",
    "gpu_stats",
    "oom_message",
    "setup_cfg",
    "unwrap_model",
]
