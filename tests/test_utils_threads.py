"""fsod_d2.utils.threads.inference_threads: the cores other processes leave free, at least one;
OMP_NUM_THREADS wins; the torch pool is set to it."""

import pytest
import torch

from fsod_d2.utils.threads import inference_threads
from fsod_deploy import threads as threads_module


@pytest.mark.parametrize(
    "cores, load, expected",
    [(2, 0.1, 2), (2, 0.6, 1), (2, 1.2, 1), (2, 7.5, 1), (8, 2.4, 6), (8, 0.0, 8)],
)
def test_threads_follow_the_free_cores(monkeypatch, cores, load, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads_module.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(threads_module.os, "getloadavg", lambda: (load, load, load))
    assert inference_threads(set_torch=False) == expected


def test_omp_num_threads_wins_and_the_pool_is_set(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(threads_module.os, "getloadavg", lambda: (50.0, 50.0, 50.0))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    try:
        assert inference_threads() == 3 and torch.get_num_threads() == 3
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert inference_threads() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
