"""What the command-line tools share: checks that run before any work, and one-line errors.

A mistake in a tool's input (a config key, a file, an output folder) ends the tool with one
line, ``<tool>: error: <what and the fix>``, and exit code 1, the way argparse reports usage
errors, instead of a traceback after minutes of work. Tools wrap their ``main`` with
:func:`one_line_errors`; the error types it turns into that line are those whose messages are
written for users (:func:`known_errors`). Checks::

    check_output_dir(args.output, "--output")        # "", a file, or not writable: one line
    check_output_file(args.json, "--json")
    check_weights_file(cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS")
    check_prototype_file(args.prototypes, "--prototypes")
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "UsageError",
    "check_output_dir",
    "check_output_file",
    "check_prototype_file",
    "check_weights_file",
    "known_errors",
    "one_line_errors",
]

F = TypeVar("F", bound=Callable[..., Any])


class UsageError(ValueError):
    """Bad input to a tool (an option, a file it names); the message is one line naming it and
    the fix."""


def known_errors() -> tuple[type[BaseException], ...]:
    """The error types whose messages are written for users: one line naming the config key,
    file or option, and the fix."""
    from fsod_deploy.inputs import InputError

    from ..config import ConfigLoadError
    from ..data.support_folder import SupportFolderError
    from ..engine.checks import ConfigError, DatasetNotFoundError
    from ..modeling.checkpoint import WeightsError

    return (
        UsageError,
        InputError,
        ConfigLoadError,
        ConfigError,
        DatasetNotFoundError,
        SupportFolderError,
        WeightsError,
    )


def one_line_errors(tool: str, *extra: type[BaseException]) -> Callable[[F], F]:
    """Decorator for a tool's ``main``: an error of :func:`known_errors` (or of ``extra``) ends
    the tool with ``SystemExit("<tool>: error: <message>")``: the message on stderr, exit
    code 1, no traceback."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def main(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except known_errors() + extra as e:
                raise SystemExit(f"{tool}: error: {e}") from None

        return main  # type: ignore[return-value]

    return wrap


def _probe_writable(folder: str) -> None:
    """Create and remove a file in ``folder`` (``os.access`` says yes to root even on a
    read-only file system)."""
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_test_"):
        pass


def check_output_dir(path: str | None, option: str = "--output") -> str:
    """Create the output folder ``path`` if needed and make sure files can be written in it.

    Raises:
        UsageError: ``path`` is empty (which would write into the current folder), is a file,
            or cannot be created or written.
    """
    if path is None or not str(path).strip():
        raise UsageError(f"{option} is empty; give the folder to write to (created if needed)")
    path = str(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{option} {path} is a file, not a folder; give a folder to write to")
    try:
        os.makedirs(path, exist_ok=True)
        _probe_writable(path)
    except OSError as e:
        raise UsageError(
            f"{option} {path} cannot be written ({e.strerror or e}); give a folder you can write to"
        ) from None
    return path


def check_output_file(path: str | None, option: str) -> str:
    """Make sure the file ``path`` can be written (its folder is created if needed).

    Raises:
        UsageError: ``path`` is empty or a folder, or its folder cannot be written.
    """
    if path is None or not str(path).strip():
        raise UsageError(f"{option} is empty; give the file to write")
    path = str(path)
    if os.path.isdir(path):
        raise UsageError(f"{option} {path} is a folder; give a file name to write")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"{option} {path}: {folder} is a file, not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
        _probe_writable(folder)
    except OSError as e:
        raise UsageError(
            f"{option} {path} cannot be written ({e.strerror or e}); give a file in a folder "
            "you can write to"
        ) from None
    return path


def check_weights_file(weights: str, option: str = "MODEL.WEIGHTS") -> None:
    """A local weights file exists and is not empty (URLs are left to detectron2's
    checkpointer; truncated files are reported when they are loaded).

    Raises:
        UsageError: no weights given, no such file, a folder, or an empty file.
    """
    fix = "give the model_final.pth that tools/train_net.py wrote to its OUTPUT_DIR"
    if not weights:
        raise UsageError(f"no model weights ({option} is empty); {fix}")
    if "://" in weights:
        return
    weights = weights.split("?", 1)[0]  # detectron2 reads options after "?" (file.pth?...)
    if not os.path.exists(weights):
        raise UsageError(f"{option} {weights}: no such file; {fix}")
    if not os.path.isfile(weights):
        raise UsageError(f"{option} {weights} is a folder; {fix}")
    if os.path.getsize(weights) == 0:
        raise UsageError(f"{option} {weights} is empty (0 bytes); {fix}")


def check_prototype_file(path: str, option: str = "--prototypes") -> None:
    """``path`` is a prototype file that :meth:`fsod_d2.modeling.PrototypeSet.save` wrote
    (readable, with its fields); whether it matches the weights is checked when it is loaded.

    Raises:
        UsageError: no such file, a truncated file, or another kind of file.
    """
    import torch

    from ..modeling.support import PrototypeSet

    fix = "compute the prototypes again with --supports DIR"
    if not os.path.isfile(path):
        raise UsageError(f"{option} {path}: no such file; {fix}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types for a truncated or foreign file
        first = (str(e).strip().splitlines() or [""])[0][:120]
        raise UsageError(
            f"{option} {path} cannot be read ({type(e).__name__}: {first}); it is truncated or "
            f"not a prototype file; {fix}"
        ) from None
    expected = set(PrototypeSet.__dataclass_fields__)
    if not isinstance(state, dict) or not expected <= set(state):
        what = "model weights" if isinstance(state, dict) and "model" in state else "another file"
        raise UsageError(
            f"{option} {path} is not a prototype file saved by tools/predict.py (it looks like "
            f"{what}); {fix}"
        )
