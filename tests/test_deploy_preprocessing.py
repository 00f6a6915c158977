"""fsod_deploy's torch-free pre- and post-processing equals the detectron2 steps it stands in
for: image reading (EXIF orientation), the test resize, the output rescale and the COCO
results; so the exported runtime sees the pixels the model sees in PyTorch."""

import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image as d2_read_image
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from PIL import Image

from fsod_deploy.detector import Detections, rescale_boxes
from fsod_deploy.images import read_image, resize_for_test, resized_shape
from fsod_deploy.outputs import coco_results


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
@pytest.mark.parametrize("image_format", ["BGR", "RGB"])
def test_read_image_is_detectron2s(tmp_path, orientation, image_format):
    rng = np.random.default_rng(orientation)
    pixels = rng.integers(0, 256, (23, 37, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    path = str(tmp_path / f"o{orientation}.jpg")
    image.save(path, exif=exif, quality=95)
    ours = read_image(path, image_format)
    theirs = d2_read_image(path, format=image_format)
    assert ours.dtype == np.uint8 and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)
    if orientation in (6, 8):
        assert ours.shape[:2] == (37, 23)  # rotated


@pytest.mark.parametrize("size", [(240, 320), (333, 500), (500, 281), (97, 1201), (600, 600)])
def test_test_resize_is_detectron2s(size):
    rng = np.random.default_rng(sum(size))
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    aug = T.ResizeShortestEdge([384, 384], 640)
    theirs = aug.get_transform(image).apply_image(image)
    ours = resize_for_test(image, 384, 640)
    assert resized_shape(*size, 384, 640) == ours.shape[:2] == theirs.shape[:2]
    np.testing.assert_array_equal(ours, theirs)


def test_rescale_is_detector_postprocess():
    rng = np.random.default_rng(0)
    boxes = rng.uniform(-20, 420, (50, 4)).astype(np.float32)
    boxes[:, 2:] = boxes[:, :2] + rng.uniform(-5, 120, (50, 2))  # some empty or inverted
    inst = Instances((384, 512), pred_boxes=Boxes(torch.from_numpy(boxes.copy())))
    inst.scores = torch.arange(50, dtype=torch.float32)
    theirs = detector_postprocess(inst, 300, 400)
    ours, keep = rescale_boxes(boxes, (384, 512), (300, 400))
    assert 0 < keep.sum() < 50
    np.testing.assert_array_equal(ours[keep], theirs.pred_boxes.tensor.numpy())
    np.testing.assert_array_equal(np.flatnonzero(keep), theirs.scores.numpy().astype(int))


def test_coco_results_are_detectron2s_with_category_ids():
    boxes = np.array([[1.5, 2.0, 11.0, 22.25], [0.0, 0.0, 5.0, 5.0]], dtype=np.float32)
    scores = np.array([0.9, 0.25], dtype=np.float32)
    classes = np.array([3, 0])
    ours = coco_results(7, Detections(boxes, scores, classes))
    inst = Instances((30, 30), pred_boxes=Boxes(torch.from_numpy(boxes)))
    inst.scores, inst.pred_classes = torch.from_numpy(scores), torch.from_numpy(classes)
    theirs = instances_to_coco_json(inst, 7)
    for a, b in zip(ours, theirs):
        assert a["category_id"] == b["category_id"] + 1  # COCO category ids start at 1
        assert a["image_id"] == b["image_id"] and a["score"] == pytest.approx(b["score"])
        assert a["bbox"] == pytest.approx(b["bbox"])
