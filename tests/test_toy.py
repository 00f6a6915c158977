"""Toy dataset generator: COCO validity, determinism, reuse, class coverage."""

import json
import os

import pytest
from pycocotools.coco import COCO

from fsod_datagen.shapes import TOY_CATEGORIES, generate_toy_dataset, toy_category_id, toy_split

SMALL = {"num_train": 12, "num_val": 4, "image_size": (96, 128)}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return root, generate_toy_dataset(root, **SMALL)


def _load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_categories_and_split():
    assert len(TOY_CATEGORIES) == 50 and len(set(TOY_CATEGORIES)) == 50
    base, novel = toy_split()
    assert base == TOY_CATEGORIES[:20] and novel == TOY_CATEGORIES[20:25]
    base, novel = toy_split(40, 10)
    assert len(base) == 40 and len(novel) == 10 and not set(base) & set(novel)
    with pytest.raises(ValueError):
        toy_split(45, 10)


def test_layout_and_result(small):
    root, result = small
    assert set(result) >= {
        "train_json",
        "val_json",
        "image_root",
        "base_classes",
        "novel_classes",
        "stats",
    }
    assert (result["base_classes"], result["novel_classes"]) == toy_split(20, 5)
    stats = result["stats"]
    assert stats["images"] == 16 and stats["categories"] == 25 and stats["boxes"] > 0
    meta = _load(root / "meta.json")
    assert meta["params"]["num_train"] == 12 and meta["base_classes"] == result["base_classes"]
    for split in ("train", "val"):
        data = _load(result[f"{split}_json"])
        for img in data["images"]:
            assert os.path.isfile(os.path.join(result["image_root"], img["file_name"]))


@pytest.mark.parametrize("split", ["train", "val"])
def test_boxes_inside_image(small, split):
    _, result = small
    data = _load(result[f"{split}_json"])
    sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    assert data["annotations"]
    for ann in data["annotations"]:
        h, w = sizes[ann["image_id"]]
        x, y, bw, bh = ann["bbox"]
        assert x >= 0 and y >= 0 and bw > 0 and bh > 0
        assert x + bw <= w and y + bh <= h
        assert 0 < ann["area"] <= bw * bh and ann["iscrowd"] == 0


def test_category_ids_valid_and_non_contiguous(small):
    _, result = small
    names = result["base_classes"] + result["novel_classes"]
    for split in ("train", "val"):
        data = _load(result[f"{split}_json"])
        ids = sorted(c["id"] for c in data["categories"])
        assert ids == sorted(toy_category_id(n) for n in names)
        assert {c["name"] for c in data["categories"]} == set(names)
        assert ids != list(range(ids[0], ids[0] + len(ids)))  # not contiguous
        assert {a["category_id"] for a in data["annotations"]} <= set(ids)


def test_every_category_in_train(small):
    _, result = small
    data = _load(result["train_json"])
    assert {a["category_id"] for a in data["annotations"]} == {c["id"] for c in data["categories"]}


def test_pycocotools_loads(small):
    _, result = small
    coco = COCO(result["train_json"])
    assert len(coco.getImgIds()) == 12 and len(coco.getCatIds()) == 25
    assert len(coco.getAnnIds()) == result["stats"]["train_boxes"]


def test_deterministic(small, tmp_path):
    root, _ = small
    again = generate_toy_dataset(tmp_path / "same", **SMALL)
    other = generate_toy_dataset(tmp_path / "other", seed=1, **SMALL)
    for split in ("train", "val"):
        ref = (root / f"{split}.json").read_bytes()
        assert open(again[f"{split}_json"], "rb").read() == ref
        assert open(other[f"{split}_json"], "rb").read() != ref
    img = "train/000000.jpg"
    assert (root / "images" / img).read_bytes() == (tmp_path / "same/images" / img).read_bytes()


def test_reuse_does_not_rewrite(tmp_path):
    first = generate_toy_dataset(tmp_path, **SMALL)
    files = [tmp_path / "meta.json", tmp_path / "train.json", tmp_path / "val.json"]
    files += sorted((tmp_path / "images").rglob("*.jpg"))
    mtimes = [f.stat().st_mtime_ns for f in files]
    second = generate_toy_dataset(tmp_path, **SMALL)
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert second == first


def test_changed_params_need_overwrite(tmp_path):
    generate_toy_dataset(tmp_path, **SMALL)
    with pytest.raises(FileExistsError, match="num_val"):
        generate_toy_dataset(tmp_path, **{**SMALL, "num_val": 3})
    result = generate_toy_dataset(tmp_path, overwrite=True, **{**SMALL, "num_val": 3})
    assert result["stats"]["val_images"] == 3
    assert len(list((tmp_path / "images" / "val").glob("*.jpg"))) == 3


def test_incomplete_dataset_is_regenerated(tmp_path):
    generate_toy_dataset(tmp_path, **SMALL)
    (tmp_path / "images" / "train" / "000003.jpg").unlink()
    generate_toy_dataset(tmp_path, **SMALL)
    assert (tmp_path / "images" / "train" / "000003.jpg").is_file()


def test_hard_benchmark_split(tmp_path):
    params = dict(num_base=40, num_novel=10, num_train=10, num_val=2, image_size=(128, 160))
    result = generate_toy_dataset(tmp_path, difficulty="hard", **params)
    data = _load(result["train_json"])
    assert len(data["categories"]) == 50
    assert {a["category_id"] for a in data["annotations"]} == {c["id"] for c in data["categories"]}
    for ann in data["annotations"]:
        x, y, bw, bh = ann["bbox"]
        assert x >= 0 and y >= 0 and bw > 0 and bh > 0 and x + bw <= 160 and y + bh <= 128


