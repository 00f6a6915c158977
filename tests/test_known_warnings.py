"""No warnings a user cannot act on at every start: ``import fsod_d2`` (then detectron2's
modeling) and an inference of the tiny model show none of the known dependency warnings, while
other warnings still show. And a support box partly outside its image is clipped with a warning
naming the box file."""

import json
import logging
import subprocess
import sys

import cv2
import numpy as np

from fsod_d2.data.support_folder import load_support_folder

from .common import REPO_ROOT

RUN = """
import warnings
import fsod_d2  # first, as the tools import it
import numpy as np
import torch
from detectron2.modeling import build_model
from fsod_datagen.synthetic import get_tiny_cfg, synthetic_query, synthetic_supports

cfg = get_tiny_cfg()
model = build_model(cfg).eval()
images, boxes = synthetic_supports(np.random.default_rng(0), [0, 1], 2, cfg.FSOD.SUPPORT.SIZE)
model.set_prototypes(model.compute_prototypes(images, boxes, [0, 1]))
image, _ = synthetic_query(np.random.default_rng(1), [0])
with torch.no_grad():
    model([{"image": image}])
warnings.warn("an unrelated warning", FutureWarning)
print("done")
"""


def test_known_dependency_warnings_are_silenced_and_others_are_not():
    proc = subprocess.run(
        [sys.executable, "-W", "default", "-c", RUN],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr[-3000:]
    for known in ("torch.jit.script", "torch.meshgrid", "is_fx_tracing"):
        assert known not in proc.stderr, proc.stderr
    assert "FutureWarning: an unrelated warning" in proc.stderr


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_support_box_outside_its_image_is_clipped_with_a_warning(tmp_path):
    cls = tmp_path / "supports" / "gear"
    cls.mkdir(parents=True)
    for name in ("inside.png", "outside.png"):
        cv2.imwrite(str(cls / name), np.full((60, 80, 3), 128, np.uint8))
    boxes = {"inside.png": [10, 10, 50, 40], "outside.png": [40, -5, 95, 50]}
    (cls / "boxes.json").write_text(json.dumps(boxes))
    handler = _Records()
    log = logging.getLogger("fsod_deploy.support_folder")
    log.addHandler(handler)
    try:
        ((name, crops, crop_boxes),) = load_support_folder(
            str(tmp_path / "supports"), size=32, context=0, image_format="BGR"
        )
    finally:
        log.removeHandler(handler)
    assert name == "gear" and len(crops) == 2
    (message,) = handler.messages
    assert message.startswith(f"{cls / 'boxes.json'}: the box [40, -5, 95, 50] of 'outside.png'")
    assert message.endswith(
        "reaches outside the image (80 x 60 pixels); it is clipped to [40, 0, 80, 50]"
    )
