"""Utilities: file helpers, statistics, visualization."""

from .files import atomic_write, datasets_root
from .stats import mean_std

__all__ = ["atomic_write", "datasets_root", "mean_std"]
