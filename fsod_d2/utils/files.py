"""File helpers: the datasets root and atomic writes."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from typing import IO

__all__ = ["atomic_write", "datasets_root", "expand_path"]


def datasets_root() -> str:
    """Root of all datasets: ``$DETECTRON2_DATASETS`` (default ``datasets``, as detectron2),
    with ``~`` and ``$VARS`` expanded."""
    return os.path.expanduser(os.path.expandvars(os.getenv("DETECTRON2_DATASETS", "datasets")))


_DATASETS_VAR = re.compile(r"\$(?:DETECTRON2_DATASETS\b|\{DETECTRON2_DATASETS\})")


def expand_path(path: str) -> str:
    """``path`` with ``~`` and ``$VARS`` expanded, where ``$DETECTRON2_DATASETS`` (or
    ``${DETECTRON2_DATASETS}``) is :func:`datasets_root` also when the variable is unset, as the
    docs promise; other unset variables stay as written."""
    if "DETECTRON2_DATASETS" not in os.environ:
        path = _DATASETS_VAR.sub(lambda _: datasets_root(), path)
    return os.path.expanduser(os.path.expandvars(path))


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing; when the block ends without error it
    is renamed onto ``path`` (atomic), so readers never see a partial file and a run killed
    mid-write keeps the previous one. On error the temporary file is removed. Parent folders
    are created; the file is made readable by all (0644, as ``open`` under the usual umask)::

        with atomic_write(path) as f:
            json.dump(obj, f)
        with atomic_write(path, "wb") as f:
            torch.save(state, f)
    """
    if not mode.startswith("w"):
        raise ValueError(f"atomic_write opens files for writing ('w' or 'wb'), not {mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
