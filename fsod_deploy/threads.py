"""How many CPU threads inference uses when other processes keep the cores busy.

An inference thread pool has one thread per core by default. When other processes keep those
cores busy, each parallel operation waits for its slowest thread, which the system has
descheduled: inference on a busy machine is then many times slower with the default pool than
with one thread. :func:`free_threads` sizes the pool by the cores the others leave free (the
1-minute load average, before this process adds to it); ``OMP_NUM_THREADS``, when set, always
wins. ``fsod_d2.utils.threads.inference_threads`` applies it to torch; the ONNX Runtime
backend passes it to its sessions.
"""

from __future__ import annotations

import logging
import math
import os

__all__ = ["free_threads"]

logger = logging.getLogger(__name__)


def free_threads() -> int:
    """``OMP_NUM_THREADS`` if set, else the cores the machine's other work leaves free (at
    least 1); the choice is logged when it is below the core count."""
    cores = os.cpu_count() or 1
    requested = os.environ.get("OMP_NUM_THREADS", "").strip()
    if requested.isdigit() and int(requested) > 0:
        return int(requested)
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
    return threads
