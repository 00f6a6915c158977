"""ONNX export and the torch-free runtime: tools/export_model.py writes the support encoder, the
detector (prototypes an input) and the manifest; fsod_deploy runs them without torch; ONNX
Runtime detects what eager PyTorch detects at other image sizes and class counts than the
export's example; bad input is one line naming the file."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from fsod_d2.export import ExportError, check_exportable
from fsod_d2.modeling.support import PrototypeSet
from fsod_d2.predictor import TorchDetector
from fsod_deploy.detector import Detections
from fsod_deploy.parity import compare_detections
from fsod_deploy.prototypes import PrototypeFileError, Prototypes
from fsod_deploy.runtime import DETECTOR_FILE, MANIFEST_FILE, ModelFolderError, OnnxDetector

from .common import (
    REPO_ROOT,
    TINY_CONFIG,
    get_tiny_cfg,
    load_tool,
    synthetic_query,
    synthetic_supports,
)

# a lower score threshold than the tiny config's, so that untrained weights detect something
OPTS = ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.02")


def _spread_scores(model) -> None:
    """Untrained relation heads give every pair nearly the same score; larger output weights
    spread them, so that the comparison is not decided by ties."""
    with torch.no_grad():
        for name, p in model.roi_heads.relation.named_parameters():
            if name.endswith(("fc.weight", "mlp.3.weight")):
                p.mul_(40.0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny model exported once, with a prototype file of tools/predict.py (.pth)
    converted by the same call."""
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = build_model(get_tiny_cfg(*OPTS))
    _spread_scores(model)
    DetectionCheckpointer(model, save_dir=str(root)).save("model_final")
    weights = str(root / "model_final.pth")
    cfg = get_tiny_cfg(*OPTS, "MODEL.WEIGHTS", weights)
    cfg.freeze()
    prototypes = TorchDetector(cfg).prototypes(_classes(cfg, 2, seed=0))
    PrototypeSet.from_numpy(prototypes).save(str(root / "mine.pth"))
    out = root / "exported"
    manifest = load_tool("export_model").main(
        ["--config-file", str(TINY_CONFIG), "--weights", weights,
         "--prototypes", str(root / "mine.pth"), "--output", str(out), *OPTS]
    )  # fmt: skip
    return {
        "root": root, "weights": weights, "dir": str(out), "manifest": manifest, "cfg": cfg,
        "prototypes": prototypes,
    }  # fmt: skip


def _classes(cfg, num_classes, seed):
    rng = np.random.default_rng(seed)
    crops, boxes = synthetic_supports(rng, list(range(num_classes)), 2, cfg.FSOD.SUPPORT.SIZE)
    crops, boxes = crops.numpy(), boxes.numpy()
    return [
        (f"c{i}", crops[2 * i : 2 * i + 2], boxes[2 * i : 2 * i + 2]) for i in range(num_classes)
    ]


def test_export_writes_the_graphs_and_the_manifest(exported):
    m = exported["manifest"]
    files = sorted(os.listdir(exported["dir"]))
    assert files == [DETECTOR_FILE, MANIFEST_FILE, "prototypes", "support_encoder.onnx"]
    with open(os.path.join(exported["dir"], MANIFEST_FILE)) as f:
        on_disk = json.load(f)
    assert on_disk["weights_fingerprint"] == m["weights_fingerprint"]
    assert on_disk["input_format"] == "BGR" and on_disk["opset"] >= 18
    assert on_disk["test_resize"] == {"min_size": 128, "max_size": 192, "interpolation": "bilinear"}
    assert on_disk["support"] == {"size": 64, "context": 4}
    assert on_disk["producer"].startswith("fsod-d2 ")
    assert "/" not in on_disk["weights_file"]  # no machine paths in the manifest


