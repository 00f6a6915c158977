"""The episodic loader under real DDP: 2 CPU processes (gloo) via detectron2's launch()."""

import json
import os

import pytest
from detectron2.engine import launch
from detectron2.utils import comm

from .common import get_tiny_cfg, make_coco_dataset

pytestmark = pytest.mark.slow  # spawns 2 processes


def _worker(json_path, image_root, out_dir):
    from fsod_d2.data import build_episodic_train_loader, register_fewshot_coco

    register_fewshot_coco(
        "t_ddp", json_path, image_root, ["class3", "class7", "class11", "class20"]
    )
    cfg = get_tiny_cfg("DATASETS.TRAIN", "('t_ddp_base',)", "OUTPUT_DIR", out_dir,
                       "FSOD.SUPPORT.CACHE_DIR", os.path.join(out_dir, "support_cache"),
                       "SOLVER.IMS_PER_BATCH", "4")  # fmt: skip
    loader = build_episodic_train_loader(cfg)  # every rank; the local rank 0 builds the cache
    it = iter(loader)
    ids = [e["image_id"] for _ in range(3) for e in next(it)]
    with open(os.path.join(out_dir, f"rank{comm.get_rank()}.json"), "w") as f:
        json.dump({"ids": ids, "cache": loader.mapper.pool.cache_dir, "bs": loader.batch_size}, f)


def test_two_processes_share_one_cache_and_get_disjoint_queries(tmp_path):
    json_path, image_root, _ = make_coco_dataset(tmp_path / "data", num_images=30)
    out = tmp_path / "out"
    out.mkdir()
    launch(_worker, 2, dist_url="auto", args=(json_path, image_root, str(out)))
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["bs"] == r1["bs"] == 2 and len(r0["ids"]) == len(r1["ids"]) == 6
    assert not set(r0["ids"]) & set(r1["ids"])  # 12 queries, within one epoch
    assert r0["cache"] == r1["cache"]
    assert os.listdir(out / "support_cache") == [os.path.basename(r0["cache"])]  # no temp dirs
