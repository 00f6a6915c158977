"""The app without a browser (fsod_deploy.app_state): classes from drawn examples detect what
tools/predict.py detects with the same examples as a support folder, prototypes are computed
once per class, the threshold redraws without the model, exemplar counting, and every user
mistake is one line for the page."""

import json
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from fsod_d2.predictor import TorchDetector
from fsod_deploy.app_state import (
    AppError,
    ClassLibrary,
    Corners,
    Session,
    parse_box,
    parse_box_lines,
    read_example,
)
from fsod_deploy.support_folder import SupportFolderError, load_support_folder, save_support_folder

from .common import TINY_CONFIG, draw_shape, get_tiny_cfg, load_tool

# a lower score threshold than the tiny config's, so that random weights detect something
OPTS = ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.02")
EXAMPLE_BOX = [30, 40, 80, 90]  # the square in example.png
QUERY_SQUARES = [[20, 20, 60, 60], [120, 90, 170, 140]]


def _image(rng, size, shapes):
    img = rng.integers(90, 140, size=(*size, 3), dtype=np.uint8)
    for cls, box in shapes:
        draw_shape(img, cls, box)
    return img


def make_app_files(root) -> dict:
    """A seeded random tiny model (relation scores spread, as tests/test_export.py does, so it
    detects something), an example image with one square, a query with two squares and a
    disc, a file that is not an image."""
    torch.manual_seed(0)
    model = build_model(get_tiny_cfg(*OPTS))
    with torch.no_grad():
        for name, p in model.roi_heads.relation.named_parameters():
            if name.endswith(("fc.weight", "mlp.3.weight")):
                p.mul_(40.0)
    DetectionCheckpointer(model, save_dir=str(root)).save("model")
    rng = np.random.default_rng(0)
    cv2.imwrite(str(root / "example.png"), _image(rng, (128, 160), [(0, EXAMPLE_BOX)]))
    cv2.imwrite(str(root / "disc.png"), _image(rng, (96, 96), [(1, [10, 10, 86, 86])]))
    query = _image(rng, (160, 200), [(0, b) for b in QUERY_SQUARES] + [(1, [120, 10, 160, 50])])
    cv2.imwrite(str(root / "query.png"), query)
    (root / "notes.txt").write_text("not an image")
    return {
        "root": root,
        "weights": str(root / "model.pth"),
        "example": str(root / "example.png"),
        "disc": str(root / "disc.png"),
        "query": str(root / "query.png"),
        "text": str(root / "notes.txt"),
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_app_files(tmp_path_factory.mktemp("app"))


@pytest.fixture(scope="module")
def detector(files):
    cfg = get_tiny_cfg(*OPTS, "MODEL.WEIGHTS", files["weights"])
    cfg.freeze()
    return TorchDetector(cfg, config_file=str(TINY_CONFIG))


@pytest.fixture
def library(detector):
    return ClassLibrary(detector, "pytorch")


@pytest.fixture
def session(library, tmp_path):
    s = Session(library, str(tmp_path / "page"))
    yield s
    s.close()


def _predict(files, tmp_path, supports, query, threshold=0.3):
    """tools/predict.py on the same input, with this process's thread count."""
    out = tmp_path / "predicted"
    load_tool("predict").main(
        ["--config-file", str(TINY_CONFIG), "--weights", files["weights"],
         "--supports", str(supports), "--input", query, "--output", str(out),
         "--confidence-threshold", str(threshold), "--threads", str(torch.get_num_threads()),
         *OPTS]
    )  # fmt: skip
    with open(out / "detections.json") as f:
        return json.load(f)


def _without_paths(dataset):
    """A COCO dataset with image file names reduced to their base names."""
    images = [dict(im, file_name=os.path.basename(im["file_name"])) for im in dataset["images"]]
    return dict(dataset, images=images)


def test_a_drawn_class_detects_what_predict_detects(files, library, session, tmp_path):
    names, _ = session.set_examples([files["example"]])
    _, boxes, _ = session.click_example(names[0], 30, 40, "")
    _, boxes, message = session.click_example(names[0], 80, 90, boxes)
    assert boxes == "example.png: 30, 40, 80, 90" and "box 30, 40, 80, 90" in message
    assert "Added class 'square'" in session.add_drafted_class("square", boxes)
    session.set_examples([files["disc"]])  # a whole-image example (no box)
    session.add_drafted_class("disc", "")
    assert library.names() == ["disc", "square"]

    view = session.detect([files["query"]], threshold=0.3)
    saved = tmp_path / "saved"
    assert "Saved 2 classes" in library.save_folder(str(saved))
    assert json.loads((saved / "square" / "boxes.json").read_text()) == {
        "example.png": [30.0, 40.0, 80.0, 90.0]
    }
    assert not (saved / "disc" / "boxes.json").exists()

    expected = _predict(files, tmp_path, saved, files["query"], threshold=0.3)
    with open(session.coco_json()) as f:
        app = json.load(f)
    assert len(expected["annotations"]) > 0
    assert _without_paths(app) == _without_paths(expected)  # the same file, number for number

    shown = [a for a in expected["annotations"] if a["score"] >= 0.3]
    page = view.data["images"][0]["detections"]
    assert len(page) == len(shown) == len(view.rows) > 0
    names = {c["id"]: c["name"] for c in expected["categories"]}
    for d, a in zip(page, shown):
        x, y, w, h = a["bbox"]
        assert d["label"] == names[a["category_id"]] and d["score"] == a["score"]
        np.testing.assert_allclose(d["box"], [x, y, x + w, y + h], rtol=0, atol=1e-4)


def test_prototypes_are_computed_once_per_class(files, library, session, tmp_path):
    ex = read_example(files["example"])
    library.add_class("square", [(ex, [EXAMPLE_BOX])])
    first = library.prototypes()
    assert library.prototype_computations == 1
    session.detect([files["query"]])
    session.detect([files["query"]])
    assert library.prototype_computations == 1 and session.model_runs == 2
    library.remove_class("square")
    library.add_class("square", [(ex, [EXAMPLE_BOX])])  # the same examples again
    assert library.prototype_computations == 1

    # saved and loaded back: predict.py's reader crops them as the app did
    library.save_folder(str(tmp_path / "saved"))
    ((name, crops, boxes),) = library.detector.load_support_folder(str(tmp_path / "saved"))
    assert name == "square"
    np.testing.assert_array_equal(crops, library._classes["square"].crops)
    message = library.load_folder(str(tmp_path / "saved"))
    assert "replaced the classes of the same name: square" in message
    assert library.prototype_computations == 1  # the folder's crops are the app's
    again = library.prototypes()
    np.testing.assert_array_equal(again.rpn_kernels, first.rpn_kernels)
    np.testing.assert_array_equal(again.roi_prototypes, first.roi_prototypes)
    assert again.support_fingerprint == first.support_fingerprint


def test_the_threshold_redraws_without_the_model(files, library, session):
    library.add_class("square", [(read_example(files["example"]), [EXAMPLE_BOX])])
    low = session.detect([files["query"]], threshold=0.0)
    runs = session.model_runs
    scores = sorted(d["score"] for d in low.data["images"][0]["detections"])
    assert scores[0] < scores[-1]
    mid = scores[len(scores) // 2]
    high = session.redraw(mid)
    assert session.model_runs == runs
    shown = high.data["images"][0]["detections"]
    assert len(shown) == sum(s >= mid for s in scores) < len(scores)
    assert all(d["score"] >= mid for d in shown) and len(high.rows) == len(shown)
    assert not np.array_equal(low.pictures[0][0], high.pictures[0][0])
    assert session.redraw(0.0).data["images"] == low.data["images"]


def test_counting_from_boxes_on_the_image(files, library, session, tmp_path):
    session.set_count_image(files["query"])
    boxes = ""
    for box in QUERY_SQUARES:
        _, boxes, _ = session.click_count(box[0], box[1], boxes)
        _, boxes, _ = session.click_count(box[2], box[3], boxes)
    assert parse_box_lines(boxes) == {"": [[float(v) for v in b] for b in QUERY_SQUARES]}
    view = session.count_in_image(boxes, threshold=0.3)
    runs = session.model_runs

    # the same as predict.py with the query as a support image with these two boxes
    folder = tmp_path / "exemplars"
    with open(files["query"], "rb") as f:
        save_support_folder(str(folder), {"object": [("query.png", f.read(), QUERY_SQUARES)]})
    expected = _predict(files, tmp_path, folder, files["query"], threshold=0.3)
    shown = [a for a in expected["annotations"] if a["score"] >= 0.3]
    assert view.data["count"] == len(shown) == len(view.data["detections"]) > 0
    assert [d["score"] for d in view.data["detections"]] == [a["score"] for a in shown]
    assert f"{len(shown)} objects like the 2 examples" in view.message

    fewer = session.recount(0.9)
    assert session.model_runs == runs and fewer.data["count"] <= view.data["count"]
    assert "Added class 'two squares'" in session.add_counted_class("two squares", boxes)
    assert library.table() == [["two squares", 2, "boxes on one image"]]


def test_mistakes_are_one_line_for_the_page(files, detector, library, session, tmp_path):
    def fails(match, fn, *args):
        with pytest.raises(AppError, match=match) as e:
            fn(*args)
        assert "\n" not in str(e.value)

    fails(r"notes\.txt is not an image", read_example, files["text"])
    fails(r"notes\.txt is not an image", session.set_examples, [files["text"]])
    fails("no class to detect", session.detect, [files["query"]])
    fails("the two clicks give a box without area", Corners(pending=(5, 5)).click, 5, 40)
    fails("has no area", parse_box, "10, 10, 10, 20")
    fails("is not a box", parse_box, "10, 10, 20")
    ex = read_example(files["example"])
    fails("no area inside", library.add_class, "far", [(ex, [[500, 500, 600, 600]])])
    fails("has no name", library.add_class, " ", [(ex, None)])
    fails("cannot be a folder name", library.add_class, "a/b", [(ex, None)])
    library.add_class("square", [(ex, None)])
    fails("there is a class named 'square'", library.add_class, "square", [(ex, None)])
    fails("no such file", library.load_prototype_file, str(tmp_path / "none.npz"))
    fails("does not exist", library.load_folder, str(tmp_path / "nowhere"))
    fails("not an empty folder", library.save_folder, str(tmp_path))
    fails("upload the image to count in first", session.count_in_image, "1, 1, 5, 5")
    session.set_count_image(files["query"])
    fails("1 to 3 boxes", session.count_in_image, "")
    fails("3 example boxes at most", session.click_count, 1, 1, "1,1,5,5\n1,1,6,6\n1,1,7,7")

    # a non-image among images: skipped, named, listed in the COCO json like predict.py does
    view = session.detect([files["text"], files["query"]])
    assert "Skipped: notes.txt is not an image" in view.message
    with open(session.coco_json()) as f:
        assert json.load(f)["info"]["unreadable_images"] == ["notes.txt"]
    fails("notes.txt is not an image", session.detect, [files["text"]])

    # prototypes of other weights: refused, naming the file the user gave
    torch.manual_seed(1)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    DetectionCheckpointer(build_model(get_tiny_cfg(*OPTS)), save_dir=str(other_dir)).save("m")
    cfg = get_tiny_cfg(*OPTS, "MODEL.WEIGHTS", str(other_dir / "m.pth"))
    cfg.freeze()
    other = ClassLibrary(TorchDetector(cfg), "pytorch")
    other.add_class("square", [(ex, [EXAMPLE_BOX])])
    path = other.save_prototypes(str(tmp_path / "upload_dir" / "theirs.npz"))
    fails(r"theirs\.npz were computed with other weights", library.load_prototype_file, path,
          "theirs.npz")  # fmt: skip
    mine = library.save_prototypes(str(tmp_path / "mine.npz"))
    assert "Loaded 1 class from mine.npz: square" in library.load_prototype_file(mine)
    assert library.table() == [["square", "-", "prototype file mine.npz"]]
    fails("no class with example images", library.save_folder, str(tmp_path / "new"))


def test_support_folder_writer_round_trip(files, tmp_path):
    with open(files["example"], "rb") as f:
        data = f.read()
    classes = {"b": [("x.png", data, [[1, 2, 30, 40], [5, 5, 50, 60]]), ("y.png", data, None)]}
    save_support_folder(str(tmp_path / "s"), classes)
    assert sorted(os.listdir(tmp_path / "s" / "b")) == ["boxes.json", "x.png", "y.png"]
    ((name, crops, boxes),) = load_support_folder(
        str(tmp_path / "s"), size=64, context=4, image_format="BGR"
    )
    assert name == "b" and crops.shape == (3, 3, 64, 64) and boxes.shape == (3, 4)
    with pytest.raises(SupportFolderError, match="not an image file name"):
        save_support_folder(str(tmp_path / "t"), {"b": [("x.txt", data, None)]})
    assert not (tmp_path / "t").exists()  # nothing half-written
    with pytest.raises(SupportFolderError, match="not an empty folder"):
        save_support_folder(str(tmp_path / "s"), classes)


def test_box_text():
    assert parse_box("[1, 2.5, 30, 40]") == [1.0, 2.5, 30.0, 40.0]
    assert parse_box_lines("a.png: 1, 2, 3, 4\n\nb: c.png: 5 6 7 8", ["a.png", "b: c.png"]) == {
        "a.png": [[1.0, 2.0, 3.0, 4.0]],
        "b: c.png": [[5.0, 6.0, 7.0, 8.0]],
    }
    with pytest.raises(AppError, match="start it with an example's file name"):
        parse_box_lines("d.png: 1, 2, 3, 4", ["a.png"])
    corners = Corners()
    assert corners.click(50, 60) is None and corners.pending == (50, 60)
    assert corners.click(10, 20) == [10.0, 20.0, 50.0, 60.0] and corners.pending is None
