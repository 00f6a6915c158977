"""What fsod_d2's command-line tools share: checks that run before any work, and one-line errors.

The one-line error mechanism and the output checks are :mod:`fsod_deploy.cli`'s (torch-free,
shared with the exported runtime's tools); this module adds the errors and checks of configs,
weights and prototype files. Checks::

    check_output_dir(args.output, "--output")        # "", a file, or not writable: one line
    check_output_file(args.json, "--json")
    check_weights_file(cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS")
    check_prototype_file(args.prototypes, "--prototypes")
"""

from __future__ import annotations

import os

from fsod_deploy.cli import (
    UsageError,
    check_output_dir,
    check_output_file,
    known_errors,
    one_line_errors,
)

__all__ = [
    "UsageError",
    "check_output_dir",
    "check_output_file",
    "check_prototype_file",
    "check_weights_file",
    "fsod_d2_errors",
    "known_errors",
    "one_line_errors",
]


def fsod_d2_errors() -> tuple[type[BaseException], ...]:
    """fsod_d2's error types whose messages are written for users (see
    :func:`fsod_deploy.cli.known_errors`, which includes them)."""
    from ..config import ConfigLoadError
    from ..engine.checks import ConfigError, DatasetNotFoundError
    from ..modeling.checkpoint import WeightsError

    return (ConfigLoadError, ConfigError, DatasetNotFoundError, WeightsError)


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
