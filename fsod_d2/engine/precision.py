"""Mixed-precision choice for training (``SOLVER.AMP.ENABLED`` + ``FSOD.ENGINE.AMP_DTYPE``)."""

import logging
from typing import Optional

import torch

logger = logging.getLogger(__name__)

_AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
AMP_DTYPE_CHOICES = ("auto", *_AMP_DTYPES)


def resolve_amp_dtype(
    setting: str, device: str, bf16_supported: Optional[bool] = None
) -> torch.dtype:
    """The autocast dtype of ``FSOD.ENGINE.AMP_DTYPE`` on ``device``.

    * CUDA: ``auto`` is bfloat16 where the GPU supports it (Ampere and newer: the float32
      exponent range, so no loss scaling and no overflow), else float16 (with a GradScaler);
      ``bfloat16`` on a GPU without it is an error, ``float16`` is honoured.
    * CPU: bfloat16 whatever the setting (CPU autocast runs bfloat16; ``float16`` logs a
      warning).

    ``bf16_supported`` overrides the GPU query (tests).
    """
    key = str(setting).lower()
    if key not in AMP_DTYPE_CHOICES:
        raise ValueError(
            f"FSOD.ENGINE.AMP_DTYPE must be one of {AMP_DTYPE_CHOICES}, not {setting!r}"
        )
    if torch.device(device).type != "cuda":
        if key == "float16":
            logger.warning("FSOD.ENGINE.AMP_DTYPE=float16 on %s: using bfloat16 autocast", device)
        return torch.bfloat16
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if key == "auto":
        return torch.bfloat16 if bf16_supported else torch.float16
    if key == "bfloat16" and not bf16_supported:
        raise ValueError(
            "FSOD.ENGINE.AMP_DTYPE=bfloat16 but this GPU does not support bfloat16: use "
            "'float16' or 'auto'"
        )
    return _AMP_DTYPES[key]


def needs_grad_scaler(dtype: torch.dtype, device: str) -> bool:
    """Loss scaling is needed for float16 on CUDA only (bfloat16 has float32's range)."""
    return dtype == torch.float16 and torch.device(device).type == "cuda"
