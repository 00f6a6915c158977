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
"""

import argparse
import glob
import hashlib
import json
import logging
import os
import time
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.data.catalog import Metadata
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer
from tqdm import tqdm

from fsod_d2.data import crop_support
from fsod_d2.data.support_pool import convert_bgr
from fsod_d2.engine import setup_cfg
from fsod_d2.modeling.support import PrototypeSet, StalePrototypeError

logger = logging.getLogger("fsod_d2.predict")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
BOX_FILE = "boxes.json"


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
        default=0.5,
        help="minimum score of drawn detections (the JSON keeps every detection)",
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
                raise FileNotFoundError(f"--input {item!r}: no such file, folder or glob match")
        found += [p for p in paths if p.lower().endswith(IMAGE_EXTENSIONS)]
    found = list(dict.fromkeys(found))
    if not found:
        raise FileNotFoundError(f"no image found in --input {list(inputs)}")
    return found


def _read_boxes(class_dir: str) -> Dict[str, List[List[float]]]:
    path = os.path.join(class_dir, BOX_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        raw = json.load(f)
    boxes = {}
    for name, value in raw.items():
        arr = np.asarray(value, dtype=np.float64).reshape(-1, 4)
        if (arr[:, 2] <= arr[:, 0]).any() or (arr[:, 3] <= arr[:, 1]).any():
            raise ValueError(f"{path}: box of {name!r} is not [x0, y0, x1, y1] with x1>x0, y1>y0")
        boxes[name] = arr.tolist()
    return boxes


def load_support_folder(
    folder: str, size: int, context: int, image_format: str, k_shot: int = 0
) -> List[Tuple[str, torch.Tensor, torch.Tensor]]:
    """Per class (sorted by folder name): (name, uint8 (K, 3, S, S) crops, (K, 4) boxes)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"support folder {folder} does not exist")
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    if not classes:
        raise ValueError(f"support folder {folder} has no class sub-folder")
    out = []
    for name in classes:
        class_dir = os.path.join(folder, name)
        boxes_of = _read_boxes(class_dir)
        files = sorted(f for f in os.listdir(class_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
        unknown = sorted(set(boxes_of) - set(files))
        if unknown:
            raise ValueError(f"{class_dir}/{BOX_FILE} names missing images: {unknown[:5]}")
        crops, crop_boxes = [], []
        for f in files:
            image = read_image(os.path.join(class_dir, f), format="BGR")
            h, w = image.shape[:2]
            for box in boxes_of.get(f, [[0.0, 0.0, float(w), float(h)]]):
                crop, crop_box = crop_support(image, box, size, context)
                crops.append(convert_bgr(crop, image_format))
                crop_boxes.append(crop_box)
        if k_shot > 0:
            crops, crop_boxes = crops[:k_shot], crop_boxes[:k_shot]
        if not crops:
            raise ValueError(f"support class folder {class_dir} has no image")
        images = torch.from_numpy(np.ascontiguousarray(np.stack(crops).transpose(0, 3, 1, 2)))
        out.append((name, images, torch.from_numpy(np.stack(crop_boxes).astype(np.float32))))
    return out


def prototypes_from_folder(model, classes) -> PrototypeSet:
    """One prototype per class (classes may have different numbers of shots)."""
    parts = [
        model.compute_prototypes(images, boxes, [i], [name])
        for i, (name, images, boxes) in enumerate(classes)
    ]
    return PrototypeSet(
        class_ids=torch.cat([p.class_ids for p in parts]),
        rpn_kernels=torch.cat([p.rpn_kernels for p in parts]),
        roi_prototypes=torch.cat([p.roi_prototypes for p in parts]),
        class_names=[n for p in parts for n in p.class_names],
        weights_fingerprint=parts[0].weights_fingerprint,
        support_fingerprint=hashlib.sha1(
            "|".join(p.support_fingerprint for p in parts).encode()
        ).hexdigest(),
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
    args = parse_args(argv)
    setup_logger(name="fsod_d2")
    opts = list(args.opts) + (["MODEL.WEIGHTS", args.weights] if args.weights else [])
    cfg = setup_cfg(args.config_file, opts)
    predictor = DefaultPredictor(cfg)  # builds the model, loads the weights, eval mode
    model = predictor.model

    if args.prototypes:
        try:
            prototypes = model.load_prototypes(args.prototypes)
        except StalePrototypeError as e:
            raise SystemExit(f"{e}\nRecompute them: --supports DIR instead of --prototypes") from e
        logger.info("Loaded %d class prototypes from %s", len(prototypes), args.prototypes)
    else:
        s = cfg.FSOD.SUPPORT
        classes = load_support_folder(
            args.supports, s.SIZE, s.CONTEXT, cfg.INPUT.FORMAT, args.k_shot
        )
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

    names = class_names_by_id(prototypes)
    metadata = Metadata(name="fsod_predict", thing_classes=names)
    paths = find_images(args.input)
    vis_dir = os.path.join(args.output, "vis")
    os.makedirs(vis_dir, exist_ok=True)
    images, results, used = [], [], set()
    start = time.perf_counter()
    for image_id, path in enumerate(tqdm(paths, desc="predict", unit="img"), start=1):
        image = read_image(path, format="BGR")
        instances = predictor(image)["instances"].to("cpu")
        h, w = image.shape[:2]
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

    categories = [
        {"id": int(c) + 1, "name": names[c]} for c in sorted(prototypes.class_ids.tolist())
    ]
    annotations = [
        dict(r, id=i, area=r["bbox"][2] * r["bbox"][3], iscrowd=0)
        for i, r in enumerate(results, start=1)
    ]
    dataset = {"images": images, "categories": categories, "annotations": annotations}
    with open(os.path.join(args.output, "detections.json"), "w") as f:
        json.dump(dataset, f)
    with open(os.path.join(args.output, "coco_instances_results.json"), "w") as f:
        json.dump(results, f)
    logger.info(
        "%d images in %.1f s (%.3f s/image), %d detections (%d >= %.2f drawn) -> %s",
        len(paths),
        seconds,
        seconds / len(paths),
        len(results),
        sum(r["score"] >= args.confidence_threshold for r in results),
        args.confidence_threshold,
        args.output,
    )
    return dataset


if __name__ == "__main__":
    main()
