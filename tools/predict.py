#!/usr/bin/env python
"""Detect classes given by a few examples: supports + query images -> pictures + COCO JSON.

  python tools/predict.py --config-file configs/demo/fsod_toy_mnv2.yaml \\
      --weights output/demo/model_final.pth --supports my_supports/ \\
      --input photos/ 'more/*.jpg' one.png --output predictions/
  python tools/predict.py --config-file ... --weights ... \\
      --prototypes predictions/prototypes.npz --input photos/ --output predictions2/
  # an exported model (tools/export_model.py) with ONNX Runtime, no PyTorch needed:
  python tools/predict.py --backend onnxruntime --model exported/demo \\
      --supports my_supports/ --input photos/ --output predictions3/

Support folder: one sub-folder per class, named after the class, holding example images. An
optional ``boxes.json`` in a class folder maps image file names to the object's box
``[x0, y0, x1, y1]`` in pixels (or a list of such boxes, one shot each); an image without an
entry is the object itself (whole image). Prototypes are computed once and saved (default
``<output>/prototypes.npz``, which both backends read); ``--prototypes`` reuses them (checked
against the weights).

Writes ``<output>/vis/<image>.png`` (detections above --confidence-threshold, one colour per
class), ``<output>/detections.json`` (COCO dataset format: images, categories and the
detections as annotations with a "score"; ``pycocotools.coco.COCO`` loads it) and
``<output>/coco_instances_results.json`` (the same detections as a COCO results list, for
``COCO.loadRes``). Category ids are class ids + 1.

Bad input stops the tool with one line that names the file and the fix (exit code 1), before
the model is built: a missing support folder, weights file or model folder, an unreadable
support image, a malformed ``boxes.json``, a prototype file of other weights, an output folder
that cannot be written. An unreadable query image is skipped; the others are processed, and the
skipped ones are listed at the end and in ``detections.json`` (``info``), as are files in
--input that are not images.
"""

import argparse
import logging
import os
import time

from tqdm import tqdm

from fsod_deploy.cli import (
    UsageError,
    add_inference_options,
    check_output_dir,
    check_output_file,
    one_line_errors,
)
from fsod_deploy.images import IMAGE_READ_ERRORS, read_image
from fsod_deploy.inputs import find_images
from fsod_deploy.outputs import PredictionWriter
from fsod_deploy.prototypes import Prototypes
from fsod_deploy.threads import free_threads

logger = logging.getLogger("fsod_d2.predict")

BACKENDS = ("pytorch", "onnxruntime")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="pytorch",
        help="pytorch: the model of --config-file and --weights; onnxruntime: the exported "
        "model folder --model (no PyTorch needed)",
    )
    p.add_argument("--config-file", metavar="FILE", help="the model's config (pytorch)")
    p.add_argument("--weights", help="model weights (pytorch; default: MODEL.WEIGHTS)")
    p.add_argument("--model", metavar="DIR", help="folder of tools/export_model.py (onnxruntime)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--supports", metavar="DIR", help="support folder, one sub-folder per class")
    src.add_argument("--prototypes", metavar="FILE", help="prototype file saved by this tool")
    p.add_argument("--k-shot", type=int, default=0, help="use at most K examples per class")
    p.add_argument(
        "--save-prototypes",
        metavar="FILE",
        help="where --supports' prototypes go (default: <output>/prototypes.npz; a .pth name "
        "saves PyTorch's format)",
    )
    p.add_argument("--input", nargs="+", required=True, help="images, folders or glob patterns")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.3,
        help="minimum score of drawn detections (the JSON keeps every detection). Scores are "
        "shared by the classes of the prototypes (MODEL.FSOD.TEST_SCORE softmax), so they run "
        "lower with many classes (benchmarks/README.md measures what a threshold keeps)",
    )
    add_inference_options(p)
    return p.parse_args(argv)


def setup_logging() -> None:
    """This tool's and the packages' messages at INFO; other libraries' at WARNING."""
    logging.basicConfig(level=logging.WARNING, format="[%(asctime)s %(name)s]: %(message)s")
    for name in ("fsod_d2", "fsod_deploy"):
        logging.getLogger(name).setLevel(logging.INFO)


def check_args(args) -> None:
    """What needs no model and no image: the backend's options, the output folder, the
    prototype file names."""
    if args.backend == "pytorch" and not args.config_file:
        raise UsageError("--config-file is required with --backend pytorch (the model's config)")
    if args.backend == "onnxruntime":
        if not args.model:
            raise UsageError(
                "--model DIR is required with --backend onnxruntime (a folder written by "
                "tools/export_model.py)"
            )
        if args.config_file or args.weights or args.opts:
            raise UsageError(
                "--config-file, --weights and config overrides are for --backend pytorch; the "
                "exported --model folder holds its settings"
            )
    if args.k_shot < 0:
        raise UsageError(f"--k-shot {args.k_shot}: give 0 (all examples) or a positive K")
    check_output_dir(args.output, "--output")
    if args.save_prototypes:
        check_output_file(args.save_prototypes, "--save-prototypes")
    if args.prototypes and not os.path.isfile(args.prototypes):
        raise UsageError(
            f"--prototypes {args.prototypes}: no such file; compute them with --supports DIR"
        )


