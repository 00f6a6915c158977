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


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if the model is built: the error must come before any model work."""
    import fsod_d2.predictor as predictor

    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before the input was checked")

    monkeypatch.setattr(predictor.TorchDetector, "__init__", refuse)


def _with(argv, option, value):
    i = argv.index(option)
    return argv[:i] + [option, value] + argv[i + 2 :]


def test_input_mistakes_are_one_line_before_the_model_is_built(predict, files, tmp_path, no_model):
    argv = _argv(files, tmp_path)
    empty = tmp_path / "empty_supports"
    empty.mkdir()
    (tmp_path / "a_file").write_text("x")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((files / "model.pth").read_bytes()[:200])
    cases = [
        (_with(argv, "--input", str(tmp_path / "nothing*.png")), "nothing*.png"),
        (_with(argv, "--supports", str(empty)), "has no class sub-folder"),
        (_with(argv, "--output", ""), "--output is empty"),
        (_with(argv, "--output", str(tmp_path / "a_file")), "is a file, not a folder"),
        ([*argv, "--k-shot", "-1"], "--k-shot -1"),
        ([*argv, "MODEL.FSOD.RELATON_DIM", "8"], "did you mean MODEL.FSOD.RELATION_DIM"),
        (_with(argv, "--config-file", "configs/fsod_mnv2_cpux.yaml"), "fsod_mnv2_cpu.yaml"),
    ]
    no_supports = [a for a in argv if a not in ("--supports", str(files / "supports"))]
    cases += [
        ([*no_supports, "--prototypes", str(tmp_path / "none.pth")], "none.pth: no such file"),
        ([*no_supports, "--prototypes", str(truncated)], "truncated.pth cannot be read"),
        ([*no_supports, "--prototypes", str(files / "model.pth")], "not a prototype file"),
    ]
    for args, expected in cases:
        with pytest.raises(SystemExit) as e:
            predict.main(args)
        assert expected in _one_line_error(e), (args, e.value.code)


def test_weights_of_another_config_stop_in_one_line(predict, files, tmp_path):
    """The demo's MobileNetV2 config with the tiny model's weights: refused, naming both."""
    argv = _with(_argv(files, tmp_path), "--config-file", "configs/demo/fsod_toy_mnv2.yaml")
    with pytest.raises(SystemExit) as e:
        predict.main(argv)
    msg = _one_line_error(e)
    assert "model.pth do not fit the model of configs/demo/fsod_toy_mnv2.yaml" in msg


def test_non_images_are_listed_and_nothing_drawn_is_explained(predict, files, tmp_path, caplog):
    queries = tmp_path / "queries"
    shutil.copytree(files / "queries", queries)
    (queries / "readme.txt").write_text("notes")
    argv = [*_argv(files, tmp_path, queries=queries), "--confidence-threshold", "0.999"]
    with caplog.at_level("WARNING"):
        dataset = predict.main(argv)
    assert len(dataset["images"]) == 2
    assert dataset["info"]["skipped_files"] == [str(queries / "readme.txt")]
    text = caplog.text
    assert "readme.txt" in text and "not an image" in text
    best = max(a["score"] for a in dataset["annotations"])
    assert (
        f"no detection reached --confidence-threshold 1.00 (the highest score is {best:.2f}" in text
    )


def test_k_shot_keeps_the_first_k_examples(predict, files, tmp_path):
    from fsod_deploy.prototypes import Prototypes

    predict.main([*_argv(files, tmp_path), "--k-shot", "1"])
    one = Prototypes.load(str(tmp_path / "out" / "prototypes.npz"))
    predict.main(_with(_argv(files, tmp_path), "--output", str(tmp_path / "all")))
    both = Prototypes.load(str(tmp_path / "all" / "prototypes.npz"))
    assert one.class_names == both.class_names == ["disc", "square"]
    assert not np.allclose(one.roi_prototypes, both.roi_prototypes)
