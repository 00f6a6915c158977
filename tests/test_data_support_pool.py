"""Support crops, the cached support pool and the evaluation support set."""

import logging
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image

from fsod_d2.data import (
    SUPPORT_SAMPLER_REGISTRY,
    SupportPool,
    SupportSampler,
    build_support_set,
    crop_support,
    register_fewshot_coco,
)

from .common import get_tiny_cfg, make_coco_dataset


def test_crop_support_geometry():
    img = np.zeros((100, 200, 3), dtype=np.uint8)
    img[20:40, 50:130] = 255  # an 80x20 object
    crop, box = crop_support(img, [50, 20, 130, 40], size=64, context=10)
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8 and box.dtype == np.float32
    # region 100x40 (box + 10 px each side) -> scale 0.64 -> content 64 x 26 (top-left)
    assert crop[26:].max() == 0 and crop[:, :64].any()
    np.testing.assert_allclose(box, [6.4, 6.4, 57.6, 19.2], atol=0.6)
    assert crop[int(box[1]) + 2 : int(box[3]) - 2, int(box[0]) + 2 : int(box[2]) - 2].min() > 200
    # context clipped at the image border; tall boxes get the longer side == size
    crop, box = crop_support(img, [0, 0, 10, 100], size=32, context=16)
    assert box[1] == 0 and box[3] == pytest.approx(32, abs=0.5) and crop[:, 9:].max() == 0
    with pytest.raises(ValueError, match="no area"):
        crop_support(img, [300, 10, 320, 20], size=32, context=4)


@pytest.fixture(scope="module")
def pool_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    extra = [
        {"image_id": 100, "category_id": 3, "bbox": [1, 1, 30, 30], "iscrowd": 1},  # crowd
        {"image_id": 101, "category_id": 7, "bbox": [1, 1, 4, 30], "iscrowd": 0},  # 4 px wide
    ]
    json_path, image_root, coco = make_coco_dataset(root, extra_annotations=extra)
    register_fewshot_coco("t_pool", json_path, image_root, ["class3", "class7", "class11"])
    yield root, coco
    for v in ("t_pool", "t_pool_base", "t_pool_novel"):
        DatasetCatalog.remove(v)
        MetadataCatalog.remove(v)


def _cfg(root, *opts):
    return get_tiny_cfg("FSOD.SUPPORT.CACHE_DIR", str(root / "cache"), *opts)


def test_pool_filters_caches_and_matches_crop_support(pool_data, caplog):
    root, coco = pool_data
    cfg = _cfg(root, "FSOD.SUPPORT.CACHE_FORMAT", "png")
    with caplog.at_level(logging.INFO, logger="fsod_d2"):
        pool = SupportPool.from_config(cfg, "t_pool")
    assert "Building the support cache" in caplog.text
    regular = [a for a in coco["annotations"] if not a["iscrowd"] and min(a["bbox"][2:]) >= 8]
    assert len(pool) == len(regular)  # crowd and the 4-px box are filtered
    assert pool.class_ids == [0, 1, 2, 3, 4, 5]
    # png is lossless: cached crops equal crop_support on the image
    i = 5
    image_id = int(pool.image_key(i))
    d = next(d for d in DatasetCatalog.get("t_pool") if d["image_id"] == image_id)
    expected, expected_box = crop_support(
        read_image(d["file_name"], "BGR"), pool.src_boxes[i], cfg.FSOD.SUPPORT.SIZE, 4
    )
    got, got_box = pool.load(i)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(got_box, expected_box)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fsod_d2"):
        again = SupportPool.from_config(cfg, "t_pool")
    assert "Building" not in caplog.text and again.cache_dir == pool.cache_dir  # reused
    other = SupportPool.from_config(_cfg(root, "FSOD.SUPPORT.CONTEXT", "8"), "t_pool")
    assert other.cache_dir != pool.cache_dir  # parameters are part of the key
    assert not [p for p in os.listdir(root / "cache") if ".tmp" in p]  # no temp dirs left


