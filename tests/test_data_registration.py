"""Few-shot dataset registration: Python and config paths, ids, bad annotations, builtins."""

import json
import logging
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from fsod_d2.data import register_fewshot_coco, register_from_config
from fsod_d2.data.datasets.voc_fewshot import load_voc_xml, voc_to_coco
from fsod_d2.data.splits import VOC_CLASSES

from .common import get_tiny_cfg, make_coco_dataset

IDS = (3, 7, 11, 20, 31, 42)  # non-contiguous on purpose


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("reg")
    extra = [
        {"image_id": 100, "category_id": 3, "bbox": [5, 5, 0, 10], "iscrowd": 0},  # zero width
        {"image_id": 101, "category_id": 7, "bbox": [5, 5, 10, -3], "iscrowd": 0},  # negative
        {"image_id": 102, "category_id": 11, "bbox": [500, 500, 10, 10], "iscrowd": 0},  # outside
        {"image_id": 103, "category_id": 99, "bbox": [1, 1, 10, 10], "iscrowd": 0},  # unknown id
    ]
    return make_coco_dataset(root, extra_annotations=extra)


def _cleanup(*names):
    for n in names:
        for v in (n, n + "_base", n + "_novel"):
            if v in DatasetCatalog:
                DatasetCatalog.remove(v)
                MetadataCatalog.remove(v)


def test_register_by_names_and_ids_non_contiguous(tiny, caplog):
    json_path, image_root, coco = tiny
    names = register_fewshot_coco(
        "t_reg_a", json_path, image_root, ["class3", "class7", 11, "20"], "class31,class42"
    )
    assert names == ["t_reg_a", "t_reg_a_base", "t_reg_a_novel"]
    meta = MetadataCatalog.get("t_reg_a")
    assert meta.thing_classes == [f"class{c}" for c in IDS]
    assert meta.thing_dataset_id_to_contiguous_id == {c: i for i, c in enumerate(IDS)}
    assert meta.base_ids == [0, 1, 2, 3] and meta.novel_ids == [4, 5]
    assert meta.base_classes == ["class3", "class7", "class11", "class20"]
    assert meta.novel_classes == ["class31", "class42"]
    assert meta.evaluator_type == "coco" and meta.json_file == json_path
    assert meta.image_root == image_root

    with caplog.at_level(logging.WARNING, logger="fsod_d2"):
        dicts = DatasetCatalog.get("t_reg_a")
    assert len(dicts) == len(coco["images"])
    # 3 degenerate boxes (zero, negative, outside the image) and 1 unknown id: dropped, counted
    text = caplog.text
    assert "3 zero/negative-area box" in text and "annotations 1 with a category id" in text
    # contiguous ids both ways: dataset id -> contiguous in dicts, and back via the metadata
    inv = {v: k for k, v in meta.thing_dataset_id_to_contiguous_id.items()}
    by_id = {d["image_id"]: d for d in dicts}
    good = [a for a in coco["annotations"] if a["category_id"] in IDS and a["bbox"][2] > 0]
    good = [a for a in good if a["bbox"][3] > 0 and a["bbox"][0] < 80]
    for a in good:
        got = [
            inv[x["category_id"]]
            for x in by_id[a["image_id"]]["annotations"]
            if x["bbox"] == [float(v) for v in a["bbox"]]
        ]
        assert got == [a["category_id"]]
    assert sum(len(d["annotations"]) for d in dicts) == len(good)
    _cleanup("t_reg_a")


