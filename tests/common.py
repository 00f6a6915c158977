"""Shared test helpers: tiny CPU configs and synthetic inputs."""

from pathlib import Path

from detectron2.config import CfgNode, get_cfg

from fsod_d2 import add_fsod_config

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
TINY_CONFIG = CONFIG_DIR / "quick_schedules" / "fsod_tiny_cpu.yaml"


def get_tiny_cfg(*opts: str) -> CfgNode:
    """The tiny CPU config (tests/benchmarks), with optional KEY VALUE overrides."""
    cfg = get_cfg()
    add_fsod_config(cfg)
    cfg.merge_from_file(str(TINY_CONFIG))
    if opts:
        cfg.merge_from_list(list(opts))
    return cfg
