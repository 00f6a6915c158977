"""Summary statistics used by every results table: mean and sample standard deviation."""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["mean_std"]


def mean_std(values: Iterable[float]) -> dict[str, float]:
    """``{"mean", "std", "n"}`` of the finite values: the mean, the *sample* standard deviation
    (ddof=1; NaN for a single value, for which it is undefined) and their count. NaN and inf
    values are left out (a metric undefined for one run, e.g. nAP without novel classes);
    without values, mean and std are NaN.
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(finite)
    if not n:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    mean = sum(finite) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1)) if n > 1 else float("nan")
    return {"mean": mean, "std": std, "n": n}