def test_base_and_novel_variants(tiny):
    json_path, image_root, _ = tiny
    register_fewshot_coco("t_reg_b", json_path, image_root, ["class3", "class7", "class11"])
    meta = MetadataCatalog.get("t_reg_b_base")
    assert meta.novel_classes == ["class20", "class31", "class42"]  # default: all non-base
    assert meta.subset == "base" and not meta.as_dict().get("json_file")
    base = DatasetCatalog.get("t_reg_b_base")
    novel = DatasetCatalog.get("t_reg_b_novel")
    everything = DatasetCatalog.get("t_reg_b")
    assert {a["category_id"] for d in base for a in d["annotations"]} == {0, 1, 2}
    assert {a["category_id"] for d in novel for a in d["annotations"]} == {3, 4, 5}
    count = lambda ds: sum(len(d["annotations"]) for d in ds)  # noqa: E731
    assert count(base) + count(novel) == count(everything)
    assert MetadataCatalog.get("t_reg_b_novel").thing_classes == meta.thing_classes
    # registering again identically is a no-op; differently is an error
    register_fewshot_coco("t_reg_b", json_path, image_root, ["class3", "class7", "class11"])
    with pytest.raises(ValueError, match="already registered"):
        register_fewshot_coco("t_reg_b", json_path, image_root, ["class3"])
    _cleanup("t_reg_b")


def test_errors_at_registration(tiny, tmp_path):
    json_path, image_root, _ = tiny
    with pytest.raises(ValueError, match=r"Unknown base classes \['dragon'\].*class3"):
        register_fewshot_coco("t_reg_c", json_path, image_root, ["class3", "dragon"])
    with pytest.raises(ValueError, match="both base and novel"):
        register_fewshot_coco("t_reg_c", json_path, image_root, ["class3"], ["class3"])
    missing = str(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="t_reg_c.*nope.json"):
        register_fewshot_coco("t_reg_c", missing, image_root, ["class3"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(ValueError, match="'categories'"):
        register_fewshot_coco("t_reg_c", str(bad), image_root, ["class3"])
    assert "t_reg_c" not in DatasetCatalog


def test_register_from_config(tiny, monkeypatch):
    json_path, image_root, _ = tiny
    monkeypatch.setenv("TINY_ROOT", os.path.dirname(json_path))
    entry = "name=t_reg_cfg; json=$TINY_ROOT/instances.json; images=$TINY_ROOT/images; base=3,7"
    cfg = get_tiny_cfg("FSOD.REGISTER", f"['{entry}']")
    assert register_from_config(cfg) == ["t_reg_cfg", "t_reg_cfg_base", "t_reg_cfg_novel"]
    assert MetadataCatalog.get("t_reg_cfg").base_classes == ["class3", "class7"]
    assert register_from_config(cfg)[0] == "t_reg_cfg"  # idempotent
    for bad, msg in [
        ("name=x;json=a.json;images=i", r"lacks \['base \(or split\)'\]"),
        ("name=x;json=a.json;images=i;base=1;colour=red", "not one of"),
        ("name=x;json=/does/not/exist.json;images=i;base=1", "not found"),
    ]:
        with pytest.raises((ValueError, FileNotFoundError), match=msg):
            register_from_config(get_tiny_cfg("FSOD.REGISTER", f"['{bad}']"))
    _cleanup("t_reg_cfg")


def test_register_from_config_with_split_file_and_kshot_folder(tiny, tmp_path):
    """Classes named once in a split file shared by the entries; K-shot files from a folder."""
    from fsod_d2.data.splits import dump_json, sample_kshot

    json_path, image_root, coco = tiny
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"base": ["class3", "class7", 11], "novel": ["class20"]}))
    folder = tmp_path / "kshots"
    for k, seed in ((1, 0), (2, 1)):
        dump_json(sample_kshot(coco, k, seed), str(folder / f"tiny_{k}shot_seed{seed}.json"))
    (folder / "notes.json").write_text("{}")  # not a K-shot file: ignored
    entry = f"name=t_reg_split;json={json_path};images={image_root};split={split};kshots={folder}"
    cfg = get_tiny_cfg("FSOD.REGISTER", f"['{entry}']")
    names = register_from_config(cfg)
    assert {"t_reg_split_base", "t_reg_split_1shot_seed0", "t_reg_split_2shot_seed1_novel"} <= set(
        names
    )
    for name in ("t_reg_split", "t_reg_split_2shot_seed1"):
        meta = MetadataCatalog.get(name)
        assert meta.base_classes == ["class3", "class7", "class11"]
        assert meta.novel_classes == ["class20"]
    assert register_from_config(cfg) == names  # idempotent
    for bad, msg in [
        (f"split={split};base=class3", "not both"),
        (f"split={tmp_path / 'none.json'}", "split file .*none.json does not exist"),
        (f"split={folder / 'notes.json'}", "must hold"),
        (f"base=class3;kshots={tmp_path / 'missing'}", "kshots folder .*missing does not exist"),
        (f"base=class3;kshots={tmp_path}", "no \\*_<K>shot_seed<S>.json"),
    ]:
        entry = f"name=t_reg_bad;json={json_path};images={image_root};{bad}"
        with pytest.raises((ValueError, FileNotFoundError), match=msg):
            register_from_config(get_tiny_cfg("FSOD.REGISTER", f"['{entry}']"))
    for name in ("t_reg_split", "t_reg_split_1shot_seed0", "t_reg_split_2shot_seed1"):
        _cleanup(name)