def build_detector(args, threads: int):
    """The backend's detector, after every check that needs no model (fails fast)."""
    if args.backend == "onnxruntime":
        from fsod_deploy.runtime import OnnxDetector

        return OnnxDetector(args.model, threads=threads)

    import fsod_d2  # noqa: F401  (registers components, silences known import warnings)

    # isort: split
    import torch

    from fsod_d2.config import setup_cfg
    from fsod_d2.predictor import TorchDetector
    from fsod_d2.utils.cli import check_prototype_file, check_weights_file

    opts = list(args.opts) + (["MODEL.WEIGHTS", args.weights] if args.weights else [])
    cfg = setup_cfg(args.config_file, opts)
    check_weights_file(cfg.MODEL.WEIGHTS, "--weights" if args.weights else "MODEL.WEIGHTS")
    if args.prototypes and not args.prototypes.endswith(".npz"):
        check_prototype_file(args.prototypes)
    if args.supports:  # read before the model is built: a bad folder fails at once
        s = cfg.FSOD.SUPPORT
        from fsod_deploy.support_folder import load_support_folder

        args.classes = load_support_folder(
            args.supports,
            size=s.SIZE,
            context=s.CONTEXT,
            image_format=cfg.INPUT.FORMAT,
            k_shot=args.k_shot,
        )
    torch.set_num_threads(threads)
    return TorchDetector(cfg, config_file=args.config_file)


def load_prototypes(args, detector) -> Prototypes:
    """The prototypes of --prototypes (checked against the weights) or of --supports (saved)."""
    if args.prototypes:
        prototypes = detector.load_prototypes(args.prototypes)
        logger.info("Loaded %d class prototypes from %s", len(prototypes), args.prototypes)
        return prototypes
    classes = getattr(args, "classes", None) or detector.load_support_folder(
        args.supports, args.k_shot
    )
    prototypes = detector.prototypes(classes)
    path = args.save_prototypes or os.path.join(args.output, "prototypes.npz")
    if path.endswith(".npz"):
        prototypes.save(path)
    else:  # PyTorch's format (fsod_d2.modeling.PrototypeSet)
        from fsod_d2.modeling.support import PrototypeSet

        PrototypeSet.from_numpy(prototypes).save(path)
    shots = ", ".join(f"{n}: {len(im)}" for n, im, _ in classes)
    logger.info(
        "%d %s from %s (shots: %s); prototypes saved to %s",
        len(classes),
        "class" if len(classes) == 1 else "classes",
        args.supports,
        shots,
        path,
    )
    return prototypes


def class_names_by_id(prototypes: Prototypes) -> list:
    table = [""] * (int(prototypes.class_ids.max()) + 1)
    for i, c in enumerate(prototypes.class_ids.tolist()):
        table[c] = prototypes.name(i)
    return table


def run(args) -> dict:
    check_args(args)
    paths, others = find_images(args.input)
    if others:
        logger.warning(
            "%d %s in --input %s not an image (%s) and skipped: %s",
            len(others),
            "file" if len(others) == 1 else "files",
            "is" if len(others) == 1 else "are",
            "by extension",
            ", ".join(others[:10]) + (" ..." if len(others) > 10 else ""),
        )
    threads = args.threads or free_threads()
    detector = build_detector(args, threads)
    prototypes = load_prototypes(args, detector)

    writer = PredictionWriter(args.output, class_names_by_id(prototypes), args.confidence_threshold)
    writer.skipped = list(others)
    start = time.perf_counter()
    for path in tqdm(paths, desc="predict", unit="img"):
        try:
            image = read_image(path, "BGR")
        except IMAGE_READ_ERRORS as e:  # one bad image does not stop the others
            logger.warning("Skipping unreadable image %s (%s: %s)", path, type(e).__name__, e)
            writer.unreadable.append(path)
            continue
        writer.add(path, image, detector.detect(image, prototypes))
    seconds = time.perf_counter() - start
    if not writer.images:
        raise UsageError(
            f"none of the {len(paths)} --input images could be read (first: {paths[0]}); "
            "give readable image files"
        )
    dataset = writer.finish(prototypes.class_ids.tolist(), {"backend": args.backend})
    n = len(writer.images)
    logger.info(
        "%d %s in %.1f s (%.3f s/image, %s), %d detections (%d >= %.2f drawn) -> %s",
        n,
        "image" if n == 1 else "images",
        seconds,
        seconds / n,
        args.backend,
        len(writer.results),
        writer.num_drawn(),
        args.confidence_threshold,
        args.output,
    )
    if not writer.num_drawn():
        logger.warning(writer.nothing_drawn())
    if writer.unreadable:
        logger.warning(
            "%d of %d images could not be read and were skipped (listed in detections.json "
            "'info'): %s",
            len(writer.unreadable),
            len(paths),
            ", ".join(writer.unreadable[:10]) + (" ..." if len(writer.unreadable) > 10 else ""),
        )
    return dataset


@one_line_errors("predict.py")
def main(argv=None) -> dict:
    """Run the tool; bad input stops it with one line naming the file and the fix (exit code
    1). Returns the COCO dataset written to ``detections.json``."""
    args = parse_args(argv)
    setup_logging()
    return run(args)


if __name__ == "__main__":
    main()
