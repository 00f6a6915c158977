"""Image reading in the episodic mapper and the support pool: decode and I/O errors are counted
skips; any other exception (a bug) raises instead of passing for a bad image."""

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog, detection_utils

import fsod_d2.data.episodic_mapper as episodic_mapper
import fsod_d2.data.support_pool as support_pool
from fsod_d2.data import EpisodicDatasetMapper, SupportPool, register_fewshot_coco

from .common import get_tiny_cfg, make_coco_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_images")
    json_path, image_root, _ = make_coco_dataset(root, num_images=12, category_ids=(3, 7, 11, 20))
    register_fewshot_coco("t_badimg", json_path, image_root, ["class3", "class7", "class11"])
    yield root
    for v in ("t_badimg", "t_badimg_base", "t_badimg_novel"):
        DatasetCatalog.remove(v)
        MetadataCatalog.remove(v)


def _cfg(root, cache):
    return get_tiny_cfg("FSOD.SUPPORT.CACHE_DIR", str(root / cache))


def _raising(error):
    def read_image(*args, **kwargs):
        raise error

    return read_image


@pytest.mark.parametrize("error", [TypeError("a bug"), KeyError("file_name"), ZeroDivisionError()])
def test_support_pool_raises_errors_that_are_not_about_the_image(data, monkeypatch, error):
    monkeypatch.setattr(support_pool, "read_image", _raising(error))
    cache = data / f"cache_{type(error).__name__}"
    with pytest.raises(type(error)):
        SupportPool.from_config(_cfg(data, cache.name), "t_badimg_base")
    assert list(cache.iterdir()) == []  # no half-built cache left


def test_support_pool_counts_io_errors_as_skips(data, monkeypatch):
    real = support_pool.read_image
    first = DatasetCatalog.get("t_badimg_base")[0]["file_name"]

    def read_image(file_name, *args, **kwargs):
        if file_name == first:
            raise OSError("disk error")
        return real(file_name, *args, **kwargs)

    monkeypatch.setattr(support_pool, "read_image", read_image)
    pool = SupportPool.from_config(_cfg(data, "cache_io"), "t_badimg_base")
    assert pool.bad_images == [first] and len(pool) > 0


def test_mapper_skips_unreadable_images_and_raises_on_bugs(data, monkeypatch):
    cfg = _cfg(data, "cache_mapper")
    mapper = EpisodicDatasetMapper(
        cfg, is_train=True, support_pool=SupportPool.from_config(cfg, "t_badimg_base")
    )
    d = dict(DatasetCatalog.get("t_badimg_base")[0], episode_seed=1)
    assert mapper(dict(d)) is not None
    for error in (OSError("truncated"), SyntaxError("broken PNG file")):
        monkeypatch.setattr(detection_utils, "read_image", _raising(error))
        assert mapper(dict(d)) is None
    assert mapper.bad_data_summary()["unreadable_image_skips"] == 2
    wrong_size = dict(d, height=d["height"] + 1)
    monkeypatch.undo()
    assert mapper(wrong_size) is None  # SizeMismatchError: the annotation does not fit
    assert mapper.bad_data_summary()["unreadable_image_skips"] == 3
    monkeypatch.setattr(episodic_mapper.utils, "read_image", _raising(TypeError("a bug")))
    with pytest.raises(TypeError, match="a bug"):
        mapper(dict(d))
    assert mapper.bad_data_summary()["unreadable_image_skips"] == 3
