"""Seeded K-shot split generation (library and tools/prepare_fewshot_splits.py)."""

import hashlib
import json
import os
from collections import Counter

import pytest

from fsod_d2.data.datasets.builtin import builtin_kshot_json
from fsod_d2.data.splits import resolve_classes, sample_kshot

from .common import load_tool, make_coco_dataset
from .test_data_registration import _write_voc


def _tool():
    return load_tool("prepare_fewshot_splits")


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return make_coco_dataset(tmp_path_factory.mktemp("splits"), num_images=40, max_objects=4)


def test_kshot_exact_counts_and_whole_images(coco):
    _, _, data = coco
    for k in (1, 3, 5):
        out = sample_kshot(data, k, seed=0)
        per_class = Counter(a["category_id"] for a in out["annotations"])
        assert set(per_class.values()) == {k}, per_class
        assert out["categories"] == sorted(data["categories"], key=lambda c: c["id"])
        assert {im["id"] for im in out["images"]} == {a["image_id"] for a in out["annotations"]}
        # TFA property: a kept image has *all* its instances of the class it was drawn for
        full = Counter((a["image_id"], a["category_id"]) for a in data["annotations"])
        kept = Counter((a["image_id"], a["category_id"]) for a in out["annotations"])
        assert all(full[key] == n for key, n in kept.items())
    assert sample_kshot(data, 3, 0) == sample_kshot(data, 3, 0)
    assert sample_kshot(data, 3, 0) != sample_kshot(data, 3, 1)
    # a class's draw does not depend on the other classes sampled
    one = sample_kshot(data, 3, 0, class_ids=[7])
    both = sample_kshot(data, 3, 0)
    assert one["annotations"] == [a for a in both["annotations"] if a["category_id"] == 7]


def test_resolve_classes_errors():
    cats = [{"id": 1, "name": "cat"}, {"id": 5, "name": "dog"}]
    assert resolve_classes("dog, 1", cats) == [1, 5]
    with pytest.raises(ValueError, match=r"Unknown classes \['cow', 9\].*cat, dog"):
        resolve_classes(["cow", 9], cats, source="x.json")
    with pytest.raises(ValueError, match="twice"):
        resolve_classes(["cat", 1], cats)


def test_tool_json_mode_byte_identical(coco, tmp_path):
    json_path, _, _ = coco
    tool = _tool()

    def run(out):
        return tool.main([
            "json", "--input", json_path, "--output-dir", str(out), "--prefix", "tiny",
            "--shots", "1", "5", "--seeds", "0", "1", "--classes", "class3,class7,11",
        ])  # fmt: skip

    first, second = run(tmp_path / "a"), run(tmp_path / "b")
    assert [os.path.basename(p) for p in first] == [
        "tiny_1shot_seed0.json", "tiny_5shot_seed0.json",
        "tiny_1shot_seed1.json", "tiny_5shot_seed1.json",
    ]  # fmt: skip
    digest = [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in first]
    assert digest == [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in second]
    assert digest[0] != digest[2]  # seeds differ
    with open(first[1]) as f:
        out = json.load(f)
    assert Counter(a["category_id"] for a in out["annotations"]) == {3: 5, 7: 5, 11: 5}
    assert out["info"]["fsod_d2_kshot"]["seed"] == 0


def test_tool_voc_protocol(tmp_path):
    for year, ids in (("VOC2007", ["000005", "000007"]), ("VOC2012", ["2008_000008"])):
        voc = tmp_path / year
        for i, fileid in enumerate(ids):
            _write_voc(voc, fileid, [("cow", 0, (1, 1, 20, 30)), ("bird", i % 2, (5, 5, 40, 40))])
        (voc / "ImageSets" / "Main").mkdir(parents=True)
        (voc / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids) + "\n")
    written = _tool().main(["voc", "--root", str(tmp_path), "--shots", "2", "--seeds", "3"])
    path = builtin_kshot_json("voc", 2, 3, str(tmp_path))
    assert path in written and os.path.isfile(path)
    with open(path) as f:
        out = json.load(f)
    counts = Counter(a["category_id"] for a in out["annotations"])
    assert counts == {10: 2, 3: 2}  # cow: 2 of 3; bird: the 2 non-difficult instances


