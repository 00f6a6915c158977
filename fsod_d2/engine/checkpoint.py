"""Checkpoint loading that fails in one line: a missing, truncated or corrupt weights file names
the file and what to do, instead of a traceback from deep inside ``torch.load`` or pickle.

:class:`FsodCheckpointer` is detectron2's ``DetectionCheckpointer`` with that error
(:class:`CheckpointError`); the trainer and ``tools/train_net.py --eval-only`` use it.
:func:`check_weights_file` does the same read early: ``tools/train_net.py`` calls it (on
:func:`weights_to_load`) before it starts processes.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from torch import nn

__all__ = ["CheckpointError", "FsodCheckpointer", "check_weights_file", "weights_to_load"]


class CheckpointError(ValueError):
    """A weights file that does not exist or cannot be read; the message is one line."""


def _is_url(path: str) -> bool:
    return "://" in path  # detectron2://, https://, ...: fetched by detectron2's path manager


def _unreadable(path: str, error: BaseException) -> CheckpointError:
    detail = " ".join(str(error).split())[:200] or "no detail"
    return CheckpointError(
        f"Weights file {path} cannot be read ({type(error).__name__}: {detail}): it is truncated "
        "or not a checkpoint. Copy or download it again, or point MODEL.WEIGHTS (or --weights) at "
        "another file."
    )


class FsodCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose loading raises :class:`CheckpointError` (one line) for a
    local weights file that is missing or cannot be read. Everything else (formats, model zoo
    URLs, key matching, ``resume_or_load``, saving) is detectron2's."""

    def load(self, path: str, *args, **kwargs):
        local = urlparse(path)._replace(query="").geturl() if path else path
        if local and not _is_url(local) and not os.path.isfile(local):
            raise CheckpointError(
                f"Weights file {local} does not exist: check MODEL.WEIGHTS (or --weights), or use "
                "MODEL.WEIGHTS '' to start from the config's initialisation."
            )
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename: str):
        try:
            return super()._load_file(filename)
        except Exception as e:  # torch.load / pickle: RuntimeError, UnpicklingError, EOFError...
            raise _unreadable(filename, e) from e


class _FileReader(FsodCheckpointer):
    """Reads a checkpoint file without loading it into a model (its keys are not compared)."""

    def _load_model(self, checkpoint):
        return None


def weights_to_load(cfg: CfgNode, resume: bool) -> str:
    """The file ``resume_or_load`` reads: with ``resume``, the last checkpoint of
    ``cfg.OUTPUT_DIR`` if there is one, else ``cfg.MODEL.WEIGHTS``."""
    last = FsodCheckpointer(nn.Module(), save_dir=cfg.OUTPUT_DIR)
    return last.get_checkpoint_file() if resume and last.has_checkpoint() else cfg.MODEL.WEIGHTS


def check_weights_file(path: str) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is empty, a URL, or a readable checkpoint
    file: the read the trainer will do, done early (e.g. before processes are spawned, so that
    the error is one line from the launching process)."""
    if path and not _is_url(path):
        _FileReader(nn.Module()).load(path, checkpointables=[])