def test_separate_novel(small, tmp_path):
    root, _ = small
    params = {**SMALL, "num_train": 20}
    result = generate_toy_dataset(tmp_path, separate_novel=True, **params)
    novel = {toy_category_id(n) for n in result["novel_classes"]}
    train = _load(result["train_json"])
    classes_of = {}
    for ann in train["annotations"]:
        classes_of.setdefault(ann["image_id"], set()).add(ann["category_id"])
    novel_images = [i for i, c in classes_of.items() if c & novel]
    assert novel_images and all(classes_of[i] <= novel for i in novel_images)  # never mixed
    assert len(classes_of) - len(novel_images) > len(novel_images)
    assert set().union(*classes_of.values()) == {c["id"] for c in train["categories"]}
    # the val split is the one drawn without the option; the option is recorded
    plain = generate_toy_dataset(tmp_path / "plain", **params)
    assert open(result["val_json"], "rb").read() == open(plain["val_json"], "rb").read()
    assert open(result["train_json"], "rb").read() != open(plain["train_json"], "rb").read()
    assert _load(tmp_path / "meta.json")["params"]["separate_novel"] is True
    assert "separate_novel" not in _load(root / "meta.json")["params"]
    with pytest.raises(FileExistsError, match="separate_novel"):
        generate_toy_dataset(tmp_path / "plain", separate_novel=True, **params)


def test_tool_separate_novel(tmp_path):
    """--separate-novel reaches the generator; on data drawn without it the tool stops with one
    line naming the option, and --overwrite redraws (what scripts/demo.sh relies on)."""
    from .common import load_tool

    tool = load_tool("make_toy_dataset")
    size = ["--num-train", "20", "--num-val", "4", "--image-size", "96", "128"]
    plain = tool.main(["--root", str(tmp_path / "toy"), *size])
    with pytest.raises(SystemExit) as e:
        tool.main(["--root", str(tmp_path / "toy"), "--separate-novel", *size])
    assert e.value.code != 0 and "\n" not in str(e.value.code)
    assert "separate_novel" in str(e.value.code) and "--overwrite" in str(e.value.code)
    val = open(plain["val_json"], "rb").read()
    result = tool.main(["--root", str(tmp_path / "toy"), "--separate-novel", "--overwrite", *size])
    api = generate_toy_dataset(
        tmp_path / "api", separate_novel=True, num_train=20, num_val=4, image_size=(96, 128)
    )
    assert open(result["train_json"], "rb").read() == open(api["train_json"], "rb").read()
    assert open(result["val_json"], "rb").read() == val
    novel = {toy_category_id(n) for n in result["novel_classes"]}
    classes_of = {}
    for ann in _load(result["train_json"])["annotations"]:
        classes_of.setdefault(ann["image_id"], set()).add(ann["category_id"])
    assert any(c <= novel for c in classes_of.values())
    assert all(c <= novel or not c & novel for c in classes_of.values())


def test_invalid_params(tmp_path):
    with pytest.raises(ValueError):
        generate_toy_dataset(tmp_path, difficulty="medium")
    with pytest.raises(ValueError):
        generate_toy_dataset(tmp_path, min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="separate_novel"):
        generate_toy_dataset(tmp_path, num_novel=0, separate_novel=True)


def test_tool_refuses_another_split_in_the_registered_folder(tmp_path, monkeypatch, capsys):
    """fsod_toy_hard_* are registered as 20 + 5 classes: 40 + 10 written there would be
    registered as 20 + 5 (the other classes dropped), so the tool stops before writing."""
    from .common import load_tool

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    tool = load_tool("make_toy_dataset")
    for args in (["--hard"], ["--root", str(tmp_path / "fsod_toy")]):
        with pytest.raises(SystemExit) as e:
            tool.main([*args, "--num-base", "40", "--num-novel", "10"])
        msg = str(e.value.code)
        assert "\n" not in msg and "20 base + 5 novel" in msg and "--root DIR" in msg
    assert list(tmp_path.iterdir()) == []  # nothing generated


def test_tool_registers_the_split_it_generated_elsewhere(tmp_path, monkeypatch):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from fsod_d2 import setup_cfg
    from fsod_d2.data import register_from_config

    from .common import load_tool

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "d2"))
    root = tmp_path / "toy40"
    result = load_tool("make_toy_dataset").main([
        "--hard", "--num-base", "40", "--num-novel", "10", "--root", str(root),
        "--num-train", "10", "--num-val", "2", "--image-size", "128", "160",
    ])  # fmt: skip
    assert json.loads((root / "split.json").read_text()) == {
        "base": TOY_CATEGORIES[:40], "novel": TOY_CATEGORIES[40:50],
    }  # fmt: skip
    cfg = setup_cfg(freeze=False)
    cfg.FSOD.REGISTER = result["register"]
    names = register_from_config(cfg)
    try:
        assert {"toy40_train", "toy40_train_base", "toy40_val_novel"} <= set(names)
        meta = MetadataCatalog.get("toy40_train")
        assert (len(meta.base_ids), len(meta.novel_ids)) == (40, 10)
        records = DatasetCatalog.get("toy40_train")
        written = _load(result["train_json"])["annotations"]
        assert sum(len(r["annotations"]) for r in records) == len(written)  # none dropped
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
