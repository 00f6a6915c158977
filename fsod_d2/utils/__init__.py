"""Utilities: file helpers, statistics, visualization."""

from .files import atomic_write, datasets_root, expand_path
from .stats import mean_std

__all__ = ["atomic_write", "datasets_root", "expand_path", "mean_std"]