def test_sampling_deterministic_excludes_and_warns(pool_data, caplog):
    """The default policy's K-shot draw (the pool only stores crops)."""
    root, _ = pool_data
    cfg = _cfg(root)
    store = SupportPool.from_config(cfg, "t_pool")
    pool = SupportSampler.from_config(cfg, store)  # named pool: the draws below read as before
    a = pool.sample_k_shot(0, 3, np.random.default_rng(5), exclude_image_id=100)
    b = pool.sample_k_shot(0, 3, np.random.default_rng(5), exclude_image_id=100)
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == 3
    for img_id in {store.image_key(i) for i in store.available(0)}:
        got = pool.sample_k_shot(0, 2, np.random.default_rng(0), exclude_image_id=int(img_id))
        assert all(store.image_key(i) != img_id for i in got)
    n = store.num_instances(1)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fsod_d2"):
        for s in range(3):
            got = pool.sample_k_shot(1, n + 5, np.random.default_rng(s))
            assert len(got) == n + 5
    assert caplog.text.count("sampling with replacement") == 1  # one warning per class
    strict_cfg = _cfg(root, "FSOD.STRICT_SHOTS", "True")
    strict = SupportSampler.from_config(strict_cfg, SupportPool.from_config(strict_cfg, "t_pool"))
    with pytest.raises(ValueError, match="STRICT_SHOTS"):
        strict.sample_k_shot(1, n + 5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="STRICT_SHOTS"):
        strict.check_shots(n + 5)


def test_build_support_set(pool_data):
    root, _ = pool_data
    cfg = _cfg(root, "INPUT.FORMAT", "RGB")
    images, boxes, class_ids, names = build_support_set(cfg, "t_pool_novel", 2, seed=3)
    s = cfg.FSOD.SUPPORT.SIZE
    assert images.shape == (6, 3, s, s) and images.dtype == torch.uint8
    assert boxes.shape == (6, 4) and boxes.dtype == torch.float32
    assert class_ids.tolist() == [3, 4, 5] and names == ["class20", "class31", "class42"]
    again = build_support_set(cfg, "t_pool_novel", 2, seed=3)
    assert torch.equal(images, again[0]) and torch.equal(boxes, again[1])
    other = build_support_set(cfg, "t_pool_novel", 2, seed=4)
    assert not torch.equal(images, other[0])
    # class-major and RGB: the object colour of class i (BGR in the file) appears reversed
    bgr = build_support_set(_cfg(root), "t_pool_novel", 2, seed=3)[0]
    assert torch.equal(images, bgr.flip(1))
    # a class's shots do not depend on the other classes
    only = build_support_set(cfg, "t_pool_novel", 2, seed=3, class_ids=[4])
    assert torch.equal(only[0], images[2:4])


def test_unreadable_images_skipped_when_building(tmp_path, caplog):
    json_path, image_root, coco = make_coco_dataset(tmp_path, num_images=6)
    os.remove(os.path.join(image_root, "0001.png"))
    with open(os.path.join(image_root, "0002.png"), "wb") as f:
        f.write(b"not an image")
    cv2.imwrite(os.path.join(image_root, "0003.png"), np.zeros((10, 10, 3), np.uint8))  # size
    register_fewshot_coco("t_pool_bad", json_path, image_root, ["class3"])
    with caplog.at_level(logging.WARNING, logger="fsod_d2"):
        pool = SupportPool.from_config(
            get_tiny_cfg("FSOD.SUPPORT.CACHE_DIR", str(tmp_path / "cache")), "t_pool_bad"
        )
    assert len(pool.bad_images) == 3 and "3 unreadable/missing images skipped" in caplog.text
    assert {pool.image_key(i) for i in range(len(pool))} == {"100", "104", "105"}
    assert os.path.dirname(pool.cache_dir) == str(tmp_path / "cache")


