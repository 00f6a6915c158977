"""What a few-shot detector does around its model, whatever runs the model.

:class:`Detector` turns support folders into :class:`~fsod_deploy.prototypes.Prototypes` and
images into :class:`Detections`, with the model's own pre- and post-processing
(:mod:`fsod_deploy.images`). A backend implements two methods: :meth:`Detector.encode_supports`
(support crops -> per-shot embeddings) and :meth:`Detector.detect_resized` (one test-resized
image + prototypes -> detections in its pixels). ONNX Runtime is one
(:class:`fsod_deploy.runtime.OnnxDetector`), the PyTorch model the other
(``fsod_d2.predictor.TorchDetector``): ``tools/predict.py`` and ``tools/app.py`` use either
through this interface, so they cannot drift apart.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .images import convert_bgr, resize_for_test
from .prototypes import PrototypeFileError, Prototypes, support_fingerprint
from .support_folder import load_support_folder

__all__ = ["Detections", "Detector", "rescale_boxes"]


class Detections(NamedTuple):
    """Detections of one image, in its pixels, highest score first."""

    boxes: np.ndarray  # (D, 4) float32 XYXY
    scores: np.ndarray  # (D,) float32
    class_ids: np.ndarray  # (D,) int64: the prototypes' class ids


def rescale_boxes(
    boxes: np.ndarray, from_hw: Sequence[int], to_hw: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of the resized image -> boxes of the original, clipped to it, and the mask of the
    non-empty ones (detectron2's ``detector_postprocess``, in float32 as the model's boxes)."""
    scale = np.array([to_hw[1] / from_hw[1], to_hw[0] / from_hw[0]] * 2, dtype=np.float32)
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * scale
    out[:, 0::2] = out[:, 0::2].clip(0, to_hw[1])
    out[:, 1::2] = out[:, 1::2].clip(0, to_hw[0])
    keep = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
    return out, keep


class Detector(abc.ABC):
    """A few-shot detector behind one interface (see the module docstring).

    Attributes set by a backend: ``input_format`` ("RGB"/"BGR", INPUT.FORMAT),
    ``support_size`` and ``support_context`` (FSOD.SUPPORT.SIZE/CONTEXT), ``test_min_size`` and
    ``test_max_size`` (INPUT.MIN/MAX_SIZE_TEST), ``weights_fingerprint``, ``rpn_kernel_dim`` and
    ``roi_prototype_shape`` (the prototypes' widths), ``source`` (the weights or folder, for
    messages).
    """

    input_format: str
    support_size: int
    support_context: int
    test_min_size: int
    test_max_size: int
    weights_fingerprint: str
    rpn_kernel_dim: int
    roi_prototype_shape: tuple[int, ...]
    source: str

    # ---------------------------------------------------------------- a backend's two methods
    @abc.abstractmethod
    def encode_supports(self, crops: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, ...]:
        """Support crops (S, 3, SIZE, SIZE) uint8 in the input format and boxes (S, 4) in crop
        pixels -> per-shot RPN kernels (S, D) and ROI features (S, C5, h, w)."""

    @abc.abstractmethod
    def detect_resized(self, chw: np.ndarray, prototypes: Prototypes) -> tuple[np.ndarray, ...]:
        """One test-resized (3, H, W) uint8 image in the input format -> boxes (D, 4) in its
        pixels, scores (D,), indices (D,) into ``prototypes``."""

    # ---------------------------------------------------------------- prototypes
    def load_support_folder(self, folder: str, k_shot: int = 0):
        """A support folder (``tools/predict.py``'s format) cropped as this model's supports:
        per class ``(name, crops, boxes)``, see :mod:`fsod_deploy.support_folder`."""
        return load_support_folder(
            folder,
            size=self.support_size,
            context=self.support_context,
            image_format=self.input_format,
            k_shot=k_shot,
        )

    def prototypes(
        self, classes: Sequence[tuple[str, np.ndarray, np.ndarray]], first_id: int = 0
    ) -> Prototypes:
        """Prototypes of ``classes`` [(name, crops, boxes)] with ids ``first_id``,
        ``first_id + 1``, ...; classes may have different numbers of shots."""
        parts = []
        for i, (name, crops, boxes) in enumerate(classes):
            kernels, rois = self.encode_supports(crops, boxes)
            ids = [first_id + i]
            parts.append(
                Prototypes.from_shots(
                    kernels,
                    rois,
                    ids,
                    [name],
                    weights_fingerprint=self.weights_fingerprint,
                    support_fingerprint=support_fingerprint(crops, boxes, ids, len(crops)),
                )
            )
        return Prototypes.concatenate(parts)

    def prototypes_from_folder(self, folder: str, k_shot: int = 0) -> Prototypes:
        """One prototype per class sub-folder of ``folder`` (sorted by name; ids 0, 1, ...)."""
        return self.prototypes(self.load_support_folder(folder, k_shot))

    def check_prototypes(self, prototypes: Prototypes, source: str = "the prototypes") -> None:
        """Raise :class:`~fsod_deploy.prototypes.PrototypeFileError` unless ``prototypes``
        were computed with these weights and have this model's widths."""
        fix = "compute them again from the support images (--supports DIR)"
        if prototypes.weights_fingerprint != self.weights_fingerprint:
            raise PrototypeFileError(
                f"{source} were computed with other weights than {self.source} "
                f"({prototypes.weights_fingerprint[:12] or 'none'} != "
                f"{self.weights_fingerprint[:12]}); {fix}"
            )
        have = (list(prototypes.rpn_kernels.shape[1:]), list(prototypes.roi_prototypes.shape[1:]))
        want = ([self.rpn_kernel_dim], list(self.roi_prototype_shape))
        if have != want:
            raise PrototypeFileError(
                f"{source} have kernels of shape {have[0]} and ROI prototypes of shape "
                f"{have[1]}; this model takes {want[0]} and {want[1]}; {fix}"
            )

    def load_prototypes(self, path: str) -> Prototypes:
        """A ``.npz`` prototype file, checked against this model (:meth:`check_prototypes`)."""
        prototypes = Prototypes.load(path)
        self.check_prototypes(prototypes, path)
        return prototypes

    # ---------------------------------------------------------------- detection
    def preprocess(self, image_bgr: np.ndarray) -> np.ndarray:
        """A BGR HWC uint8 image -> the model's input: input format, test resize, CHW."""
        image = convert_bgr(np.asarray(image_bgr, dtype=np.uint8), self.input_format)
        image = resize_for_test(image, self.test_min_size, self.test_max_size)
        return np.ascontiguousarray(image.transpose(2, 0, 1))

    def detect(self, image_bgr: np.ndarray, prototypes: Prototypes) -> Detections:
        """Detect the classes of ``prototypes`` in a BGR HWC uint8 image; boxes in its pixels.

        Raises:
            ValueError: without prototypes (no class to detect).
        """
        if len(prototypes) == 0:
            raise ValueError("no class to detect: add at least one class (a support example)")
        chw = self.preprocess(image_bgr)
        boxes, scores, index = self.detect_resized(chw, prototypes)
        boxes, keep = rescale_boxes(boxes, chw.shape[1:], image_bgr.shape[:2])
        return Detections(
            boxes[keep],
            np.asarray(scores, dtype=np.float32)[keep],
            prototypes.class_ids[np.asarray(index, dtype=np.int64)[keep]],
        )