def test_onnxruntime_detects_what_pytorch_detects(exported):
    """>= 20 images at sizes other than the export's example (128 x 170), 1, 5 and 20 classes:
    the same detections above the threshold (IoU >= 0.99, score within 1e-3); eager through
    detectron2's own predictor path (DefaultPredictor)."""
    cfg = exported["cfg"]
    onnx, eager = OnnxDetector(exported["dir"]), DefaultPredictor(cfg)
    rng = np.random.default_rng(7)
    sizes = [(int(rng.integers(100, 400)), int(rng.integers(100, 400))) for _ in range(21)]
    compared = 0
    for num_classes in (1, 5, 20):
        classes = _classes(cfg, num_classes, seed=num_classes)
        p_onnx = onnx.prototypes(classes)
        p_eager = eager.model.compute_prototypes(
            torch.from_numpy(np.concatenate([c[1] for c in classes])),
            torch.from_numpy(np.concatenate([c[2] for c in classes])),
            range(num_classes),
        )
        np.testing.assert_allclose(p_onnx.rpn_kernels, p_eager.rpn_kernels, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(
            p_onnx.roi_prototypes, p_eager.roi_prototypes, atol=1e-4, rtol=1e-4
        )
        eager.model.set_prototypes(PrototypeSet.from_numpy(p_onnx))
        for h, w in sizes:
            image, _ = synthetic_query(rng, [0, 1 % num_classes], size=(h, w))
            bgr = np.ascontiguousarray(image.numpy().transpose(1, 2, 0))
            got = onnx.detect(bgr, p_onnx)
            inst = eager(bgr)["instances"]
            want = Detections(
                inst.pred_boxes.tensor.numpy(), inst.scores.numpy(), inst.pred_classes.numpy()
            )
            report = compare_detections(
                got, want, min_score=0.02, max_detections=cfg.TEST.DETECTIONS_PER_IMAGE
            )
            assert report["unmatched"] == 0, (num_classes, (h, w), report)
            assert report["max_score_diff"] <= 1e-3
            compared += report["compared"]
    assert compared > 1000  # the weights do detect: the comparison is not vacuous


def test_the_runtime_imports_and_runs_without_torch(exported, tmp_path):
    """fsod_deploy with torch and detectron2 blocked: support folder -> prototypes ->
    detections, and tools/predict.py --backend onnxruntime end to end."""
    supports = tmp_path / "supports" / "square"
    supports.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        image, _ = synthetic_query(rng, [0], size=(120, 140))
        cv2.imwrite(str(supports / f"s{i}.png"), image.numpy().transpose(1, 2, 0))
    queries = tmp_path / "queries"
    queries.mkdir()
    image, _ = synthetic_query(rng, [0, 1], size=(150, 210))
    cv2.imwrite(str(queries / "q.png"), image.numpy().transpose(1, 2, 0))
    (queries / "notes.txt").write_text("not an image")
    (queries / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    code = f"""
import runpy, sys
for name in ("torch", "torchvision", "detectron2", "fsod_d2"):
    sys.modules[name] = None  # any import of them fails
from fsod_deploy.runtime import OnnxDetector
detector = OnnxDetector({exported["dir"]!r})
p = detector.prototypes_from_folder({str(tmp_path / "supports")!r})
assert p.class_names == ["square"] and p.rpn_kernels.shape[0] == 1
sys.argv = ["predict.py", "--backend", "onnxruntime", "--model", {exported["dir"]!r},
            "--supports", {str(tmp_path / "supports")!r}, "--input", {str(queries)!r},
            "--output", {str(tmp_path / "out")!r}]
runpy.run_path({str(REPO_ROOT / "tools" / "predict.py")!r}, run_name="__main__")
assert not any(m.startswith(("torch", "detectron2")) for m in sys.modules if sys.modules[m])
print("torch-free run ok")
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch-free run ok" in proc.stdout
    with open(tmp_path / "out" / "detections.json") as f:
        dataset = json.load(f)
    assert [i["file_name"] for i in dataset["images"]] == [str(queries / "q.png")]
    assert dataset["info"]["unreadable_images"] == [str(queries / "broken.jpg")]
    assert dataset["info"]["skipped_files"] == [str(queries / "notes.txt")]
    assert dataset["categories"] == [{"id": 1, "name": "square"}]
    assert (tmp_path / "out" / "vis" / "q.png").is_file()
    assert (tmp_path / "out" / "prototypes.npz").is_file()
    assert "notes.txt" in proc.stderr and "broken.jpg" in proc.stderr


def test_both_backends_write_the_same_detections(exported, tmp_path):
    classes_dir = tmp_path / "supports"
    rng = np.random.default_rng(3)
    for c, name in enumerate(["square", "disc", "triangle"]):
        (classes_dir / name).mkdir(parents=True)
        for i in range(2):
            image, inst = synthetic_query(rng, [c], size=(120, 160))
            cv2.imwrite(str(classes_dir / name / f"{i}.png"), image.numpy().transpose(1, 2, 0))
            box = inst.gt_boxes.tensor[0].tolist()
            boxes_file = classes_dir / name / "boxes.json"
            entries = json.loads(boxes_file.read_text()) if boxes_file.exists() else {}
            entries[f"{i}.png"] = box
            boxes_file.write_text(json.dumps(entries))
    queries = tmp_path / "queries"
    queries.mkdir()
    for i in range(3):
        image, _ = synthetic_query(rng, [0, 2], size=(170 + 20 * i, 230))
        cv2.imwrite(str(queries / f"q{i}.png"), image.numpy().transpose(1, 2, 0))
    predict = load_tool("predict")
    common = ["--supports", str(classes_dir), "--input", str(queries)]
    torch_ds = predict.main(
        ["--config-file", str(TINY_CONFIG), "--weights", exported["weights"], *common,
         "--output", str(tmp_path / "pt"), *OPTS]
    )  # fmt: skip
    onnx_ds = predict.main(
        ["--backend", "onnxruntime", "--model", exported["dir"], *common,
         "--output", str(tmp_path / "ort")]
    )  # fmt: skip
    assert onnx_ds["categories"] == torch_ds["categories"]
    assert [i["file_name"] for i in onnx_ds["images"]] == [
        i["file_name"] for i in torch_ds["images"]
    ]

    def per_image(ds, image_id):
        anns = [a for a in ds["annotations"] if a["image_id"] == image_id]
        boxes = np.array([a["bbox"] for a in anns]).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        return Detections(
            boxes,
            np.array([a["score"] for a in anns]),
            np.array([a["category_id"] for a in anns]),
        )

    for image in torch_ds["images"]:
        report = compare_detections(
            per_image(onnx_ds, image["id"]), per_image(torch_ds, image["id"]), min_score=0.02,
            max_detections=100,
        )  # fmt: skip
        assert report["unmatched"] == 0 and report["compared"] > 0, report
    # the prototypes each backend saved are interchangeable (.npz, same fingerprint)
    a = Prototypes.load(str(tmp_path / "pt" / "prototypes.npz"))
    b = Prototypes.load(str(tmp_path / "ort" / "prototypes.npz"))
    assert (
        a.weights_fingerprint
        == b.weights_fingerprint
        == exported["manifest"]["weights_fingerprint"]
    )
    assert a.support_fingerprint == b.support_fingerprint
    np.testing.assert_allclose(a.roi_prototypes, b.roi_prototypes, atol=1e-4, rtol=1e-4)


def test_prototype_files_of_predict_convert_to_the_runtime_format(exported):
    out = exported["root"] / "exported"
    assert sorted(os.listdir(out / "prototypes")) == ["mine.npz"]
    onnx = OnnxDetector(str(out))
    converted = onnx.load_prototypes(str(out / "prototypes" / "mine.npz"))
    np.testing.assert_array_equal(converted.roi_prototypes, exported["prototypes"].roi_prototypes)
    assert converted.class_names == ["c0", "c1"]
    with pytest.raises(PrototypeFileError, match=r"mine\.pth is a PyTorch prototype file"):
        onnx.load_prototypes(str(exported["root"] / "mine.pth"))


def test_bad_prototypes_are_one_line(exported, tmp_path):
    onnx = OnnxDetector(exported["dir"])
    good = onnx.prototypes(_classes(exported["cfg"], 2, seed=1))
    narrow = Prototypes(
        good.class_ids, good.rpn_kernels[:, :-1], good.roi_prototypes, [], good.weights_fingerprint
    )
    narrow.save(str(tmp_path / "narrow.npz"))
    with pytest.raises(PrototypeFileError, match=r"narrow\.npz have kernels of shape \[63\]") as e:
        onnx.load_prototypes(str(tmp_path / "narrow.npz"))
    assert "\n" not in str(e.value)
    other = Prototypes(good.class_ids, good.rpn_kernels, good.roi_prototypes, [], "0" * 40)
    other.save(str(tmp_path / "other.npz"))
    with pytest.raises(PrototypeFileError, match=r"other\.npz were computed with other weights"):
        onnx.load_prototypes(str(tmp_path / "other.npz"))
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(PrototypeFileError, match=r"junk\.npz cannot be read"):
        onnx.load_prototypes(str(tmp_path / "junk.npz"))


def _copy(src, dst):
    os.makedirs(dst)
    for name in os.listdir(src):
        if os.path.isdir(os.path.join(src, name)):
            continue
        with open(os.path.join(src, name), "rb") as f, open(os.path.join(dst, name), "wb") as g:
            g.write(f.read())


def test_bad_model_folders_are_one_line(exported, tmp_path):
    missing = tmp_path / "missing"
    _copy(exported["dir"], missing)
    os.remove(missing / DETECTOR_FILE)
    corrupt = tmp_path / "corrupt"
    _copy(exported["dir"], corrupt)
    data = (corrupt / DETECTOR_FILE).read_bytes()
    (corrupt / DETECTOR_FILE).write_bytes(data[: len(data) // 2])
    no_manifest = tmp_path / "no_manifest"
    _copy(exported["dir"], no_manifest)
    os.remove(no_manifest / MANIFEST_FILE)
    bad_json = tmp_path / "bad_json"
    _copy(exported["dir"], bad_json)
    (bad_json / MANIFEST_FILE).write_text("{ not json")
    cases = {
        missing: rf"{DETECTOR_FILE}: no such file",
        corrupt: rf"{DETECTOR_FILE} is not the file that was exported",
        no_manifest: rf"{MANIFEST_FILE}: no such file",
        bad_json: rf"{MANIFEST_FILE} cannot be read",
        tmp_path / "nowhere": "no such folder",
    }
    for folder, message in cases.items():
        with pytest.raises(ModelFolderError, match=message) as e:
            OnnxDetector(str(folder))
        assert "\n" not in str(e.value) and "tools/export_model.py" in str(e.value)


def test_configs_that_cannot_be_exported_fail_before_any_work(exported, tmp_path):
    cfg = get_tiny_cfg("MODEL.FSOD.SHARED_PROPOSALS", "False")
    with pytest.raises(ExportError, match="MODEL.FSOD.SHARED_PROPOSALS"):
        check_exportable(cfg)
    with pytest.raises(ExportError, match="MODEL.FSOD.PER_CLASS_REFERENCE"):
        check_exportable(get_tiny_cfg("MODEL.FSOD.PER_CLASS_REFERENCE", "True"))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        load_tool("export_model").main(
            ["--config-file", str(TINY_CONFIG), "--weights", exported["weights"],
             "--output", str(out), "MODEL.FSOD.SHARED_PROPOSALS", "False"]
        )  # fmt: skip
    assert str(e.value).startswith("export_model.py: error: cannot export this config:")
    assert "MODEL.FSOD.SHARED_PROPOSALS" in str(e.value) and not out.exists()
