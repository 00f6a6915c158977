"""Training engine: FsodTrainer, configuration checks and hooks."""

from .checkpoint import CheckpointError, FsodCheckpointer, check_weights_file, weights_to_load
from .checks import ConfigError, DatasetNotFoundError, check_config, check_datasets
from .hooks import GPUStatsHook, ThroughputHook, explain_oom, gpu_stats, oom_message
from .trainer import FsodAMPTrainer, FsodTrainer, setup_cfg, unwrap_model

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DatasetNotFoundError",
    "FsodAMPTrainer",
    "FsodCheckpointer",
    "FsodTrainer",
    "GPUStatsHook",
    "ThroughputHook",
    "check_config",
    "check_datasets",
    "check_weights_file",
    "explain_oom",
    "gpu_stats",
    "oom_message",
    "setup_cfg",
    "unwrap_model",
    "weights_to_load",
]
