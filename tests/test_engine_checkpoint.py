"""A weights file that is missing, truncated or not a checkpoint stops the training and
evaluation paths with one line naming the file (FsodCheckpointer, tools/train_net.py), not a
traceback from torch.load; a good file still loads."""

import os
import subprocess
import sys

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from fsod_d2.data import register_fewshot_coco
from fsod_d2.engine import FsodTrainer
from fsod_d2.modeling.checkpoint import (
    FsodCheckpointer,
    WeightsFileError,
    check_weights_readable,
    weights_to_load,
)

from .common import REPO_ROOT, TINY_CONFIG, get_tiny_cfg, make_coco_dataset


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A good checkpoint of the tiny model, its first half, a file of text and an empty file."""
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    FsodCheckpointer(build_model(get_tiny_cfg()), save_dir=str(root)).save("good")
    good = root / "good.pth"
    data = good.read_bytes()
    (root / "truncated.pth").write_bytes(data[: len(data) // 2])
    (root / "text.pth").write_bytes(b"this is not a checkpoint\n" * 40)
    (root / "empty.pkl").write_bytes(b"")
    return root


@pytest.mark.parametrize("name", ["truncated.pth", "text.pth", "empty.pkl", "missing.pth"])
def test_bad_weights_file_is_one_line_naming_it(files, name):
    path = str(files / name)
    model = build_model(get_tiny_cfg())
    with pytest.raises(WeightsFileError) as e:
        FsodCheckpointer(model).resume_or_load(path, resume=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"weights file {path} ")
    assert ("does not exist" if name == "missing.pth" else "cannot be read") in msg
    with pytest.raises(WeightsFileError):
        check_weights_readable(path)


def test_good_weights_file_loads(files):
    check_weights_readable(str(files / "good.pth"))
    check_weights_readable("")  # nothing to load
    torch.manual_seed(1)
    model = build_model(get_tiny_cfg())
    saved = torch.load(files / "good.pth", weights_only=False)["model"]
    assert not all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    FsodCheckpointer(model).load(str(files / "good.pth"))
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt_data")
    json_path, image_root, _ = make_coco_dataset(root, num_images=8, category_ids=(3, 7, 11))
    register_fewshot_coco("t_ckpt", json_path, image_root, ["class3", "class7", "class11"])
    yield json_path, image_root
    for v in ("t_ckpt", "t_ckpt_base", "t_ckpt_novel"):
        DatasetCatalog.remove(v)
        MetadataCatalog.remove(v)


def test_trainer_refuses_a_truncated_file_in_one_line(files, dataset, tmp_path):
    cfg = get_tiny_cfg(
        "DATASETS.TRAIN", "('t_ckpt_base',)", "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path),
        "MODEL.WEIGHTS", str(files / "truncated.pth"),
    )  # fmt: skip
    trainer = FsodTrainer(cfg)
    assert isinstance(trainer.checkpointer, FsodCheckpointer)
    with pytest.raises(WeightsFileError, match="truncated.pth cannot be read"):
        trainer.resume_or_load(resume=False)
    # --resume reads the last checkpoint of OUTPUT_DIR instead of MODEL.WEIGHTS
    (tmp_path / "last_checkpoint").write_text("text.pth")
    (tmp_path / "text.pth").write_bytes((files / "text.pth").read_bytes())
    assert weights_to_load(cfg, resume=True) == str(tmp_path / "text.pth")
    assert weights_to_load(cfg, resume=False) == str(files / "truncated.pth")


@pytest.mark.parametrize("resume", [False, True], ids=["eval_only", "resume"])
def test_train_net_stops_in_one_line(files, dataset, tmp_path, resume):
    """Before any process starts: exit status 1, one error line, no traceback."""
    json_path, image_root = dataset
    entry = f"name=t_ckpt_cli;json={json_path};images={image_root};base=class3,class7"
    args = ["--resume"] if resume else ["--eval-only"]
    if resume:  # the last checkpoint of OUTPUT_DIR is the bad file
        (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
        (tmp_path / "model_0000009.pth").write_bytes((files / "truncated.pth").read_bytes())
        bad = tmp_path / "model_0000009.pth"
    else:
        bad = files / "text.pth"
    proc = subprocess.run(
        [
            sys.executable, str(REPO_ROOT / "tools" / "train_net.py"),
            "--config-file", str(TINY_CONFIG), *args,
            "FSOD.REGISTER", f"['{entry}']", "DATASETS.TRAIN", "('t_ckpt_cli_base',)",
            "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path), "MODEL.WEIGHTS", str(bad),
        ],
        env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if f"weights file {bad} cannot be read" in line]
    assert len(errors) == 1, out
