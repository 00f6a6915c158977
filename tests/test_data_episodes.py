"""EpisodicDatasetMapper and the episodic loader: contract, determinism, sampling, bad data."""

import logging
import os
from collections import Counter

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

import fsod_d2.data.build as data_build
from fsod_d2.data import (
    EpisodicDatasetMapper,
    SupportPool,
    build_episodic_train_loader,
    register_fewshot_coco,
)

from .common import TINY_CONFIG, get_tiny_cfg, load_tool, make_coco_dataset

OUT_KEYS = {
    "image",
    "height",
    "width",
    "image_id",
    "file_name",
    "instances",
    "support_images",
    "support_boxes",
    "support_classes",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("episodes")
    json_path, image_root, coco = make_coco_dataset(root, num_images=30)
    register_fewshot_coco("t_ep", json_path, image_root, ["class3", "class7", "class11", "class20"])
    yield root
    for v in ("t_ep", "t_ep_base", "t_ep_novel"):
        DatasetCatalog.remove(v)
        MetadataCatalog.remove(v)


def _cfg(root, *opts):
    return get_tiny_cfg(
        "DATASETS.TRAIN", "('t_ep_base',)", "FSOD.SUPPORT.CACHE_DIR", str(root / "cache"), *opts
    )


def _mapper(cfg, name="t_ep_base"):
    return EpisodicDatasetMapper(
        cfg, is_train=True, support_pool=SupportPool.from_config(cfg, name)
    )


def _episodes(mapper, name, n, seed0=0):
    dicts = DatasetCatalog.get(name)
    dicts = [d for d in dicts if d["annotations"]]
    out = []
    for i in range(n):
        d = dicts[i % len(dicts)]
        out.append((d, mapper(dict(d, episode_seed=seed0 + i))))
    return out


def test_mapper_output_contract(data):
    cfg = _cfg(data)
    mapper = _mapper(cfg)
    d, e = _episodes(mapper, "t_ep_base", 1)[0]
    assert set(e) == OUT_KEYS
    n, k, s = cfg.FSOD.N_WAY, cfg.FSOD.K_SHOT, cfg.FSOD.SUPPORT.SIZE
    assert e["image"].dtype == torch.uint8 and e["image"].shape[0] == 3
    assert min(e["image"].shape[1:]) == cfg.INPUT.MIN_SIZE_TRAIN[0]
    assert (e["height"], e["width"]) == (d["height"], d["width"])
    assert e["image_id"] == d["image_id"] and e["file_name"] == d["file_name"]
    assert e["support_images"].shape == (n * k, 3, s, s)
    assert e["support_images"].dtype == torch.uint8
    assert e["support_boxes"].shape == (n * k, 4) and e["support_boxes"].dtype == torch.float32
    assert e["support_classes"].dtype == torch.long and e["support_classes"].shape == (n,)
    assert len(set(e["support_classes"].tolist())) == n
    inst = e["instances"]
    assert inst.image_size == tuple(e["image"].shape[1:])
    assert inst.gt_classes.dtype == torch.long
    assert set(inst.gt_classes.tolist()) <= set(e["support_classes"].tolist())
    b = e["support_boxes"]
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all() and b.max() <= s


def test_mapper_deterministic_per_seed(data):
    mapper = _mapper(_cfg(data))
    d = next(d for d in DatasetCatalog.get("t_ep_base") if d["annotations"])
    a, b = (mapper(dict(d, episode_seed=7)) for _ in range(2))
    for key in ("image", "support_images", "support_boxes", "support_classes"):
        assert torch.equal(a[key], b[key])
    assert torch.equal(a["instances"].gt_boxes.tensor, b["instances"].gt_boxes.tensor)
    others = [mapper(dict(d, episode_seed=s)) for s in range(8, 12)]
    assert any(not torch.equal(a["support_images"], o["support_images"]) for o in others)
    assert d.get("episode_seed") is None  # the dataset's dict is not modified


def test_positives_present_negatives_absent_supports_elsewhere(data, monkeypatch):
    cfg = _cfg(data, "FSOD.MAX_POSITIVE_CLASSES", "1")
    mapper = _mapper(cfg)
    drawn = []
    orig = mapper.sampler.sample_k_shot

    def record(class_id, k, rng, exclude_image_id=None):
        idx = orig(class_id, k, rng, exclude_image_id)
        drawn.append((class_id, exclude_image_id, [mapper.pool.image_key(i) for i in idx]))
        return idx

    monkeypatch.setattr(mapper.sampler, "sample_k_shot", record)
    for d, e in _episodes(mapper, "t_ep_base", 60):
        present = {a["category_id"] for a in d["annotations"]}
        classes = e["support_classes"].tolist()
        positives = [c for c in classes if c in present]  # the rest is absent from the query
        absent = 4 - len(present)
        # MAX_POSITIVE_CLASSES = 1; more only when too few classes are absent to fill N = 3
        assert len(positives) == max(1, 3 - absent)
        assert set(e["instances"].gt_classes.tolist()) == set(positives)
        n_gt = sum(a["category_id"] in positives for a in d["annotations"])
        assert len(e["instances"]) == n_gt
    for class_id, query, sources in drawn:
        assert query is not None and str(query) not in sources, (class_id, query, sources)


@pytest.mark.parametrize("fallback", [False, True])
def test_query_fallback_gives_one_image_classes_their_positives(data, monkeypatch, fallback):
    """A class whose only crops are in the query (every class of a 1-shot set) is never a
    positive; with FSOD.SUPPORT.QUERY_FALLBACK it is, with supports from the query itself."""
    cfg = _cfg(data, "FSOD.SUPPORT.QUERY_FALLBACK", str(fallback), "FSOD.K_SHOT", "1")
    mapper = _mapper(cfg)
    d = next(d for d in DatasetCatalog.get("t_ep_base") if d["annotations"])
    lone = int(d["annotations"][0]["category_id"])  # its crops: only those of this image
    pool, all_crops = mapper.pool, mapper.pool.available

    def available(class_id, exclude_image_id=None):
        idx = all_crops(class_id)
        if int(class_id) == lone:
            idx = np.asarray([i for i in idx if pool.image_key(i) == str(d["image_id"])])
        if exclude_image_id is not None:
            idx = np.asarray([i for i in idx if pool.image_key(i) != str(exclude_image_id)])
        return idx.astype(np.int64)

    monkeypatch.setattr(pool, "available", available)
    episodes = [mapper(dict(d, episode_seed=s)) for s in range(20)]
    with_lone = [e for e in episodes if lone in e["support_classes"].tolist()]
    positive = [e for e in with_lone if lone in e["instances"].gt_classes.tolist()]
    assert bool(positive) == fallback
    assert mapper.bad_data_summary()["query_supports"] == (len(with_lone) if fallback else 0)


def test_class_balance(data):
    mapper = _mapper(_cfg(data))
    counts, positives = Counter(), Counter()
    for d, e in _episodes(mapper, "t_ep_base", 240):
        present = {a["category_id"] for a in d["annotations"]}
        for c in e["support_classes"].tolist():
            counts[c] += 1
            positives[c] += c in present
    assert set(counts) == {0, 1, 2, 3}
    freq = np.array([counts[c] for c in range(4)])
    assert freq.sum() == 240 * 3 and freq.min() / freq.max() > 0.75, freq
    assert min(positives.values()) > 0.1 * 240 / 4  # every class is often a positive


def test_any_n_and_k(data, caplog):
    # N = every class (negatives run out: more positives fill), K > instances of a class
    name = "t_ep"
    cfg = _cfg(data, "FSOD.N_WAY", "6", "FSOD.K_SHOT", "12", "FSOD.MAX_POSITIVE_CLASSES", "1")
    with caplog.at_level(logging.WARNING, logger="fsod_d2"):
        mapper = _mapper(cfg, name)
    assert "sampled with replacement" in caplog.text
    for _, e in _episodes(mapper, name, 10):
        assert sorted(e["support_classes"].tolist()) == list(range(6))
        assert e["support_images"].shape[0] == 72
    cfg = _cfg(data, "FSOD.N_WAY", "1", "FSOD.K_SHOT", "1")
    for _, e in _episodes(_mapper(cfg, name), name, 5):
        assert e["support_images"].shape[0] == 1


def test_bad_config_errors(data):
    with pytest.raises(ValueError, match="N_WAY=5 is larger than the 4 classes"):
        _mapper(_cfg(data, "FSOD.N_WAY", "5"))
    with pytest.raises(ValueError, match="K_SHOT >= 1"):
        _mapper(_cfg(data, "FSOD.K_SHOT", "0"))
    with pytest.raises(ValueError, match="FSOD.SEED"):
        build_episodic_train_loader(_cfg(data, "FSOD.SEED", "-1"))
    with pytest.raises(ValueError, match="'BGR' or 'RGB'"):
        _mapper(_cfg(data, "INPUT.FORMAT", "YUV-BT.601"))


def _take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def _sig(batch):
    return [(e["file_name"], e["support_classes"].tolist(), e["support_images"].sum().item(),
             e["image"].shape) for e in batch]  # fmt: skip


def test_loader_deterministic_and_resumable(data):
    cfg = _cfg(data, "SOLVER.IMS_PER_BATCH", "3")
    full = [_sig(b) for b in _take(build_episodic_train_loader(cfg), 6)]
    assert [_sig(b) for b in _take(build_episodic_train_loader(cfg), 6)] == full
    resumed = build_episodic_train_loader(cfg)
    resumed.start_iter = 4  # what the trainer does after resume_or_load
    assert [_sig(b) for b in _take(resumed, 2)] == full[4:6]
    other_seed = build_episodic_train_loader(
        _cfg(data, "SOLVER.IMS_PER_BATCH", "3", "FSOD.SEED", "1")
    )
    assert [_sig(b) for b in _take(other_seed, 6)] != full
    # one epoch of queries covers every usable image exactly once
    n = len([d for d in DatasetCatalog.get("t_ep_base") if d["annotations"]])
    loader = build_episodic_train_loader(_cfg(data, "SOLVER.IMS_PER_BATCH", str(n)))
    assert len({e["file_name"] for e in _take(loader, 1)[0]}) == n


def test_ranks_disjoint(data, monkeypatch):
    cfg = _cfg(data, "SOLVER.IMS_PER_BATCH", "4")
    n = len([d for d in DatasetCatalog.get("t_ep_base") if d["annotations"]])
    monkeypatch.setattr("detectron2.data.build.get_world_size", lambda: 2)
    monkeypatch.setattr(data_build.comm, "get_world_size", lambda: 2)
    queries = {}
    for rank in (0, 1):
        monkeypatch.setattr(data_build.comm, "get_rank", lambda rank=rank: rank)
        loader = build_episodic_train_loader(cfg)
        assert loader.batch_size == 2
        batches = _take(loader, n // 4)  # a bit less than one epoch over both ranks
        queries[rank] = [e["image_id"] for b in batches for e in b]
    assert len(set(queries[0])) == len(queries[0]) == len(queries[1])
    assert not set(queries[0]) & set(queries[1])


def test_workers_give_the_same_stream(data):
    cfg0 = _cfg(data, "SOLVER.IMS_PER_BATCH", "2")
    cfg2 = _cfg(data, "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "2")
    ref = [_sig(b) for b in _take(build_episodic_train_loader(cfg0), 5)]
    loader = build_episodic_train_loader(cfg2)
    loader.start_iter = 0
    assert [_sig(b) for b in _take(loader, 5)] == ref


def test_corrupt_and_missing_images_are_skipped(tmp_path, caplog):
    json_path, image_root, _ = make_coco_dataset(tmp_path, num_images=12)
    register_fewshot_coco("t_ep_bad", json_path, image_root, ["class3", "class7", "class11"])
    cfg = get_tiny_cfg("DATASETS.TRAIN", "('t_ep_bad',)", "OUTPUT_DIR", str(tmp_path / "out"),
                       "SOLVER.IMS_PER_BATCH", "4")  # fmt: skip
    SupportPool.from_config(cfg, "t_ep_bad")  # cache built while all images were fine
    os.remove(os.path.join(image_root, "0001.png"))
    with open(os.path.join(image_root, "0002.png"), "wb") as f:
        f.write(b"\x89PNG broken")
    with caplog.at_level(logging.WARNING, logger="fsod_d2"):
        loader = build_episodic_train_loader(cfg)
        batches = _take(loader, 6)
        assert all(len(b) == 4 for b in batches)
        files = {e["file_name"] for b in batches for e in b}
        assert not files & {os.path.join(image_root, f) for f in ("0001.png", "0002.png")}
        summary = loader.bad_data_summary()
        assert summary["unreadable_image_skips"] == 2 and summary["episodes"] == 24
        loader.log_bad_data_summary(final=True)
    assert "Skipping unreadable image" in caplog.text and "0001.png" in caplog.text
    assert "2 unreadable image skips" in caplog.text
    again = build_episodic_train_loader(cfg)  # the skips are deterministic too
    assert [_sig(b) for b in _take(again, 6)] == [_sig(b) for b in batches]
    DatasetCatalog.remove("t_ep_bad")
    MetadataCatalog.remove("t_ep_bad")


def test_visualize_episodes_tool(data, tmp_path):
    tool = load_tool("visualize_episodes")
    json_path = os.path.join(str(data), "instances.json")
    entry = f"name=t_ep_vis;json={json_path};images={data / 'images'};base=3,7,11,20"
    out = tool.main([
        "--config-file", str(TINY_CONFIG), "--num", "2",
        "--output", str(tmp_path), "--start-iter", "5",
        "FSOD.REGISTER", f"['{entry}']", "DATASETS.TRAIN", "('t_ep_vis_base',)",
        "OUTPUT_DIR", str(tmp_path / "out"),
    ])  # fmt: skip
    assert len(out) == 2 and all(os.path.getsize(p) > 1000 for p in out)
    assert os.path.basename(out[0]) == "episode_000005_0.png"
