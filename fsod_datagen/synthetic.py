"""Synthetic inputs for tests and benchmarks: the tiny CPU config, drawn episodes, tiny COCO sets.

Fixtures, not runtime code: ``import fsod_d2`` never imports this module. The tiny config is the
checkout's ``configs/quick_schedules/fsod_tiny_cpu.yaml``.
"""

from pathlib import Path

from detectron2.config import CfgNode

from fsod_d2 import setup_cfg

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
TINY_CONFIG = CONFIG_DIR / "quick_schedules" / "fsod_tiny_cpu.yaml"


def get_tiny_cfg(*opts: str) -> CfgNode:
    """The tiny CPU config (tests/benchmarks), with optional KEY VALUE overrides."""
    if not TINY_CONFIG.is_file():
        raise FileNotFoundError(
            f"{TINY_CONFIG} not found: the tiny config is read from an fsod-d2 checkout "
            "(pip install -e .)"
        )
    return setup_cfg(str(TINY_CONFIG), opts, freeze=False)


# ---------------------------------------------------------------- synthetic episodes (model tests)
SHAPE_COLORS = [(40, 40, 220), (40, 200, 40), (220, 60, 40), (30, 200, 220)]  # BGR


def draw_shape(img, cls: int, box) -> None:
    """Draw class ``cls`` (0 square, 1 disc, 2 triangle, 3 cross) filling ``box`` in place."""
    import cv2
    import numpy as np

    x0, y0, x1, y1 = (int(v) for v in box)
    color = SHAPE_COLORS[cls % len(SHAPE_COLORS)]
    if cls % 4 == 0:
        cv2.rectangle(img, (x0, y0), (x1, y1), color, -1)
    elif cls % 4 == 1:
        cv2.ellipse(
            img,
            ((x0 + x1) // 2, (y0 + y1) // 2),
            ((x1 - x0) // 2, (y1 - y0) // 2),
            0,
            0,
            360,
            color,
            -1,
        )
    elif cls % 4 == 2:
        pts = np.array([[(x0 + x1) // 2, y0], [x0, y1], [x1, y1]], dtype=np.int32)
        cv2.fillPoly(img, [pts], color)
    else:
        t = max((x1 - x0) // 4, 2)
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        cv2.rectangle(img, (cx - t, y0), (cx + t, y1), color, -1)
        cv2.rectangle(img, (x0, cy - t), (x1, cy + t), color, -1)


def synthetic_query(rng, classes, size=(128, 160)):
    """A noisy image with one object per entry of ``classes``; returns (uint8 CHW, Instances)."""
    import numpy as np
    import torch
    from detectron2.structures import Boxes, Instances

    h, w = size
    img = rng.integers(90, 140, size=(h, w, 3), dtype=np.uint8)
    boxes = []
    for i, c in enumerate(classes):
        s = int(rng.integers(28, 48))
        x0 = int(rng.integers(0, w // len(classes) - s)) + i * (w // len(classes))
        y0 = int(rng.integers(0, h - s))
        box = [x0, y0, x0 + s, y0 + s]
        draw_shape(img, c, box)
        boxes.append(box)
    inst = Instances(
        size,
        gt_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32)),
        gt_classes=torch.tensor(list(classes), dtype=torch.long),
    )
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), inst


def synthetic_supports(rng, classes, shots: int, size: int):
    """K support crops per class (class-major): (N*K, 3, S, S) uint8 and (N*K, 4) boxes."""
    import numpy as np
    import torch

    images, boxes = [], []
    for c in classes:
        for _ in range(shots):
            img = rng.integers(90, 140, size=(size, size, 3), dtype=np.uint8)
            m = int(rng.integers(2, size // 6))
            box = [m, m, size - m - 1, size - m - 1]
            draw_shape(img, c, box)
            images.append(img.transpose(2, 0, 1))
            boxes.append(box)
    return (
        torch.from_numpy(np.ascontiguousarray(np.stack(images))),
        torch.tensor(boxes, dtype=torch.float32),
    )


def synthetic_episode(cfg, rng, present, episode_classes):
    """One training dict: query with ``present`` classes, supports of ``episode_classes``."""
    import torch

    image, inst = synthetic_query(rng, present)
    sup, sup_boxes = synthetic_supports(
        rng, episode_classes, cfg.FSOD.K_SHOT, cfg.FSOD.SUPPORT.SIZE
    )
    h, w = image.shape[1:]
    return {
        "image": image,
        "height": h,
        "width": w,
        "instances": inst,
        "support_images": sup,
        "support_boxes": sup_boxes,
        "support_classes": torch.tensor(list(episode_classes), dtype=torch.long),
    }


# ------------------------------------------------------------- tiny COCO datasets (data tests)
def make_coco_dataset(
    root,
    *,
    num_images: int = 24,
    category_ids=(3, 7, 11, 20, 31, 42),
    image_size=(64, 80),
    max_objects: int = 3,
    seed: int = 0,
    extra_annotations=(),
):
    """Write a tiny COCO dataset (coloured rectangles, non-contiguous category ids) to ``root``.

    Each image has 1..max_objects boxes (side >= 12 px) of distinct classes; class
    ``category_ids[i]`` is drawn in colour i. ``extra_annotations`` (dicts without "id") are
    appended as-is. Returns ``(json_path, image_root, coco_dict)``.
    """
    import json
    import os

    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    h, w = image_size
    image_root = os.path.join(str(root), "images")
    os.makedirs(image_root, exist_ok=True)
    names = [f"class{c}" for c in category_ids]
    images, annotations = [], []
    for i in range(num_images):
        img = np.full((h, w, 3), 128, dtype=np.uint8)
        n = int(rng.integers(1, max_objects + 1))
        for ci in rng.choice(len(category_ids), size=n, replace=False):
            bw, bh = int(rng.integers(12, w // 2)), int(rng.integers(12, h // 2))
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            color = [int(v) for v in np.random.default_rng(int(ci)).integers(0, 255, 3)]
            cv2.rectangle(img, (x0, y0), (x0 + bw - 1, y0 + bh - 1), color, -1)
            annotations.append(
                {"id": len(annotations) + 1, "image_id": 100 + i,
                 "category_id": int(category_ids[ci]), "bbox": [x0, y0, bw, bh],
                 "area": bw * bh, "iscrowd": 0}
            )  # fmt: skip
        file_name = f"{i:04d}.png"
        cv2.imwrite(os.path.join(image_root, file_name), img)
        images.append({"id": 100 + i, "file_name": file_name, "height": h, "width": w})
    for extra in extra_annotations:
        annotations.append(dict(extra, id=len(annotations) + 1))
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": n} for c, n in zip(category_ids, names)],
    }
    json_path = os.path.join(str(root), "instances.json")
    with open(json_path, "w") as f:
        json.dump(coco, f)
    return json_path, image_root, coco
