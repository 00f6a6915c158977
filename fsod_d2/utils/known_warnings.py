"""Silence warnings that come from dependencies at every start and that a user cannot act on.

Each filter names one message of one dependency (by text and category); every other warning is
shown as before:

* ``torch.jit.script`` is deprecated (FutureWarning): fvcore and detectron2 script a few
  functions when they are imported;
* ``torch.meshgrid``: "in an upcoming release, it will be required to pass the indexing
  argument" (UserWarning): detectron2's anchor generator calls it without ``indexing``;
* ``is_fx_tracing will return true for both fx.symbolic_trace and torch.export`` (a log record
  of ``torch.fx._symbolic_trace``): detectron2's ROI pooler asks ``is_fx_tracing()``.

:func:`silence_known_warnings` runs when ``fsod_d2`` is imported, before detectron2's modeling
code is.
"""

import logging
import warnings

__all__ = ["KNOWN_WARNINGS", "silence_known_warnings"]

# (message regex at the start of the warning text, category)
KNOWN_WARNINGS = (
    (r"`torch\.jit\.script` is deprecated", FutureWarning),
    (
        r"torch\.meshgrid: in an upcoming release, it will be required to pass the indexing",
        UserWarning,
    ),
)
_FX_LOGGER = "torch.fx._symbolic_trace"
_FX_MESSAGE = "is_fx_tracing will return true for both fx.symbolic_trace and torch.export"


class _DropMessage(logging.Filter):
    """Drops the log records whose message starts with ``prefix``."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def silence_known_warnings() -> None:
    """Install the filters of the module docstring (idempotent)."""
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    fx_logger = logging.getLogger(_FX_LOGGER)
    if not any(isinstance(f, _DropMessage) for f in fx_logger.filters):
        fx_logger.addFilter(_DropMessage(_FX_MESSAGE))
