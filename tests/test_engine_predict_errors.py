"""tools/predict.py with bad input, as a user would give it: each fatal case stops with one line
that names the file and the fix (SystemExit with a message: exit code 1, no traceback); an
unreadable query image is skipped, counted and listed while the other images are processed."""

import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from .common import TINY_CONFIG, draw_shape, get_tiny_cfg, load_tool


@pytest.fixture(scope="module")
def predict():
    predict = load_tool("predict")
    return predict


def _image(path, cls, size=(96, 112)):
    img = np.full((*size, 3), 120, dtype=np.uint8)
    draw_shape(img, cls, (20, 20, 70, 80))
    cv2.imwrite(str(path), img)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Weights of a random tiny model, a support folder of 2 classes, 2 query images."""
    root = tmp_path_factory.mktemp("predict_errors")
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(get_tiny_cfg()), save_dir=str(root)).save("model")
    for cls, name in enumerate(("disc", "square")):
        (root / "supports" / name).mkdir(parents=True)
        for i in range(2):
            _image(root / "supports" / name / f"shot{i}.png", 1 - cls)
    (root / "queries").mkdir()
    for i in range(2):
        _image(root / "queries" / f"q{i}.png", i % 2)
    return root


def _argv(files, tmp_path, supports=None, queries=None, weights=None):
    return [
        "--config-file", str(TINY_CONFIG),
        "--weights", str(weights or files / "model.pth"),
        "--supports", str(supports or files / "supports"),
        "--input", str(queries or files / "queries"),
        "--output", str(tmp_path / "out"),
    ]  # fmt: skip


def _copy_supports(files, tmp_path):
    dst = tmp_path / "supports"
    shutil.copytree(files / "supports", dst)
    return dst


def _one_line_error(excinfo) -> str:
    msg = excinfo.value.code
    assert isinstance(msg, str) and msg.startswith("predict.py: error: ") and "\n" not in msg
    return msg


def test_corrupt_support_image(predict, files, tmp_path):
    supports = _copy_supports(files, tmp_path)
    bad = supports / "square" / "shot1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(SystemExit) as e:
        predict.main(_argv(files, tmp_path, supports=supports))
    msg = _one_line_error(e)
    assert f"{bad}: cannot read this support image" in msg and "replace it" in msg


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"shot0.png": [1, 2, 30, 40],}', "not valid JSON (line 1, column"),
        ("[[1, 2, 30, 40]]", "expected an object mapping image file names to boxes"),
        ('{"shot0.png": [1, 2, 30]}', "the entry of 'shot0.png' is not a box"),
        ('{"shot0.png": [30, 2, 1, 40]}', "is not [x0, y0, x1, y1] with x1 > x0"),
        ('{"shot9.png": [1, 2, 30, 40]}', "names images that are not in"),
    ],
)
def test_malformed_boxes_json(predict, files, tmp_path, content, expected):
    supports = _copy_supports(files, tmp_path)
    box_file = supports / "disc" / "boxes.json"
    box_file.write_text(content)
    with pytest.raises(SystemExit) as e:
        predict.main(_argv(files, tmp_path, supports=supports))
    msg = _one_line_error(e)
    assert str(box_file) in msg and expected in msg


def test_missing_weights_file(predict, files, tmp_path):
    missing = tmp_path / "no_such_model.pth"
    with pytest.raises(SystemExit) as e:
        predict.main(_argv(files, tmp_path, weights=missing))
    msg = _one_line_error(e)
    assert f"--weights {missing}: no such file" in msg and "model_final.pth" in msg


def test_unreadable_query_image_is_skipped_and_reported(predict, files, tmp_path):
    queries = tmp_path / "queries"
    shutil.copytree(files / "queries", queries)
    bad = queries / "q1_truncated.png"
    bad.write_bytes((queries / "q1.png").read_bytes()[:60])
    dataset = predict.main(_argv(files, tmp_path, queries=queries))
    assert [im["file_name"] for im in dataset["images"]] == [
        str(queries / "q0.png"), str(queries / "q1.png")
    ]  # fmt: skip
    assert dataset["info"]["unreadable_images"] == [str(bad)]
    saved = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert saved["info"]["unreadable_images"] == [str(bad)]
    assert sorted(p.name for p in (tmp_path / "out" / "vis").iterdir()) == ["q0.png", "q1.png"]

    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    shutil.copy(bad, only_bad / "x.png")
    with pytest.raises(SystemExit) as e:
        predict.main(_argv(files, tmp_path, queries=only_bad))
    assert "none of the 1 --input images could be read" in _one_line_error(e)


def test_weights_are_fingerprinted_once_per_call(predict, files, tmp_path, monkeypatch):
    calls = []
    import fsod_d2.modeling.meta_arch as meta_arch
    import fsod_d2.predictor as predictor

    original = predictor.weights_fingerprint

    def counting(model):
        calls.append(1)
        return original(model)

    monkeypatch.setattr(predictor, "weights_fingerprint", counting)
    monkeypatch.setattr(meta_arch, "weights_fingerprint", counting)
    dataset = predict.main(_argv(files, tmp_path))
    assert len(dataset["categories"]) == 2 and len(calls) == 1