def test_builtins_are_lazy_and_complete(tmp_path):
    names = set(DatasetCatalog)
    for n in [
        "fsod_coco14_trainval_base",
        "fsod_coco14_test_novel",
        "fsod_coco14_trainval_30shot_seed9_novel",
        "fsod_coco17_train_base",
        "fsod_coco17_val_novel",
        "fsod_voc0712_trainval_split3_base",
        "fsod_voc07_test_split2_novel",
        "fsod_voc0712_trainval_split1_10shot_seed0",
        "fsod_toy_train_base",
        "fsod_toy_val",
    ]:
        assert n in names, n
    coco = MetadataCatalog.get("fsod_coco14_test")
    assert len(coco.base_ids) == 60 and len(coco.novel_ids) == 20
    assert "couch" in coco.novel_classes and "giraffe" in coco.base_classes
    voc = MetadataCatalog.get("fsod_voc07_test_split1")
    assert voc.novel_classes == ["bird", "bus", "cow", "motorbike", "sofa"]
    assert voc.evaluator_type == "coco" and voc.thing_classes == list(VOC_CLASSES)
    toy = MetadataCatalog.get("fsod_toy_train")
    assert len(toy.base_ids) == 20 and len(toy.novel_ids) == 5
    if not os.path.exists(coco.json_file):  # no COCO here: clear error when used
        with pytest.raises(FileNotFoundError, match="fsod_coco14_test.*README"):
            DatasetCatalog.get("fsod_coco14_test")


def _write_voc(root, fileid, objects, size=(60, 80)):
    os.makedirs(root / "Annotations", exist_ok=True)
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, d, b in objects
    )
    xml = (
        f"<annotation><size><width>{size[1]}</width><height>{size[0]}</height></size>{objs}"
        "</annotation>"
    )
    (root / "Annotations" / f"{fileid}.xml").write_text(xml)


def test_voc_loader_and_conversion(tmp_path):
    voc = tmp_path / "VOC2007"
    _write_voc(voc, "000005", [("cow", 0, (1, 1, 20, 30)), ("sofa", 1, (5, 5, 40, 40))])
    _write_voc(voc, "000007", [("bird", 0, (10, 10, 30, 30))])
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("000005\n000007\n")
    recs = load_voc_xml(str(voc), "trainval")
    assert [r["image_id"] for r in recs] == ["000005", "000007"]
    cow = recs[0]["annotations"][0]
    assert cow["bbox"] == [0.0, 0.0, 20.0, 30.0] and cow["category_id"] == 10  # 1-based ids
    assert recs[0]["annotations"][1]["iscrowd"] == 1  # difficult
    coco = voc_to_coco(recs, str(tmp_path))
    assert [im["id"] for im in coco["images"]] == [5, 7]
    assert coco["images"][0]["file_name"] == os.path.join("VOC2007", "JPEGImages", "000005.jpg")
    assert coco["annotations"][0]["bbox"] == [0.0, 0.0, 20.0, 30.0]
