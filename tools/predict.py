#!/usr/bin/env python
"""Detect classes given by a few examples: supports + query images -> pictures + COCO JSON.

  python tools/predict.py --config-file configs/demo/fsod_toy_base.yaml \\
      --weights output/demo/model_final.pth --supports my_supports/ \\
      --input photos/ 'more/*.jpg' one.png --output predictions/
  python tools/predict.py --config-file ... --weights ... \\
      --prototypes predictions/prototypes.pth --input photos/ --output predictions2/

Support folder: one sub-folder per class, named after the class, holding example images. An
optional ``boxes.json`` in a class folder maps image file names to the object's box
``[x0, y0, x1, y1]`` in pixels (or a list of such boxes, one shot each); an image without an
entry is the object itself (whole image). Prototypes are computed once and saved (default
``<output>/prototypes.pth``); ``--prototypes`` reuses them (checked against the weights).

Writes ``<output>/vis/<image>.png`` (detections above --confidence-threshold, with class names),
``<output>/detections.json`` (COCO dataset format: images, categories and the detections as
annotations with a "score"; ``pycocotools.coco.COCO`` loads it) and
``<output>/coco_instances_results.json`` (the same detections as a COCO results list, for
``COCO.loadRes``). Category ids are class ids + 1.

Bad input stops the tool with one line that names the file and the fix (exit code 1): a missing
support folder or weights file, an unreadable support image, a malformed ``boxes.json``. An
unreadable query image is skipped; the others are processed, and the skipped ones are listed at
the end and in ``detections.json`` (``info.unreadable_images``).
"""

import argparse
import glob
import json
import logging
import os
import time
from typing import Dict, List, Sequence

import cv2
from detectron2.data.catalog import Metadata
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer
from tqdm import tqdm

from fsod_d2.config import setup_cfg
from fsod_d2.data.support_folder import (
    IMAGE_EXTENSIONS,
    SupportFolderError,
    load_support_folder_from_config,
)
from fsod_d2.data.support_pool import IMAGE_READ_ERRORS
from fsod_d2.modeling.support import PrototypeSet, StalePrototypeError, weights_fingerprint

logger = logging.getLogger("fsod_d2.predict")


class UserInputError(ValueError):
    """Bad input to this tool: reported as one line naming the file and the fix."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--weights", help="model weights (default: MODEL.WEIGHTS of the config)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--supports", metavar="DIR", help="support folder, one sub-folder per class")
    src.add_argument("--prototypes", metavar="FILE", help="prototype file saved by this tool")
    p.add_argument("--k-shot", type=int, default=0, help="use at most K examples per class")
    p.add_argument(
        "--save-prototypes", metavar="FILE", help="default: <output>/prototypes.pth (--supports)"
    )
    p.add_argument("--input", nargs="+", required=True, help="images, folders or glob patterns")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.3,
        help="minimum score of drawn detections (the JSON keeps every detection). Scores are "
        "shared by the classes of the prototypes (MODEL.FSOD.TEST_SCORE softmax), so they run "
        "lower with many classes: with 50 classes, 0.3 drew 11 boxes per image at precision "
        "0.16 / recall 0.34 and 0.5 drew 3 at 0.34 / 0.20 (README)",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------- inputs
def find_images(inputs: Sequence[str]) -> List[str]:
    """Image files from files, folders (recursively) and glob patterns; sorted per input,
    duplicates removed."""
    found: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            paths = [
                os.path.join(d, f) for d, _, files in sorted(os.walk(item)) for f in sorted(files)
            ]
        elif os.path.isfile(item):
            paths = [item]
        else:
            paths = sorted(glob.glob(item, recursive=True))
            if not paths:
                raise UserInputError(f"--input {item!r}: no such file, folder or glob match")
        found += [p for p in paths if p.lower().endswith(IMAGE_EXTENSIONS)]
    found = list(dict.fromkeys(found))
    if not found:
        raise UserInputError(
            f"no image ({', '.join(IMAGE_EXTENSIONS)}) found in --input {list(inputs)}"
        )
    return found


def check_weights(weights: str, from_option: bool) -> None:
    """One line, not fvcore's assertion, if the weights file does not exist (URLs are left to
    detectron2's checkpointer)."""
    what = "--weights" if from_option else "MODEL.WEIGHTS (the config's weights)"
    if not weights:
        raise UserInputError(
            "no model weights: pass --weights FILE, the model_final.pth that "
            "tools/train_net.py wrote to its OUTPUT_DIR"
        )
    if "://" not in weights and not os.path.isfile(weights):
        raise UserInputError(
            f"{what} {weights}: no such file; pass --weights FILE, the model_final.pth that "
            "tools/train_net.py wrote to its OUTPUT_DIR"
        )


def prototypes_from_folder(model, classes) -> PrototypeSet:
    """One prototype per class (classes may have different numbers of shots); the weights are
    fingerprinted once."""
    fingerprint = weights_fingerprint(model)
    return PrototypeSet.concatenate(
        [
            model.compute_prototypes(images, boxes, [i], [name], weights_fp=fingerprint)
            for i, (name, images, boxes) in enumerate(classes)
        ]
    )


