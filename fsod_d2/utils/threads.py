"""How many CPU threads inference uses when other processes keep the cores busy.

torch's intra-op thread pool has one thread per core. When other processes keep those cores
busy, each parallel operation waits for its slowest thread, which the system has descheduled:
inference on a busy machine is then many times slower with the default pool than with one
thread. :func:`inference_threads` sizes the pool by
the cores the others leave free (the 1-minute load average, before this process adds to it);
``OMP_NUM_THREADS``, when set, always wins.
"""

from __future__ import annotations

import logging
import math
import os

import torch

__all__ = ["inference_threads"]

logger = logging.getLogger(__name__)


def inference_threads(*, set_torch: bool = True) -> int:
    """The number of threads for this process's torch pool: ``OMP_NUM_THREADS`` if set, else
    the cores the machine's other work leaves free (at least 1). With ``set_torch``, the pool
    is set to it (and the choice logged when it is below the core count)."""
    cores = os.cpu_count() or 1
    requested = os.environ.get("OMP_NUM_THREADS", "").strip()
    if requested.isdigit() and int(requested) > 0:
        threads = int(requested)
    else:
        try:
            load = os.getloadavg()[0]
        except OSError:  # not available on this system
            load = 0.0
        threads = max(1, min(cores, cores - math.floor(load + 0.5)))
        if threads < cores:
            logger.info(
                "Using %d of %d CPU threads: other processes keep the others busy (1-minute load "
                "%.1f); set OMP_NUM_THREADS to choose",
                threads,
                cores,
                load,
            )
    if set_torch:
        torch.set_num_threads(threads)
    return threads
