"""Support sets from a folder of example images, as torch tensors for the model.

The folder format, its checks and the crops are :mod:`fsod_deploy.support_folder`'s (torch-free,
shared with the exported runtime); this module turns its arrays into tensors and reads the crop
parameters from a config. Layout (what ``tools/predict.py --supports DIR`` reads)::

    DIR/<class name>/*.jpg|png|...     example images of the class
    DIR/<class name>/boxes.json        optional: {"image file name": [x0, y0, x1, y1], ...}
                                       or a list of such boxes per image (one shot each)
"""

from __future__ import annotations

import torch
from detectron2.config import CfgNode

from fsod_deploy.inputs import IMAGE_EXTENSIONS
from fsod_deploy.support_folder import BOX_FILE, SupportFolderError, read_box_file
from fsod_deploy.support_folder import load_support_folder as _load_arrays

__all__ = [
    "BOX_FILE",
    "IMAGE_EXTENSIONS",
    "SupportFolderError",
    "load_support_folder",
    "load_support_folder_from_config",
    "read_box_file",
]


def load_support_folder(
    folder: str, *, size: int, context: int, image_format: str, k_shot: int = 0
) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """Per class, sorted by folder name: ``(name, uint8 (K, 3, S, S) crops, float32 (K, 4)
    XYXY boxes in crop pixels)`` (see :func:`fsod_deploy.support_folder.load_support_folder`).

    Raises:
        SupportFolderError: a missing or empty folder, an unreadable image, a malformed box file.
    """
    classes = _load_arrays(
        folder, size=size, context=context, image_format=image_format, k_shot=k_shot
    )
    return [(n, torch.from_numpy(im), torch.from_numpy(bx)) for n, im, bx in classes]


def load_support_folder_from_config(
    cfg: CfgNode, folder: str, k_shot: int = 0
) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """:func:`load_support_folder` with the crop parameters and image format of ``cfg``."""
    s = cfg.FSOD.SUPPORT
    return load_support_folder(
        folder, size=s.SIZE, context=s.CONTEXT, image_format=cfg.INPUT.FORMAT, k_shot=k_shot
    )
