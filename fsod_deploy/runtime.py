"""Run an exported fsod-d2 detector with ONNX Runtime: no PyTorch, no detectron2.

A model folder written by ``tools/export_model.py`` holds ``support_encoder.onnx``,
``detector.onnx`` and ``manifest.json``. :class:`OnnxDetector` loads it and does around the two
graphs what the model's data path does (same functions, :mod:`fsod_deploy.images`): support
crops -> prototypes (:meth:`OnnxDetector.prototypes_from_folder`), and per image: read, convert
to the input format, test resize, detect, boxes back to the image's pixels
(:meth:`OnnxDetector.detect`). Adding a class on the target machine = a support folder (or
one more class in it) and one call; nothing is re-exported.

Every problem with the folder or the prototypes is a one-line :class:`ModelFolderError` or
:class:`~fsod_deploy.prototypes.PrototypeFileError` naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .detector import Detector
from .prototypes import Prototypes

__all__ = [
    "DETECTOR_FILE",
    "MANIFEST_FILE",
    "ModelFolderError",
    "OnnxDetector",
    "SUPPORT_FILE",
    "manifest_problems",
]


MANIFEST_FILE = "manifest.json"
SUPPORT_FILE = "support_encoder.onnx"
DETECTOR_FILE = "detector.onnx"
MANIFEST_VERSION = 1
# support crops per encoder call (bounds memory; as FsodRCNN.compute_prototypes batches them)
SUPPORT_BATCH = 32

_REQUIRED = {
    "format_version": int,
    "weights_fingerprint": str,
    "files": dict,
    "input_format": str,
    "test_resize": dict,
    "support": dict,
    "prototype": dict,
}


class ModelFolderError(ValueError):
    """An exported model folder that cannot be used; one line naming the file and the fix."""


def manifest_problems(manifest: Any) -> list[str]:
    """What is missing or malformed in a manifest (empty: usable)."""
    if not isinstance(manifest, dict):
        return ["not a JSON object"]
    problems = [
        f"{key} missing or not a {t.__name__}"
        for key, t in _REQUIRED.items()
        if not isinstance(manifest.get(key), t)
    ]
    if not problems and manifest["format_version"] != MANIFEST_VERSION:
        problems.append(f"format_version {manifest['format_version']} != {MANIFEST_VERSION}")
    if not problems:
        for name in (SUPPORT_FILE, DETECTOR_FILE):
            if not isinstance(manifest["files"].get(name, {}).get("sha256"), str):
                problems.append(f"files.{name}.sha256 missing")
    return problems


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class OnnxDetector(Detector):
    """An exported detector on ONNX Runtime (see the module docstring).

    Args:
        model_dir: the folder ``tools/export_model.py`` wrote.
        threads: intra-op threads of each session (0: ONNX Runtime's default).
        providers: ONNX Runtime execution providers (default: CPU).
    """

    def __init__(self, model_dir: str, *, threads: int = 0, providers: Sequence[str] | None = None):
        self.model_dir = self.source = model_dir
        self.manifest = m = self._read_manifest(model_dir)
        self.input_format = m["input_format"]
        self.weights_fingerprint = m["weights_fingerprint"]
        self.support_size = int(m["support"]["size"])
        self.support_context = int(m["support"]["context"])
        self.test_min_size = int(m["test_resize"]["min_size"])
        self.test_max_size = int(m["test_resize"]["max_size"])
        self.rpn_kernel_dim = int(m["prototype"]["rpn_kernel_dim"])
        self.roi_prototype_shape = tuple(int(v) for v in m["prototype"]["roi_prototype_shape"])
        self._support = self._session(SUPPORT_FILE, threads, providers)
        self._detector = self._session(DETECTOR_FILE, threads, providers)

    # ---------------------------------------------------------------- loading
    @staticmethod
    def _read_manifest(model_dir: str) -> dict:
        fix = "export the model again with tools/export_model.py"
        if not os.path.isdir(model_dir):
            raise ModelFolderError(f"--model {model_dir}: no such folder; {fix}")
        path = os.path.join(model_dir, MANIFEST_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                manifest = json.load(f)
        except FileNotFoundError:
            raise ModelFolderError(
                f"{path}: no such file ({model_dir} is not an exported model folder); {fix}"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelFolderError(f"{path} cannot be read ({e}); {fix}") from None
        problems = manifest_problems(manifest)
        if problems:
            raise ModelFolderError(f"{path}: {'; '.join(problems)}; {fix}")
        return manifest

    def _session(self, name: str, threads: int, providers):
        import onnxruntime as ort  # the runtime's one heavy dependency, imported when used

        path = os.path.join(self.model_dir, name)
        fix = "copy the exported folder again, or export it again with tools/export_model.py"
        if not os.path.isfile(path):
            raise ModelFolderError(f"{path}: no such file; {fix}")
        if _sha256(path) != self.manifest["files"][name]["sha256"]:
            raise ModelFolderError(
                f"{path} is not the file that was exported with {MANIFEST_FILE} (its SHA-256 "
                f"differs: truncated, corrupt or from another export); {fix}"
            )
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: shape-inference notes are not actionable
        try:
            return ort.InferenceSession(
                path, options, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as e:  # onnxruntime raises its own exception types
            first = (str(e).strip().splitlines() or [""])[0][:160]
            raise ModelFolderError(f"{path} cannot be loaded ({first}); {fix}") from None

    # ---------------------------------------------------------------- the two graphs
    def encode_supports(self, crops: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, ...]:
        parts = [
            self._support.run(
                None,
                {
                    "crops": np.ascontiguousarray(crops[i : i + SUPPORT_BATCH], dtype=np.uint8),
                    "boxes": np.ascontiguousarray(boxes[i : i + SUPPORT_BATCH], dtype=np.float32),
                },
            )
            for i in range(0, len(crops), SUPPORT_BATCH)
        ]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def detect_resized(self, chw: np.ndarray, prototypes: Prototypes) -> tuple[np.ndarray, ...]:
        return tuple(
            self._detector.run(
                None,
                {
                    "image": chw,
                    "rpn_kernels": prototypes.rpn_kernels,
                    "roi_prototypes": prototypes.roi_prototypes,
                },
            )
        )