def test_tool_json_mode_draws_only_boxes_usable_as_supports(tmp_path):
    """By default the json mode skips boxes below FSOD.SUPPORT.MIN_BOX_SIZE (8 px): a K-shot
    file of such boxes could not give evaluation supports."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 64} for i in (1, 2)]
    boxes = {1: [2, 2, 4, 4], 2: [10, 10, 20, 20]}  # image 1: a 4 x 4 box, image 2: 20 x 20
    anns = [
        {"id": i, "image_id": i, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
        for i, b in boxes.items()
    ]
    src = tmp_path / "train.json"
    src.write_text(json.dumps({"images": images, "annotations": anns, "categories": [
        {"id": 1, "name": "key"}]}))  # fmt: skip
    tool = _tool()

    def drawn(out, *extra):
        args = ["json", "--input", str(src), "--output-dir", str(tmp_path / out), "--shots", "1"]
        paths = tool.main(args + ["--seeds", *map(str, range(10)), *extra])
        return {json.load(open(p))["annotations"][0]["id"] for p in paths}

    assert drawn("default") == {2}
    assert drawn("all", "--min-box-size", "0") == {1, 2}


def _write_coco(path, image_ids, prefix, per_image, cats):
    """A COCO instances file with all 80 categories; ``per_image`` (category id, box) lists."""
    images = [{"id": i, "file_name": f"{prefix}_{i:06d}.jpg", "width": 64, "height": 48}
              for i in image_ids]  # fmt: skip
    anns = []
    for i in image_ids:
        for cid, box in per_image(i):
            anns.append({"id": 1000 * i + len(anns), "image_id": i, "category_id": cid,
                         "bbox": box, "area": box[2] * box[3], "iscrowd": 0})  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))


def _coco_sources(root):
    """train2014 + valminusminival2014 (TFA's trainvalno5k) and train2017: person (1, novel),
    car (3, novel) and giraffe (25, base); giraffe twice in odd images."""
    from fsod_d2.data.splits import coco_thing_categories

    cats = coco_thing_categories()

    def objects(i):
        out = [(1, [2, 2, 20, 30]), (3 if i % 3 else 25, [30, 10, 25, 20])]
        return out + ([(25, [10, 30, 12, 12])] if i % 2 else [])

    ann = root / "coco" / "annotations"
    _write_coco(ann / "instances_train2014.json", range(1, 7), "COCO_train2014", objects, cats)
    _write_coco(ann / "instances_valminusminival2014.json", range(101, 105), "COCO_val2014",
                objects, cats)  # fmt: skip
    _write_coco(ann / "instances_train2017.json", range(1, 9), "train2017", objects, cats)
    return cats


@pytest.mark.parametrize("protocol", ["coco14", "coco17"])
def test_tool_coco_protocols(tmp_path, protocol):
    """The COCO modes read detectron2's layout under --root and write the files the builtin
    datasets are registered with: K of every annotated class per file, whole images, the 80
    categories kept, byte-identical when run again."""
    tool = _tool()
    with pytest.raises(SystemExit, match="instances_train20"):  # sources missing: one line
        tool.main([protocol, "--root", str(tmp_path / "empty")])
    runs = []
    for name in ("a", "b"):
        cats = _coco_sources(tmp_path / name)
        args = [protocol, "--root", str(tmp_path / name), "--shots", "1", "2", "--seeds", "0", "1"]
        runs.append(tool.main(args))
    first, second = runs
    kshot = [
        builtin_kshot_json(protocol, k, s, str(tmp_path / "a")) for s in (0, 1) for k in (1, 2)
    ]
    assert first[-4:] == kshot
    for p, q in zip(first, second):
        assert open(p, "rb").read() == open(q, "rb").read()
    for k, path in zip((1, 2, 1, 2), kshot):
        out = json.load(open(path))
        assert out["categories"] == cats and len(cats) == 80
        counts = Counter(a["category_id"] for a in out["annotations"])
        assert counts == {1: k, 3: k, 25: k}
        assert {im["id"] for im in out["images"]} == {a["image_id"] for a in out["annotations"]}
    if protocol == "coco14":  # trainvalno5k: both sources, file names under the coco/ root
        trainval = json.load(open(first[0]))
        assert first[0] == str(tmp_path / "a" / "fsod_splits" / "coco14" / "trainvalno5k.json")
        names = {im["id"]: im["file_name"] for im in trainval["images"]}
        assert names[1] == "train2014/COCO_train2014_000001.jpg"
        assert names[101] == "val2014/COCO_val2014_000101.jpg" and len(names) == 10
    else:
        assert len(first) == 4  # the K-shot files only; images stay in coco/train2017
        assert json.load(open(kshot[0]))["images"][0]["file_name"].startswith("train2017_")
