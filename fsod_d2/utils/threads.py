"""Torch's inference thread pool sized by :func:`fsod_deploy.threads.free_threads` (the cores
other processes leave free; ``OMP_NUM_THREADS`` wins)."""

from __future__ import annotations

import torch

from fsod_deploy.threads import free_threads

__all__ = ["inference_threads"]


def inference_threads(*, set_torch: bool = True) -> int:
    """The number of threads for this process's torch pool (:func:`free_threads`); with
    ``set_torch``, the pool is set to it."""
    threads = free_threads()
    if set_torch:
        torch.set_num_threads(threads)
    return threads
