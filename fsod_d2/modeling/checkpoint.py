"""Loading weights with a check that they are weights of this model.

detectron2's :class:`DetectionCheckpointer` loads what fits and logs one line per tensor that
does not: weights trained with another config give a few hundred log lines, a mostly random
model and no error. :class:`FsodCheckpointer` loads the same files the same way, and

* refuses weights whose tensors mostly do not fit the model (not in it, or another shape) with
  one line naming the weights and the config (:class:`WeightsMismatchError`);
* reports a file with weights for the backbone only (ImageNet weights, e.g.
  ``detectron2://ImageNetPretrained/MSRA/R-50.pkl``) as such: the rest of the model starts from
  its initialisation, as intended when training starts from a pretrained backbone;
* refuses a missing, truncated or unreadable file with one line (:class:`WeightsFileError`);
* refuses a file without weights for a part of the model that was built to receive them from
  the checkpoint (a torchvision backbone skips its ImageNet file when ``MODEL.WEIGHTS`` is set,
  see :mod:`fsod_d2.modeling.torchvision_backbone`).

:class:`~fsod_d2.engine.FsodTrainer` uses it; inference code calls :func:`load_checkpoint`.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterable

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from torch import nn

from ..utils.text import count

logger = logging.getLogger(__name__)

__all__ = [
    "BACKBONE_PREFIXES",
    "FsodCheckpointer",
    "WeightsError",
    "WeightsFileError",
    "WeightsMismatchError",
    "check_weights_fit",
    "check_weights_readable",
    "load_checkpoint",
    "weights_to_load",
]

# Parts of a C4 detector that pretrained classification weights cover: the trunk and the
# stride-32 stage that runs on each box.
BACKBONE_PREFIXES = ("backbone.", "roi_heads.res5.")
# The share of a file's tensors that must fit the model (in it, same shape).
MIN_FIT = 0.5
# Attribute of a module built without its pretrained weights because the checkpoint provides
# them: loading a checkpoint without weights for it is an error.
FROM_CHECKPOINT_ATTR = "weights_from_checkpoint"


class WeightsError(ValueError):
    """Weights that cannot be used with this model; the message is one line naming the file."""


class WeightsFileError(WeightsError):
    """The weights file is missing, truncated or not a weights file."""


class WeightsMismatchError(WeightsError):
    """The weights are those of another model (most of their tensors do not fit this one)."""


def _groups(keys: Iterable[str]) -> list[str]:
    """Module prefixes of ``keys`` (``roi_heads.relation``), in order of appearance."""
    return list(dict.fromkeys(".".join(k.split(".")[:2]) for k in keys))


class FsodCheckpointer(DetectionCheckpointer):
    """:class:`DetectionCheckpointer` that refuses weights of another model (see the module
    docstring). ``config_file`` names the model's config in messages."""

    def __init__(self, model: nn.Module, save_dir: str = "", *, config_file: str = "", **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.config_file = str(config_file or "")
        self._path = ""

    @classmethod
    def like(cls, other: DetectionCheckpointer, *, config_file: str = "") -> FsodCheckpointer:
        """The same model, folder, disk setting and checkpointables as ``other``."""
        return cls(
            other.model,
            other.save_dir,
            config_file=config_file,
            save_to_disk=other.save_to_disk,
            **copy.copy(other.checkpointables),
        )

    def _model_name(self) -> str:
        return f"the model of {self.config_file}" if self.config_file else "this config's model"

    def load(self, path: str, *args, **kwargs):
        local = (path or "").split("?", 1)[0]  # detectron2 reads options after "?" (f.pth?...)
        if path and "://" not in path and not os.path.isfile(local):
            raise WeightsFileError(
                f"weights file {path} does not exist; give the model_final.pth that "
                "tools/train_net.py wrote to its OUTPUT_DIR (MODEL.WEIGHTS, or --weights)"
            )
        self._path = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._path = ""

    def _load_file(self, filename: str):
        try:
            return super()._load_file(filename)
        except Exception as e:  # torch.load / pickle raise many types for a bad file
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise WeightsFileError(
                f"weights file {self._path or filename} cannot be read ({type(e).__name__}: "
                f"{first}); it is truncated or not a checkpoint: copy it again or give another"
            ) from None

    def _load_model(self, checkpoint):
        n_file = len(checkpoint.get("model", {}))
        incompatible = super()._load_model(checkpoint)
        self._check_fit(incompatible, n_file)
        return incompatible

    def _check_fit(self, incompatible, n_file: int) -> None:
        path = self._path or "the checkpoint"
        if n_file == 0:
            raise WeightsFileError(f"weights file {path} holds no model weights")
        unexpected = list(incompatible.unexpected_keys)
        wrong_shape = list(incompatible.incorrect_shapes)
        if len(unexpected) + len(wrong_shape) > (1 - MIN_FIT) * n_file:
            example = (
                f"{wrong_shape[0][0]} is {list(wrong_shape[0][1])} in the file, "
                f"{list(wrong_shape[0][2])} in the model"
                if wrong_shape
                else f"{unexpected[0]} is not in the model"
            )
            raise WeightsMismatchError(
                f"the weights {path} do not fit {self._model_name()}: "
                f"{len(unexpected) + len(wrong_shape)} of {count(n_file, 'tensor')} in the "
                f"file are not in the model or have another shape (e.g. {example}); give the "
                "config file these weights were trained with"
            )
        missing = set(incompatible.missing_keys)
        for name, module in self.model.named_modules():
            if getattr(module, FROM_CHECKPOINT_ATTR, False):
                keys = [f"{name}.{k}" for k in module.state_dict()]
                if any(k in missing for k in keys):
                    raise WeightsMismatchError(
                        f"the weights {path} have no weights for {name} of "
                        f"{self._model_name()}, which was built without its pretrained weights "
                        "because MODEL.WEIGHTS is set: give a checkpoint of this model, or "
                        "MODEL.WEIGHTS '' to start from the pretrained weights"
                    )
        state = self.model.state_dict()
        loaded = [k for k in state if k not in missing]
        rest = [k for k in state if k in missing]
        if rest and loaded and all(k.startswith(BACKBONE_PREFIXES) for k in loaded):
            logger.info(
                "%s: backbone weights only (%s of %s); %s of %s start from their initialisation",
                path,
                count(len(loaded), "tensor"),
                ", ".join(
                    p.rstrip(".") for p in BACKBONE_PREFIXES if any(k.startswith(p) for k in loaded)
                ),
                count(len(rest), "tensor"),
                ", ".join(_groups(rest)),
            )


def load_checkpoint(model: nn.Module, weights: str, *, config_file: str = "") -> None:
    """Load ``weights`` (a file or URL detectron2 reads) into ``model`` with
    :class:`FsodCheckpointer`; "" loads nothing.

    Raises:
        WeightsFileError: a missing, truncated or unreadable file.
        WeightsMismatchError: weights of another model.
    """
    FsodCheckpointer(model, config_file=config_file).load(weights)


def check_weights_fit(cfg: CfgNode, *, config_file: str = "") -> None:
    """Build ``cfg``'s model on the CPU and load ``MODEL.WEIGHTS`` into it: raises what
    :func:`load_checkpoint` raises, before processes are started or data is prepared."""
    from detectron2.modeling import build_model

    if not cfg.MODEL.WEIGHTS:
        return
    cpu = cfg.clone()
    cpu.defrost()
    cpu.MODEL.DEVICE = "cpu"
    load_checkpoint(build_model(cpu), cfg.MODEL.WEIGHTS, config_file=config_file)


class _FileReader(FsodCheckpointer):
    """Reads a checkpoint file without loading it into a model (its keys are not compared)."""

    def _load_model(self, checkpoint):
        return None


def weights_to_load(cfg: CfgNode, resume: bool) -> str:
    """The file ``resume_or_load`` reads: with ``resume``, the last checkpoint of
    ``cfg.OUTPUT_DIR`` if there is one, else ``cfg.MODEL.WEIGHTS``."""
    last = FsodCheckpointer(nn.Module(), save_dir=cfg.OUTPUT_DIR)
    return last.get_checkpoint_file() if resume and last.has_checkpoint() else cfg.MODEL.WEIGHTS


def check_weights_readable(path: str) -> None:
    """Raise :class:`WeightsFileError` unless ``path`` is empty, a URL, or a readable checkpoint
    file: the read the trainer will do, done early (before processes are spawned, so that the
    error is one line from the launching process)."""
    if path and "://" not in path:
        _FileReader(nn.Module()).load(path, checkpointables=[])
