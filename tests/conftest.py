"""Session setup: support caches go to a temporary root (not the checkout's datasets/)."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _support_cache_root(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FSOD_SUPPORT_CACHE", str(tmp_path_factory.mktemp("support_cache")))
        yield os.environ["FSOD_SUPPORT_CACHE"]
