"""Training engine: FsodTrainer, configuration checks and hooks."""

from .checks import ConfigError, DatasetNotFoundError, check_config, check_datasets
from .hooks import GPUStatsHook, ThroughputHook, explain_oom, gpu_stats, oom_message
from .trainer import FsodAMPTrainer, FsodTrainer, setup_cfg, unwrap_model

__all__ = [
    "ConfigError",
    "DatasetNotFoundError",
    "FsodAMPTrainer",
    "FsodTrainer",
    "GPUStatsHook",
    "ThroughputHook",
    "check_config",
    "check_datasets",
    "explain_oom",
    "gpu_stats",
    "oom_message",
    "setup_cfg",
    "unwrap_model",
]
