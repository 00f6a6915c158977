"""Second benchmark family (fsod_datagen.objects): COCO, split, boxes, determinism, reuse."""

import json
import math
import os

import numpy as np
import pytest
from pycocotools.coco import COCO

from fsod_datagen.objects import (
    OBJECT_CATEGORIES,
    generate_objects_dataset,
    objects_category_id,
    objects_split,
)

SMALL = {"num_train": 10, "num_val": 3}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("objects")
    return root, generate_objects_dataset(root, **SMALL)


def _load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_categories_and_split():
    assert len(OBJECT_CATEGORIES) == 50 and len(set(OBJECT_CATEGORIES)) == 50
    base, novel = objects_split()
    assert base == list(OBJECT_CATEGORIES[:40]) and novel == list(OBJECT_CATEGORIES[40:])
    ids = [objects_category_id(n) for n in OBJECT_CATEGORIES]
    assert len(set(ids)) == 50 and ids != list(range(1, 51))  # stable, non-contiguous
    assert objects_split(5, 2) == (list(OBJECT_CATEGORIES[:5]), list(OBJECT_CATEGORIES[40:42]))
    with pytest.raises(ValueError, match="num_base"):
        objects_split(41, 10)
    with pytest.raises(ValueError, match="num_novel"):
        objects_split(40, 11)


def test_coco_valid_and_boxes_inside(small):
    root, out = small
    assert set(out) == {"train_json", "val_json", "image_root", "base_classes", "novel_classes",
                        "stats"}  # fmt: skip
    assert len(out["base_classes"]) == 40 and len(out["novel_classes"]) == 10
    stats = out["stats"]
    assert stats["images"] == 13 and stats["categories"] == 50
    assert stats["splits"]["train"]["images"] == 10 and stats["splits"]["val"]["images"] == 3
    total_boxes = 0
    for split, key in (("train", "train_json"), ("val", "val_json")):
        coco = COCO(out[key])
        names = [c["name"] for c in coco.loadCats(coco.getCatIds())]
        assert sorted(names) == sorted(OBJECT_CATEGORIES)
        assert len(coco.getImgIds()) == stats["splits"][split]["images"]
        for img in coco.loadImgs(coco.getImgIds()):
            assert img["file_name"].startswith(f"{split}/")
            assert os.path.isfile(os.path.join(out["image_root"], img["file_name"]))
            assert 240 <= img["height"] <= 420 and 320 <= img["width"] <= 560
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            assert 1 <= len(anns) <= 10
            for a in anns:
                x, y, w, h = a["bbox"]
                assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
                assert min(w, h) >= 4 and a["area"] == pytest.approx(w * h)
        total_boxes += len(coco.getAnnIds())
    assert total_boxes == stats["boxes"] > 0
    assert (root / "meta.json").is_file()


def test_deterministic_json(small, tmp_path):
    root, out = small
    again = generate_objects_dataset(tmp_path / "again", **SMALL)
    for key in ("train_json", "val_json"):
        assert _load(out[key]) == _load(again[key])
    other = generate_objects_dataset(tmp_path / "other", num_train=3, num_val=1, seed=1)
    first3 = [a for a in _load(out["train_json"])["annotations"] if a["image_id"] <= 3]
    assert first3 != _load(other["train_json"])["annotations"]


def test_reuse_and_file_exists(tmp_path):
    params = {"num_train": 2, "num_val": 1}
    first = generate_objects_dataset(tmp_path, **params)
    marker = tmp_path / "images" / "train" / "000000.jpg"
    mtime = marker.stat().st_mtime_ns
    again = generate_objects_dataset(tmp_path, **params)
    assert again["stats"] == first["stats"] and marker.stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match="overwrite=True"):
        generate_objects_dataset(tmp_path, num_train=3, num_val=1)
    replaced = generate_objects_dataset(tmp_path, num_train=3, num_val=1, overwrite=True)
    assert replaced["stats"]["splits"]["train"]["images"] == 3
    assert _load(tmp_path / "meta.json")["params"]["num_train"] == 3


def test_incomplete_run_is_regenerated(tmp_path):
    params = {"num_train": 2, "num_val": 1}
    generate_objects_dataset(tmp_path, **params)
    os.remove(tmp_path / "meta.json")  # as if interrupted before the end
    (tmp_path / "train.json").write_text("{", encoding="utf-8")
    out = generate_objects_dataset(tmp_path, **params)
    assert COCO(out["train_json"]).getImgIds() == [1, 2]


def test_size_distribution_and_class_coverage(tmp_path):
    out = generate_objects_dataset(tmp_path, num_train=25, num_val=0)
    anns = _load(out["train_json"])["annotations"]
    long_sides = np.array([max(a["bbox"][2:]) for a in anns])
    # log-uniform long side over ~14-180 px: small and large objects both occur
    assert long_sides.min() < 24 and long_sides.max() > 110
    assert np.median(long_sides) < 80
    assert (long_sides < 40).sum() > (long_sides > 120).sum()
    present = {a["category_id"] for a in anns}
    assert present == {objects_category_id(n) for n in OBJECT_CATEGORIES}
    per_image = np.bincount([a["image_id"] for a in anns])[1:]
    assert per_image.max() >= 8 and per_image.min() <= 3
    assert math.isclose(out["stats"]["boxes"], len(anns))
