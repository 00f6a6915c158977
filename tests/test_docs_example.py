"""The worked example of datasets/README.md ("Your own dataset, few-shot") runs as written.

The blocks marked ``<!-- worked-example: KIND -->`` are taken from the Markdown and run in order
in an empty folder that has the checkout's ``configs/`` and ``tools/``, on a tiny generated
``parts`` dataset: ``python`` blocks and ``bash`` blocks as they are (each bash block in its own
shell), ``file PATH`` blocks written to PATH. Only ``tools/train_net.py`` gets extra options (tiny
images, 2 iterations, random backbone weights), appended to the command line as a user's
overrides would be. With ``DETECTRON2_DATASETS`` unset (root ``datasets/`` in that folder) and
set (a root elsewhere).
"""

import json
import os
import re
import shlex
import subprocess
import sys

import cv2
import numpy as np
import pytest

from .common import REPO_ROOT, draw_shape

README = REPO_ROOT / "datasets" / "README.md"
MARKED_BLOCK = re.compile(
    r"<!-- worked-example: (?P<kind>python|bash|file (?P<path>\S+)) -->\n"
    r"```(?P<lang>\w+)\n(?P<body>.*?)\n```",
    re.S,
)
# appended to every tools/train_net.py command: sizes and iterations a CPU runs in seconds
TINY_OPTS = [
    "MODEL.TORCHVISION.WEIGHTS", "",  # no weights file needed
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96",
    "FSOD.SUPPORT.SIZE", "32", "MODEL.RPN.POST_NMS_TOPK_TEST", "16",
    "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "0", "SOLVER.STEPS", "()",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "1000",
]  # fmt: skip
CATEGORIES = {"bolt": 4, "nut": 9, "washer": 17, "gear": 23, "spring": 31}


def example_blocks() -> list[tuple[str, str, str]]:
    """``(kind, path, body)`` of the marked blocks, in the order of the README."""
    text = README.read_text(encoding="utf-8")
    return [(m["kind"].split()[0], m["path"] or "", m["body"]) for m in MARKED_BLOCK.finditer(text)]


def write_parts(root) -> None:
    """``root/parts/{train,val}.json`` and ``images/``: 2 objects of 2 of the 5 classes per image
    (8 training instances of each class)."""
    image_dir = root / "parts" / "images"
    image_dir.mkdir(parents=True)
    cats = [{"id": i, "name": n} for n, i in CATEGORIES.items()]
    ann_id = 0
    for split, num in (("train", 20), ("val", 5)):
        images, anns = [], []
        for i in range(num):
            img = np.full((96, 128, 3), 120, dtype=np.uint8)
            name = f"{split}_{i:03d}.jpg"
            for j in range(2):
                c = (2 * i + j) % len(cats)
                x0, y0 = 8 + 60 * j, 12 + 10 * (i % 4)
                draw_shape(img, c, (x0, y0, x0 + 44, y0 + 40))
                ann_id += 1
                anns.append({"id": ann_id, "image_id": i + 1, "category_id": cats[c]["id"],
                             "bbox": [x0, y0, 44, 40], "area": 44 * 40, "iscrowd": 0})  # fmt: skip
            cv2.imwrite(str(image_dir / name), img)
            images.append({"id": i + 1, "file_name": name, "height": 96, "width": 128})
        data = {"images": images, "annotations": anns, "categories": cats}
        (root / "parts" / f"{split}.json").write_text(json.dumps(data))


def _run(cmd: list[str], cwd, env, what: str) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, f"{what} failed:\n{proc.stdout[-4000:]}"
    return proc.stdout


def test_the_worked_example_has_every_step():
    kinds = [(kind, path) for kind, path, _ in example_blocks()]
    assert kinds == [
        ("python", ""),
        ("file", "$DETECTRON2_DATASETS/parts/split.json"),
        ("bash", ""),
        ("file", "parts.yaml"),
        ("bash", ""),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("root_set", [False, True], ids=["root_unset", "root_set"])
def test_the_worked_example_runs_as_written(tmp_path, root_set):
    work = tmp_path / "work"
    work.mkdir()
    for folder in ("configs", "tools"):
        (work / folder).symlink_to(REPO_ROOT / folder)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DETECTRON2_DATASETS", "FSOD_SUPPORT_CACHE")
    }
    env["OMP_NUM_THREADS"] = "1"
    if root_set:
        root = tmp_path / "elsewhere" / "d2"
        env["DETECTRON2_DATASETS"] = str(root)
    else:
        root = work / "datasets"
    write_parts(root)
    # `python` in the bash blocks: this interpreter; tools/train_net.py gets the tiny options
    py = shlex.quote(sys.executable)
    preamble = (
        "set -eu\n"
        f"TINY=({' '.join(shlex.quote(o) for o in TINY_OPTS)})\n"
        "python() {\n"
        f'  if [ "$1" = tools/train_net.py ]; then {py} "$@" "${{TINY[@]}}"; else {py} "$@"; fi\n'
        "}\n"
    )
    outputs = []
    for i, (kind, path, body) in enumerate(example_blocks()):
        if kind == "python":
            outputs.append(_run([sys.executable, "-c", body], work, env, f"python block {i}"))
        elif kind == "bash":
            outputs.append(_run(["bash", "-c", preamble + body], work, env, f"bash block {i}"))
        else:
            target = work / path.replace("$DETECTRON2_DATASETS", str(root))
            assert target.parent.is_dir(), f"{path}: the example's data folder is missing"
            target.write_text(body + "\n")

    kshots = sorted(os.listdir(root / "parts" / "kshots"))
    assert kshots == [f"parts_5shot_seed{s}.json" for s in (0, 1, 2)]
    assert (work / "output" / "parts" / "model_final.pth").is_file()
    results = work / "output" / "parts" / "inference" / "parts_val"
    for s in (0, 1, 2):
        record = json.loads((results / f"fsod_metrics_5shot_seed{s}.json").read_text())
        assert record["support_dataset"] == f"parts_5shot_seed{s}"
        assert record["weights"] == "output/parts/model_final.pth"
        assert record["classes"] == list(CATEGORIES)
    assert "3 seeds [0, 1, 2]" in outputs[-1]  # aggregate_seeds' table over the three draws
    # everything under the one root, nothing at a literal "$DETECTRON2_DATASETS" path
    assert not any("$" in p.name for p in work.rglob("*"))
    assert (work / "datasets").exists() != root_set