# ---------------------------------------------------------------------------- outputs
def class_names_by_id(prototypes: PrototypeSet) -> List[str]:
    ids = prototypes.class_ids.tolist()
    names = list(prototypes.class_names) or [f"class {i}" for i in ids]
    table = [""] * (max(ids) + 1)
    for i, n in zip(ids, names):
        table[i] = n
    return table


def _vis_name(path: str, used: set) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}_{n}"
    used.add(name)
    return name + ".png"


def main(argv=None) -> Dict:
    """Run the tool; bad input stops it with one line naming the file and the fix (exit code
    1). Returns the COCO dataset written to ``detections.json``."""
    args = parse_args(argv)
    setup_logger(name="fsod_d2")
    try:
        return run(args)
    except (UserInputError, SupportFolderError) as e:
        raise SystemExit(f"predict.py: error: {e}") from None


def load_prototypes(args, cfg, model) -> PrototypeSet:
    """The prototypes of --prototypes (checked against the weights) or of --supports (saved)."""
    if args.prototypes:
        if not os.path.isfile(args.prototypes):
            raise UserInputError(
                f"--prototypes {args.prototypes}: no such file; compute them with --supports DIR"
            )
        try:
            prototypes = model.load_prototypes(args.prototypes)
        except StalePrototypeError as e:
            raise UserInputError(f"{e}; or pass --supports DIR instead of --prototypes") from None
        logger.info("Loaded %d class prototypes from %s", len(prototypes), args.prototypes)
        return prototypes
    classes = load_support_folder_from_config(cfg, args.supports, args.k_shot)
    prototypes = prototypes_from_folder(model, classes)
    model.set_prototypes(prototypes)
    path = args.save_prototypes or os.path.join(args.output, "prototypes.pth")
    prototypes.save(path)
    logger.info(
        "%d classes from %s (%s shots); prototypes saved to %s",
        len(classes),
        args.supports,
        ", ".join(f"{n}: {len(im)}" for n, im, _ in classes),
        path,
    )
    return prototypes


def run(args) -> Dict:
    opts = list(args.opts) + (["MODEL.WEIGHTS", args.weights] if args.weights else [])
    cfg = setup_cfg(args.config_file, opts)
    check_weights(cfg.MODEL.WEIGHTS, from_option=bool(args.weights))
    paths = find_images(args.input)  # before the model: a wrong --input fails at once
    predictor = DefaultPredictor(cfg)  # builds the model, loads the weights, eval mode
    prototypes = load_prototypes(args, cfg, predictor.model)

    names = class_names_by_id(prototypes)
    metadata = Metadata(name="fsod_predict", thing_classes=names)
    vis_dir = os.path.join(args.output, "vis")
    os.makedirs(vis_dir, exist_ok=True)
    images, results, used, unreadable = [], [], set(), []
    start = time.perf_counter()
    for path in tqdm(paths, desc="predict", unit="img"):
        try:
            image = read_image(path, format="BGR")
        except IMAGE_READ_ERRORS as e:  # one bad image does not stop the others
            logger.warning("Skipping unreadable image %s (%s: %s)", path, type(e).__name__, e)
            unreadable.append(path)
            continue
        instances = predictor(image)["instances"].to("cpu")
        h, w = image.shape[:2]
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": path, "height": h, "width": w})
        for box, score, cls in zip(
            instances.pred_boxes.tensor.tolist(),
            instances.scores.tolist(),
            instances.pred_classes.tolist(),
        ):
            x0, y0, x1, y1 = box
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(cls) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(score),
                }
            )
        shown = instances[instances.scores >= args.confidence_threshold]
        vis = Visualizer(image[:, :, ::-1], metadata).draw_instance_predictions(shown)
        cv2.imwrite(os.path.join(vis_dir, _vis_name(path, used)), vis.get_image()[:, :, ::-1])
    seconds = time.perf_counter() - start
    if not images:
        raise UserInputError(
            f"none of the {len(paths)} --input images could be read (first: {paths[0]}); "
            "give readable image files"
        )

    categories = [
        {"id": int(c) + 1, "name": names[c]} for c in sorted(prototypes.class_ids.tolist())
    ]
    annotations = [
        dict(r, id=i, area=r["bbox"][2] * r["bbox"][3], iscrowd=0)
        for i, r in enumerate(results, start=1)
    ]
    dataset = {
        "info": {"description": "fsod-d2 predictions", "unreadable_images": unreadable},
        "images": images,
        "categories": categories,
        "annotations": annotations,
    }
    with open(os.path.join(args.output, "detections.json"), "w") as f:
        json.dump(dataset, f)
    with open(os.path.join(args.output, "coco_instances_results.json"), "w") as f:
        json.dump(results, f)
    logger.info(
        "%d images in %.1f s (%.3f s/image), %d detections (%d >= %.2f drawn) -> %s",
        len(images),
        seconds,
        seconds / len(images),
        len(results),
        sum(r["score"] >= args.confidence_threshold for r in results),
        args.confidence_threshold,
        args.output,
    )
    if unreadable:
        logger.warning(
            "%d of %d images could not be read and were skipped (listed in detections.json "
            "'info'): %s",
            len(unreadable),
            len(paths),
            ", ".join(unreadable[:10]) + (" ..." if len(unreadable) > 10 else ""),
        )
    return dataset


if __name__ == "__main__":
    main()