def test_default_cache_is_one_root_under_the_datasets_keyed_by_crop_settings(tmp_path, monkeypatch):
    """CACHE_DIR "" -> $DETECTRON2_DATASETS/.fsod_support_cache, shared by output dirs; other
    crop settings make another pool folder, the same settings reuse it."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.delenv("FSOD_SUPPORT_CACHE")  # set by conftest.py for the other tests
    json_path, image_root, _ = make_coco_dataset(tmp_path, num_images=4)
    register_fewshot_coco("t_pool_root", json_path, image_root, ["class3"])
    a = SupportPool.from_config(get_tiny_cfg("OUTPUT_DIR", str(tmp_path / "run1")), "t_pool_root")
    b = SupportPool.from_config(get_tiny_cfg("OUTPUT_DIR", str(tmp_path / "run2")), "t_pool_root")
    c = SupportPool.from_config(get_tiny_cfg("FSOD.SUPPORT.SIZE", 32), "t_pool_root")
    root = tmp_path / "datasets" / ".fsod_support_cache"
    assert a.cache_dir == b.cache_dir and os.path.dirname(a.cache_dir) == str(root)
    assert c.cache_dir != a.cache_dir and os.path.dirname(c.cache_dir) == str(root)
    assert os.path.basename(a.cache_dir).startswith("t_pool_root-")
    assert sorted(os.listdir(root)) == sorted({os.path.basename(p.cache_dir) for p in (a, c)})
    monkeypatch.setenv("FSOD_SUPPORT_CACHE", str(tmp_path / "hub"))
    d = SupportPool.from_config(get_tiny_cfg(), "t_pool_root")
    assert os.path.dirname(d.cache_dir) == str(tmp_path / "hub")


def test_unwritable_cache_root_names_the_key(tmp_path):
    json_path, image_root, _ = make_coco_dataset(tmp_path, num_images=2)
    register_fewshot_coco("t_pool_ro", json_path, image_root, ["class3"])
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match="FSOD.SUPPORT.CACHE_DIR"):
        SupportPool.from_config(
            get_tiny_cfg("FSOD.SUPPORT.CACHE_DIR", str(blocker / "cache")), "t_pool_ro"
        )


def test_a_sampling_rule_is_one_registered_class(pool_data):
    """A new rule (here: evaluation shots from the largest boxes) = a SupportSampler subclass +
    its registration, chosen with FSOD.SUPPORT.SAMPLER; build_support_set and the mapper use it."""

    class LargestBoxSampler(SupportSampler):
        def sample_k_shot(self, class_id, k, rng, exclude_image_id=None):
            avail = self.pool.available(class_id, exclude_image_id)
            b = self.pool.src_boxes[avail]
            area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
            return avail[np.argsort(-area, kind="stable")[:k]]

    root, _ = pool_data
    SUPPORT_SAMPLER_REGISTRY.register(LargestBoxSampler)
    try:
        cfg = _cfg(root, "FSOD.SUPPORT.SAMPLER", "LargestBoxSampler")
        _, boxes, class_ids, _ = build_support_set(cfg, "t_pool_novel", 1, seed=0)
        pool = SupportPool.from_config(cfg, "t_pool_novel")
        picked = [pool.available(c)[np.argmax(_areas(pool, c))] for c in class_ids.tolist()]
        np.testing.assert_allclose(boxes.numpy(), pool.boxes[picked])
        with pytest.raises(KeyError, match="Nope"):
            build_support_set(_cfg(root, "FSOD.SUPPORT.SAMPLER", "Nope"), "t_pool_novel", 1, 0)
    finally:
        SUPPORT_SAMPLER_REGISTRY._obj_map.pop("LargestBoxSampler")


def _areas(pool, c):
    b = pool.src_boxes[pool.available(c)]
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def test_raw_cache_holds_the_same_crops_as_png(pool_data):
    root, _ = pool_data
    png = SupportPool.from_config(_cfg(root, "FSOD.SUPPORT.CACHE_FORMAT", "png"), "t_pool")
    raw = SupportPool.from_config(_cfg(root, "FSOD.SUPPORT.CACHE_FORMAT", "raw"), "t_pool")
    assert raw.cache_dir != png.cache_dir and len(raw) == len(png)
    indices = list(range(len(png)))
    (a, a_boxes), (b, b_boxes) = png.load_many(indices), raw.load_many(indices)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a_boxes, b_boxes)
    assert b.shape == (len(png), png.size, png.size, 3)
    with pytest.raises(ValueError, match="CACHE_FORMAT"):
        SupportPool.from_config(_cfg(root, "FSOD.SUPPORT.CACHE_FORMAT", "bmp"), "t_pool")
