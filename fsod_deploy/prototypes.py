"""Class prototypes as numpy arrays: the portable prototype file (``.npz``).

The exported detector takes a class's prototype as an input: its attention-RPN kernel (D,) and
its ROI-level support feature (C5, h, w), each the mean over the class's K shots (see
:meth:`Prototypes.from_shots`). A file records the fingerprint of the weights it was computed
with, so the runtime refuses prototypes of other weights instead of detecting nonsense.
fsod_d2's ``PrototypeSet`` (torch) converts to and from this form (``to_numpy``, ``from_numpy``)
and saves it when its file name ends in ``.npz``.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["FORMAT_VERSION", "PrototypeFileError", "Prototypes", "support_fingerprint"]

FORMAT_VERSION = 1
_ARRAYS = ("class_ids", "rpn_kernels", "roi_prototypes")


class PrototypeFileError(ValueError):
    """A prototype file that cannot be used; the message is one line naming it and the fix."""


def _hash_arrays(items: Sequence[tuple[str, np.ndarray]], h) -> str:
    for name, a in items:
        a = np.ascontiguousarray(a)
        # the dtype is written as torch names it, so that fsod_d2 and this package agree
        h.update(f"{name}:torch.{a.dtype.name}:{tuple(a.shape)}".encode())
        h.update(a.reshape(-1).view(np.uint8).tobytes())
    return h.hexdigest()


def support_fingerprint(
    support_images: np.ndarray, support_boxes: np.ndarray, class_ids: np.ndarray, shots: int
) -> str:
    """Hash of a support set: crops (uint8), boxes (float32), class ids (int64) and K."""
    items = [
        ("images", np.asarray(support_images, dtype=np.uint8)),
        ("boxes", np.asarray(support_boxes, dtype=np.float32)),
        ("classes", np.asarray(class_ids, dtype=np.int64)),
    ]
    return _hash_arrays(items, hashlib.sha1(f"K={shots}".encode()))


@dataclass
class Prototypes:
    """Per-class prototypes: the detector's class input."""

    class_ids: np.ndarray  # (N,) int64: the ids reported for detections of each class
    rpn_kernels: np.ndarray  # (N, D) float32
    roi_prototypes: np.ndarray  # (N, C5, h, w) float32
    class_names: list[str] = field(default_factory=list)
    weights_fingerprint: str = ""
    support_fingerprint: str = ""

    def __post_init__(self):
        self.class_ids = np.asarray(self.class_ids, dtype=np.int64).reshape(-1)
        self.rpn_kernels = np.asarray(self.rpn_kernels, dtype=np.float32)
        self.roi_prototypes = np.asarray(self.roi_prototypes, dtype=np.float32)
        n = len(self.class_ids)
        if len(self.rpn_kernels) != n or len(self.roi_prototypes) != n:
            raise ValueError(
                f"Prototypes: {n} class ids but {len(self.rpn_kernels)} kernels and "
                f"{len(self.roi_prototypes)} ROI prototypes"
            )
        if self.class_names and len(self.class_names) != n:
            raise ValueError(f"Prototypes: {n} class ids but {len(self.class_names)} names")
        self.class_names = [str(c) for c in self.class_names]

    def __len__(self) -> int:
        return len(self.class_ids)

    def name(self, i: int) -> str:
        """The name of entry ``i`` ("class <id>" without names)."""
        return self.class_names[i] if self.class_names else f"class {int(self.class_ids[i])}"

    @classmethod
    def from_shots(
        cls,
        shot_kernels: np.ndarray,
        shot_rois: np.ndarray,
        class_ids: Sequence[int],
        class_names: Sequence[str] = (),
        *,
        weights_fingerprint: str = "",
        support_fingerprint: str = "",
    ) -> Prototypes:
        """Prototypes from per-shot embeddings, class-major (N*K rows): the mean over each
        class's K shots. The numpy one-liner: ``shot_kernels.reshape(N, K, -1).mean(1)``."""
        n = len(class_ids)
        if n == 0 or len(shot_kernels) % n or len(shot_rois) != len(shot_kernels):
            raise ValueError(
                f"{len(shot_kernels)} kernels and {len(shot_rois)} ROI features cannot be split "
                f"into {n} classes of K shots each (class-major order)"
            )
        k = len(shot_kernels) // n
        return cls(
            np.asarray(class_ids, dtype=np.int64),
            shot_kernels.reshape(n, k, *shot_kernels.shape[1:]).mean(axis=1),
            shot_rois.reshape(n, k, *shot_rois.shape[1:]).mean(axis=1),
            list(class_names),
            weights_fingerprint,
            support_fingerprint,
        )

    @classmethod
    def concatenate(cls, parts: Sequence[Prototypes]) -> Prototypes:
        """One set of the classes of ``parts``, in order (e.g. classes computed one by one).

        Raises:
            ValueError: without parts, a class in two parts, or parts of different weights.
        """
        parts = list(parts)
        if not parts:
            raise ValueError("Prototypes.concatenate needs at least one set")
        ids = np.concatenate([p.class_ids for p in parts])
        if len(set(ids.tolist())) != len(ids):
            raise ValueError(f"Prototypes.concatenate: a class is in two sets: {ids.tolist()}")
        if len({p.weights_fingerprint for p in parts}) > 1:
            raise ValueError("Prototypes.concatenate: the sets were computed with other weights")
        if len(parts) == 1:
            return parts[0]
        fp = "|".join(p.support_fingerprint for p in parts)
        return cls(
            ids,
            np.concatenate([p.rpn_kernels for p in parts]),
            np.concatenate([p.roi_prototypes for p in parts]),
            [p.name(i) for p in parts for i in range(len(p))],
            parts[0].weights_fingerprint,
            hashlib.sha1(fp.encode()).hexdigest(),
        )

    def save(self, path: str) -> None:
        """Write a ``.npz`` file atomically (a reader never sees a partial file)."""
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(
                f,
                format_version=np.int64(FORMAT_VERSION),
                class_ids=self.class_ids,
                rpn_kernels=self.rpn_kernels,
                roi_prototypes=self.roi_prototypes,
                class_names=np.asarray(self.class_names, dtype=np.str_),
                weights_fingerprint=np.str_(self.weights_fingerprint),
                support_fingerprint=np.str_(self.support_fingerprint),
            )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> Prototypes:
        """Read a ``.npz`` prototype file.

        Raises:
            PrototypeFileError: no such file, not a prototype file, truncated, or of another
                format version.
        """
        fix = "compute the prototypes again from the support images (--supports DIR)"
        if not os.path.isfile(path):
            raise PrototypeFileError(f"prototype file {path}: no such file; {fix}")
        if path.endswith((".pth", ".pt")):
            raise PrototypeFileError(
                f"{path} is a PyTorch prototype file; convert it for the exported detector with "
                "tools/export_model.py ... --prototypes FILE (it writes .npz files), or "
                f"{fix}"
            )
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise PrototypeFileError(
                f"prototype file {path} cannot be read ({type(e).__name__}); it is truncated or "
                f"not a prototype file; {fix}"
            ) from None
        missing = [k for k in _ARRAYS + ("format_version",) if k not in data]
        if missing:
            raise PrototypeFileError(
                f"{path} is not a prototype file (no {', '.join(missing)}); {fix}"
            )
        if int(data["format_version"]) != FORMAT_VERSION:
            raise PrototypeFileError(
                f"{path}: prototype format {int(data['format_version'])}, this version reads "
                f"{FORMAT_VERSION}; {fix}"
            )
        return cls(
            data["class_ids"],
            data["rpn_kernels"],
            data["roi_prototypes"],
            [str(n) for n in data.get("class_names", np.asarray([], np.str_)).tolist()],
            str(data.get("weights_fingerprint", "")),
            str(data.get("support_fingerprint", "")),
        )
