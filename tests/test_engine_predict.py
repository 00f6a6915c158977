"""tools/predict.py: support folder (with and without box file) or prototype file -> images +
COCO JSON that pycocotools loads."""

import json
import shutil

import cv2
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from pycocotools.coco import COCO

from fsod_datagen.shapes import generate_toy_dataset

from .common import TINY_CONFIG, get_tiny_cfg, load_tool

TOY = {"num_base": 3, "num_novel": 2, "num_train": 8, "num_val": 3, "image_size": (96, 128)}


@pytest.fixture(scope="module")
def predict_main():
    predict = load_tool("predict")
    return predict.main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Weights of a (randomly initialised) tiny model, a support folder, query images."""
    root = tmp_path_factory.mktemp("predict")
    toy = generate_toy_dataset(root / "toy", **TOY)
    torch.manual_seed(0)
    model = build_model(get_tiny_cfg())
    weights = root / "model.pth"
    DetectionCheckpointer(model, save_dir=str(root)).save("model")
    train = json.loads(open(toy["train_json"]).read())
    cats = {c["id"]: c["name"] for c in train["categories"]}
    files = {im["id"]: im["file_name"] for im in train["images"]}
    supports = root / "supports"
    for cid in sorted(cats)[:2]:  # two classes: one with a box file, one whole-image crops
        d = supports / cats[cid]
        d.mkdir(parents=True)
        anns = [a for a in train["annotations"] if a["category_id"] == cid][:2]
        boxes = {}
        for i, a in enumerate(anns):
            img = cv2.imread(f"{toy['image_root']}/{files[a['image_id']]}")
            x, y, w, h = a["bbox"]
            if cid == sorted(cats)[0]:
                cv2.imwrite(str(d / f"shot{i}.png"), img)
                boxes[f"shot{i}.png"] = [x, y, x + w, y + h]
            else:
                crop = img[int(y) : int(y + h), int(x) : int(x + w)]
                cv2.imwrite(str(d / f"shot{i}.jpg"), crop)
        if boxes:
            (d / "boxes.json").write_text(json.dumps(boxes))
    return {"weights": weights, "supports": supports, "queries": root / "toy" / "images" / "val"}


def test_predict_from_support_folder_then_from_prototypes(predict_main, setup, tmp_path):
    out1, out2 = tmp_path / "a", tmp_path / "b"
    common = ["--config-file", str(TINY_CONFIG), "--weights", str(setup["weights"])]
    queries = [str(setup["queries"]), str(setup["queries"] / "*.jpg")]  # folder + glob (dups)
    thresh = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
    ds1 = predict_main(
        [*common, "--supports", str(setup["supports"]), "--input", *queries,
         "--output", str(out1), *thresh]
    )  # fmt: skip
    assert len(ds1["images"]) == TOY["num_val"]
    assert len(list((out1 / "vis").glob("*.png"))) == TOY["num_val"]
    assert (out1 / "prototypes.npz").is_file()

    coco = COCO(str(out1 / "detections.json"))
    assert len(coco.getCatIds()) == 2 and len(coco.getAnnIds()) > 0
    names = sorted(p.name for p in setup["supports"].iterdir())
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == names
    results = coco.loadRes(str(out1 / "coco_instances_results.json"))
    assert len(results.getAnnIds()) == len(coco.getAnnIds())

    ds2 = predict_main(
        [*common, "--prototypes", str(out1 / "prototypes.npz"), "--input", *queries,
         "--output", str(out2), *thresh]
    )  # fmt: skip
    assert ds2["annotations"] == ds1["annotations"]


def test_predict_rejects_prototypes_of_other_weights(predict_main, setup, tmp_path):
    torch.manual_seed(1)
    other = tmp_path / "other"
    other.mkdir()
    DetectionCheckpointer(build_model(get_tiny_cfg()), save_dir=str(other)).save("model")
    common = ["--config-file", str(TINY_CONFIG), "--input", str(setup["queries"])]
    predict_main(
        [*common, "--weights", str(setup["weights"]), "--supports", str(setup["supports"]),
         "--output", str(tmp_path / "a")]
    )  # fmt: skip
    for name in ("prototypes.npz", "prototypes.pth"):  # the portable and PyTorch's format
        if name.endswith(".pth"):
            predict_main(
                [*common, "--weights", str(setup["weights"]), "--supports",
                 str(setup["supports"]), "--output", str(tmp_path / "a"),
                 "--save-prototypes", str(tmp_path / "a" / name)]
            )  # fmt: skip
        with pytest.raises(SystemExit, match="(other|different) weights") as e:
            predict_main(
                [*common, "--weights", str(other / "model.pth"), "--output", str(tmp_path / "b"),
                 "--prototypes", str(tmp_path / "a" / name)]
            )  # fmt: skip
        assert "\n" not in str(e.value) and name in str(e.value)


@pytest.mark.parametrize(
    "boxes, message",
    [
        ({"shot0.png": [40, 10, 20, 30]}, r"boxes\.json.*shot0\.png"),
        ({"shot0.png": [[5, 5, 30, 30], [9, 20, 9, 40]]}, r"boxes\.json.*shot0\.png"),
        ({"shot0.png": [5, 5, 30, 30], "gone.png": [1, 1, 9, 9]}, r"boxes\.json.*gone\.png"),
    ],
    ids=["x1<x0", "empty-second-box", "unknown-image"],
)
def test_predict_refuses_a_bad_box_file_naming_it(predict_main, setup, tmp_path, boxes, message):
    """A class folder's boxes.json is checked before any model work: an inverted or empty box,
    or a box for an image that is not in the folder, stops the tool with the file's path."""
    supports = tmp_path / "supports"
    shutil.copytree(setup["supports"], supports)
    class_dir = next(d for d in sorted(supports.iterdir()) if (d / "boxes.json").is_file())
    (class_dir / "boxes.json").write_text(json.dumps(boxes))
    args = ["--config-file", str(TINY_CONFIG), "--weights", str(setup["weights"])]
    args += ["--supports", str(supports), "--input", str(setup["queries"])]
    with pytest.raises((ValueError, SystemExit), match=message) as info:
        predict_main([*args, "--output", str(tmp_path / "out")])
    assert str(class_dir) in str(info.value)
    assert not (tmp_path / "out" / "prototypes.npz").exists()
