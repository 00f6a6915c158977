"""Export a trained FsodRCNN to ONNX: the support encoder and the detector, prototypes an input.

Two graphs from the one model (:func:`export_model`), both traced from the model's own methods
by ``torch.onnx.export(..., dynamo=True)``, so there is no second forward pass to maintain:

* ``support_encoder.onnx`` (:class:`SupportEncoderGraph`, ``FsodRCNN.encode_supports``):
  support crops ``(S, 3, SIZE, SIZE)`` uint8 in INPUT.FORMAT and object boxes ``(S, 4)`` in crop
  pixels -> per-shot RPN kernels ``(S, D)`` and ROI features ``(S, C5, h, w)``; a class's
  prototype is the mean over its K shots (:meth:`fsod_deploy.prototypes.Prototypes.from_shots`).
* ``detector.onnx`` (:class:`DetectorGraph`, ``FsodRCNN.preprocess_image`` +
  ``FsodRCNN.detect_images``): one test-resized image ``(3, H, W)`` uint8 in INPUT.FORMAT and the
  prototypes of C >= 1 classes -> boxes ``(D, 4)`` in that image's pixels, scores ``(D,)`` and
  class indices ``(D,)`` into the prototypes, after the model's test-time steps (score
  threshold, per-class NMS, detections per image). H, W, C and S are dynamic axes.
* ``manifest.json``: what a runtime must do around the graphs (test resize rule, support crop
  parameters, input format), the opset, the package version, the weights' fingerprint (the
  runtime refuses prototypes computed with other weights) and each graph's SHA-256.

:mod:`fsod_deploy.runtime` runs the folder with ONNX Runtime alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import warnings

import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from torch import Tensor, nn

from fsod_deploy.runtime import (
    DETECTOR_FILE,
    MANIFEST_FILE,
    MANIFEST_VERSION,
    SUPPORT_FILE,
    manifest_problems,
)

from . import __version__
from .modeling.checkpoint import load_checkpoint
from .modeling.meta_arch import FsodRCNN
from .modeling.support import weights_fingerprint

logger = logging.getLogger(__name__)

__all__ = [
    "DetectorGraph",
    "ExportError",
    "SupportEncoderGraph",
    "check_exportable",
    "export_model",
]

# dynamic axes' bounds: an image side of at least two stride-32 cells; any class or shot count
_MIN_SIDE, _MAX_SIDE, _MAX_ITEMS = 64, 8192, 65536


class ExportError(ValueError):
    """A config or model that cannot be exported; the message is one line naming the config
    key and the fix."""


def check_exportable(cfg: CfgNode) -> None:
    """Raise :class:`ExportError` naming the config key when ``cfg`` builds a model whose test
    path cannot be exported; cheap (no model is built)."""
    m = cfg.MODEL
    problems = []
    if m.META_ARCHITECTURE != "FsodRCNN":
        problems.append(f"MODEL.META_ARCHITECTURE is {m.META_ARCHITECTURE!r}: set 'FsodRCNN'")
    if m.FSOD.PER_CLASS_REFERENCE:
        problems.append(
            "MODEL.FSOD.PER_CLASS_REFERENCE True (the per-class benchmark reference loops over "
            "classes in Python): set it False, the same detections"
        )
    if not m.FSOD.SHARED_PROPOSALS:
        problems.append(
            "MODEL.FSOD.SHARED_PROPOSALS False (each class keeps its own proposals, a "
            "class-count-dependent layout): set it True"
        )
    if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
        problems.append(f"INPUT.FORMAT {cfg.INPUT.FORMAT!r}: the exported graphs take RGB or BGR")
    if cfg.INPUT.MIN_SIZE_TEST <= 0:
        problems.append("INPUT.MIN_SIZE_TEST must be > 0 (the runtime resizes as the model does)")
    if cfg.TEST.AUG.ENABLED:
        problems.append("TEST.AUG.ENABLED True: test-time augmentation is not exported")
    if problems:
        raise ExportError("cannot export this config: " + "; ".join(problems))


class SupportEncoderGraph(nn.Module):
    """``FsodRCNN.encode_supports`` as a graph: crops and boxes -> per-shot embeddings."""

    def __init__(self, model: FsodRCNN):
        super().__init__()
        self.model = model

    def forward(self, crops: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.encode_supports(crops, boxes)


class DetectorGraph(nn.Module):
    """One test-resized image and C prototypes -> boxes, scores, class indices: the model's
    own preprocessing and test path (``FsodRCNN.detect_images``)."""

    def __init__(self, model: FsodRCNN):
        super().__init__()
        self.model = model

    def forward(
        self, image: Tensor, rpn_kernels: Tensor, roi_prototypes: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        images = self.model.preprocess_image([{"image": image}])
        return self.model.detect_images(images, rpn_kernels, roi_prototypes)[0]


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _example_inputs(cfg: CfgNode, model: FsodRCNN):
    """Support crops and a query image of the config's sizes; 3 classes of 2 shots. Not zeros:
    the traced graph must see proposals and detections (values play no other role)."""
    gen = torch.Generator().manual_seed(0)
    size = cfg.FSOD.SUPPORT.SIZE
    crops = torch.randint(0, 256, (6, 3, size, size), dtype=torch.uint8, generator=gen)
    m = max(1, size // 8)
    boxes = torch.tensor([[m, m, size - m, size - m]], dtype=torch.float32).expand(6, -1)
    boxes = boxes.contiguous()
    with torch.no_grad():
        kernels, rois = model.encode_supports(crops, boxes)
    kernels, rois = kernels.unflatten(0, (3, 2)).mean(1), rois.unflatten(0, (3, 2)).mean(1)
    short = cfg.INPUT.MIN_SIZE_TEST
    long = min(cfg.INPUT.MAX_SIZE_TEST, short * 4 // 3)
    image = torch.randint(0, 256, (3, short, long), dtype=torch.uint8, generator=gen)
    return (crops, boxes), (image, kernels, rois)


# messages of the exporter's libraries that say nothing a user can act on: a deprecation inside
# torchvision's NMS registration, a renamed dynamic axis, constant folding that skipped a node
_QUIET_WARNINGS = (
    (FutureWarning, "`create_unbacked_symint` is deprecated"),
    (UserWarning, "# The axis name"),
)
_QUIET_LOGGERS = ("onnxscript", "onnx_ir")


@contextlib.contextmanager
def _quiet_exporter():
    saved = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    with warnings.catch_warnings():
        for category, message in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            yield
        finally:
            for name, level in saved.items():
                logging.getLogger(name).setLevel(level)


def _check_dynamic_axes(path: str, dynamic_shapes: dict) -> None:
    """Raise unless every axis declared dynamic is symbolic in the written graph (the exporter
    can fall back to the example's sizes when the model specialises an axis)."""
    import onnx

    inputs = {i.name: i.type.tensor_type.shape.dim for i in onnx.load(path).graph.input}
    fixed = [
        f"{name}[{axis}]"
        for name, axes in dynamic_shapes.items()
        for axis in axes
        if not inputs[name][axis].dim_param
    ]
    if fixed:
        raise RuntimeError(
            f"{os.path.basename(path)}: the axes {fixed} were exported with the example's sizes; "
            "the model's code specialises them (a Python branch or int() on a size)"
        )


def _export(module: nn.Module, args, path: str, names, dynamic_shapes, opset) -> None:
    torch.onnx.export(
        module,
        args,
        path,
        dynamo=True,
        input_names=names[0],
        output_names=names[1],
        dynamic_shapes=dynamic_shapes,
        opset_version=opset,
        external_data=False,
        verbose=False,
    )
    _check_dynamic_axes(path, dynamic_shapes)


def export_model(
    cfg: CfgNode,
    output_dir: str,
    *,
    opset: int | None = None,
    config_file: str = "",
) -> dict:
    """Build ``cfg``'s model on the CPU, load ``cfg.MODEL.WEIGHTS`` and write
    ``support_encoder.onnx``, ``detector.onnx`` and ``manifest.json`` to ``output_dir``.

    Returns:
        The manifest (also written to ``manifest.json``), with the export time in
        ``export_seconds``.

    Raises:
        ExportError: a config whose parts cannot be exported (before any work).
        fsod_d2.modeling.checkpoint.WeightsError: weights that cannot be loaded.
    """
    check_exportable(cfg)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    start = time.perf_counter()
    model = build_model(cfg)
    load_checkpoint(model, cfg.MODEL.WEIGHTS, config_file=config_file)
    model.eval()
    fingerprint = weights_fingerprint(model)
    support_args, detector_args = _example_inputs(cfg, model)
    os.makedirs(output_dir, exist_ok=True)
    shots = torch.export.Dim("shots", min=1, max=_MAX_ITEMS)
    classes = torch.export.Dim("classes", min=1, max=_MAX_ITEMS)
    height = torch.export.Dim("height", min=_MIN_SIDE, max=_MAX_SIDE)
    width = torch.export.Dim("width", min=_MIN_SIDE, max=_MAX_SIDE)
    paths = {name: os.path.join(output_dir, name) for name in (SUPPORT_FILE, DETECTOR_FILE)}
    with torch.no_grad(), _quiet_exporter():
        _export(
            SupportEncoderGraph(model).eval(),
            support_args,
            paths[SUPPORT_FILE],
            (["crops", "boxes"], ["rpn_kernels", "roi_features"]),
            {"crops": {0: shots}, "boxes": {0: shots}},
            opset,
        )
        _export(
            DetectorGraph(model).eval(),
            detector_args,
            paths[DETECTOR_FILE],
            (["image", "rpn_kernels", "roi_prototypes"], ["boxes", "scores", "classes"]),
            {
                "image": {1: height, 2: width},
                "rpn_kernels": {0: classes},
                "roi_prototypes": {0: classes},
            },
            opset,
        )
    import onnx  # the export extra (torch.onnx needs it too)

    opsets = {
        name: {o.domain or "ai.onnx": o.version for o in onnx.load(path).opset_import}
        for name, path in paths.items()
    }
    kernels, rois = detector_args[1], detector_args[2]
    manifest = {
        "format_version": MANIFEST_VERSION,
        "producer": f"fsod-d2 {__version__}",
        "torch_version": torch.__version__,
        "config_file": os.path.basename(config_file) if config_file else "",
        "weights_file": os.path.basename(cfg.MODEL.WEIGHTS),
        "weights_fingerprint": fingerprint,
        "opset": opsets[DETECTOR_FILE].get("ai.onnx"),
        "files": {
            name: {"sha256": _sha256(path), "bytes": os.path.getsize(path), "opsets": opsets[name]}
            for name, path in paths.items()
        },
        "input_format": cfg.INPUT.FORMAT,
        "pixel_mean": list(cfg.MODEL.PIXEL_MEAN),  # applied inside the graphs
        "pixel_std": list(cfg.MODEL.PIXEL_STD),
        "test_resize": {
            "min_size": int(cfg.INPUT.MIN_SIZE_TEST),
            "max_size": int(cfg.INPUT.MAX_SIZE_TEST),
            "interpolation": "bilinear",
        },
        "support": {"size": int(cfg.FSOD.SUPPORT.SIZE), "context": int(cfg.FSOD.SUPPORT.CONTEXT)},
        "prototype": {
            "rpn_kernel_dim": int(kernels.shape[1]),
            "roi_prototype_shape": [int(v) for v in rois.shape[1:]],
        },
        "test": {
            "score_threshold": float(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST),
            "nms_threshold": float(cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST),
            "detections_per_image": int(cfg.TEST.DETECTIONS_PER_IMAGE),
            "score": cfg.MODEL.FSOD.TEST_SCORE,
        },
        "export_seconds": round(time.perf_counter() - start, 2),
    }
    problems = manifest_problems(manifest)
    if problems:  # the runtime's own check of what is written here
        raise RuntimeError(f"export wrote an invalid manifest: {problems}")
    with open(os.path.join(output_dir, MANIFEST_FILE), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    logger.info(
        "Exported %s and %s to %s in %.1f s",
        SUPPORT_FILE,
        DETECTOR_FILE,
        output_dir,
        manifest["export_seconds"],
    )
    return manifest
