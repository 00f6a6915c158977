"""What the command-line tools share, without PyTorch: one-line errors and output checks.

A mistake in a tool's input (an option, a file, an output folder) ends the tool with one line,
``<tool>: error: <what and the fix>``, and exit code 1, the way argparse reports usage errors,
instead of a traceback. Tools wrap their ``main`` with :func:`one_line_errors`; the error types
it turns into that line are those whose messages are written for users (:func:`known_errors`).
fsod_d2's tools use the same functions (``fsod_d2.utils.cli`` adds its checks of configs,
weights and prototype files).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "UsageError",
    "add_inference_options",
    "check_output_dir",
    "check_output_file",
    "known_errors",
    "one_line_errors",
]

F = TypeVar("F", bound=Callable[..., Any])


def add_inference_options(parser: argparse.ArgumentParser) -> None:
    """The options every inference tool ends with: ``--threads`` and config overrides."""
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads (default: the cores other processes leave free; OMP_NUM_THREADS)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")


class UsageError(ValueError):
    """Bad input to a tool (an option, a file it names); the message is one line naming it and
    the fix."""


def known_errors() -> tuple[type[BaseException], ...]:
    """The error types whose messages are written for users: one line naming the option, file
    or config key, and the fix. fsod_d2's are included once fsod_d2 is imported (only then can
    they be raised)."""
    from .inputs import InputError
    from .prototypes import PrototypeFileError
    from .runtime import ModelFolderError
    from .support_folder import SupportFolderError

    errors = (UsageError, InputError, PrototypeFileError, ModelFolderError, SupportFolderError)
    if "fsod_d2" in sys.modules:
        from fsod_d2.utils.cli import fsod_d2_errors

        errors += fsod_d2_errors()
    return errors


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
