"""The PyTorch model behind :class:`fsod_deploy.detector.Detector`'s interface.

:class:`TorchDetector` is what ``tools/predict.py`` (default backend) and ``tools/app.py`` run:
the model built from a config and its weights, supports encoded with
``FsodRCNN.encode_supports`` and images detected with ``FsodRCNN.detect_images`` (the methods
the exported graphs are traced from), with the pre- and post-processing that the exported
runtime uses too.
"""

from __future__ import annotations

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model

from fsod_deploy.detector import Detector
from fsod_deploy.prototypes import PrototypeFileError, Prototypes

from .modeling.checkpoint import load_checkpoint
from .modeling.support import PrototypeSet, StalePrototypeError, weights_fingerprint

__all__ = ["TorchDetector"]


class TorchDetector(Detector):
    """An FsodRCNN in eval mode (see the module docstring).

    Args:
        cfg: the model's config (``MODEL.WEIGHTS``: the weights to load).
        config_file: the file ``cfg`` was read from (named in messages about the weights).
    """

    def __init__(self, cfg: CfgNode, *, config_file: str = ""):
        self.cfg = cfg
        self.model = build_model(cfg)
        load_checkpoint(self.model, cfg.MODEL.WEIGHTS, config_file=config_file)
        self.model.eval()
        self.source = cfg.MODEL.WEIGHTS or "the config's initial weights"
        self.input_format = cfg.INPUT.FORMAT
        self.support_size = cfg.FSOD.SUPPORT.SIZE
        self.support_context = cfg.FSOD.SUPPORT.CONTEXT
        self.test_min_size = cfg.INPUT.MIN_SIZE_TEST
        self.test_max_size = cfg.INPUT.MAX_SIZE_TEST
        self.weights_fingerprint = weights_fingerprint(self.model)
        size = self.support_size
        with torch.no_grad():  # the widths of a prototype, from one empty-looking crop
            kernels, rois = self.model.encode_supports(
                torch.zeros(1, 3, size, size, dtype=torch.uint8),
                torch.tensor([[0.0, 0.0, float(size), float(size)]]),
            )
        self.rpn_kernel_dim = int(kernels.shape[1])
        self.roi_prototype_shape = tuple(int(v) for v in rois.shape[1:])

    @torch.no_grad()
    def encode_supports(self, crops: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, ...]:
        kernels, rois = [], []
        for i in range(0, len(crops), 32):  # FsodRCNN.compute_prototypes' batch
            k, r = self.model.encode_supports(
                torch.from_numpy(np.ascontiguousarray(crops[i : i + 32])),
                torch.from_numpy(np.ascontiguousarray(boxes[i : i + 32], dtype=np.float32)),
            )
            kernels.append(k.float().cpu().numpy())
            rois.append(r.float().cpu().numpy())
        return np.concatenate(kernels), np.concatenate(rois)

    @torch.no_grad()
    def detect_resized(self, chw: np.ndarray, prototypes: Prototypes) -> tuple[np.ndarray, ...]:
        device = self.model.device
        images = self.model.preprocess_image([{"image": torch.from_numpy(chw)}])
        boxes, scores, index = self.model.detect_images(
            images,
            torch.from_numpy(prototypes.rpn_kernels).to(device),
            torch.from_numpy(prototypes.roi_prototypes).to(device),
        )[0]
        return boxes.float().cpu().numpy(), scores.float().cpu().numpy(), index.cpu().numpy()

    def load_prototypes(self, path: str) -> Prototypes:
        """A prototype file of ``tools/predict.py`` (``.pth``) or the portable ``.npz``,
        checked against these weights."""
        if path.endswith(".npz"):
            return super().load_prototypes(path)
        try:
            prototypes = PrototypeSet.load(path, weights_fingerprint=self.weights_fingerprint)
        except StalePrototypeError as e:
            raise PrototypeFileError(f"{e}; or pass --supports DIR instead") from None
        prototypes = prototypes.to_numpy()
        self.check_prototypes(prototypes, path)
        return prototypes
