"""Summary statistics used by every results table: mean and sample standard deviation."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

__all__ = ["mean_std"]


def mean_std(values: Iterable[float | None]) -> dict[str, float]:
    """``{"mean", "std", "n"}`` of the finite values: the mean, the *sample* standard deviation
    (``statistics.stdev``, ddof=1; NaN for a single value, for which it is undefined) and their
    count. None, NaN and inf values are left out (a metric undefined for one run, e.g. nAP
    without novel classes); without values, mean and std are NaN.
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    nan = float("nan")
    mean = statistics.fmean(finite) if finite else nan
    std = statistics.stdev(finite) if len(finite) > 1 else nan
    return {"mean": mean, "std": std, "n": len(finite)}
