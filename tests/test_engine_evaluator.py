"""FsodTrainer.build_evaluator: dispatch on the dataset's evaluator_type through
FSOD_EVALUATOR_REGISTRY, class ids in the constructor, DatasetEvaluators; the builtin VOC sets
are evaluated COCO-style."""

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluators

from fsod_d2.data import register_fewshot_coco
from fsod_d2.engine import FsodTrainer, check_config
from fsod_d2.evaluation import (
    FSOD_EVALUATOR_REGISTRY,
    FsodCOCOEvaluator,
    evaluator_class,
    evaluator_types,
)

from .common import get_tiny_cfg, make_coco_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluator")
    json_path, image_root, _ = make_coco_dataset(root, num_images=4, category_ids=(3, 7, 11))
    register_fewshot_coco("t_ev", json_path, image_root, ["class3", "class7"])
    register_fewshot_coco(
        "t_ev_voc", json_path, image_root, ["class3"], evaluator_type="pascal_voc"
    )
    yield root
    for name in ("t_ev", "t_ev_voc"):
        for v in (name, name + "_base", name + "_novel"):
            DatasetCatalog.remove(v)
            MetadataCatalog.remove(v)


@FSOD_EVALUATOR_REGISTRY.register()
class RecordingEvaluator(FsodCOCOEvaluator):
    """An evaluator added from outside the package for another evaluator_type."""

    evaluator_types = ("t_recording",)


def test_build_evaluator_dispatches_and_takes_the_class_ids(data):
    cfg = get_tiny_cfg("OUTPUT_DIR", str(data / "out"))
    evaluators = FsodTrainer.build_evaluator(cfg, "t_ev", class_ids=[0, 2])
    assert isinstance(evaluators, DatasetEvaluators)
    (evaluator,) = evaluators._evaluators
    assert type(evaluator) is FsodCOCOEvaluator and evaluator.class_ids == [0, 2]
    assert evaluator.category_groups() == {"": [0, 2], "b": [0], "n": [2]}
    (default,) = FsodTrainer.build_evaluator(cfg, "t_ev")._evaluators
    assert default.class_ids is None and default.category_groups()[""] == [0, 1, 2]
    # a variant evaluates the classes it annotates by default
    (novel,) = FsodTrainer.build_evaluator(cfg, "t_ev_novel")._evaluators
    assert novel.category_groups() == {"": [2], "b": [], "n": [2]}
    with pytest.raises(ValueError, match="evaluator_type 'pascal_voc'"):
        FsodTrainer.build_evaluator(cfg, "t_ev_voc")


def test_builtin_voc_sets_are_evaluated_coco_style():
    for name in ("fsod_voc07_test_split1", "fsod_voc0712_trainval_split2_novel"):
        assert MetadataCatalog.get(name).evaluator_type == "coco"
        assert evaluator_class(MetadataCatalog.get(name).evaluator_type) is FsodCOCOEvaluator


def test_an_evaluator_registered_for_another_type_is_used(data):
    """Registering a class for an evaluator_type is all it takes: the config check accepts
    test sets of that type and build_evaluator builds it."""
    register_fewshot_coco(
        "t_ev_rec", data / "instances.json", data / "images", ["class3", "class7"],
        evaluator_type="t_recording",
    )  # fmt: skip
    try:
        assert "t_recording" in evaluator_types() and "coco" in evaluator_types()
        cfg = get_tiny_cfg(
            "OUTPUT_DIR", str(data / "out"), "DATASETS.TRAIN", "('t_ev_base',)",
            "DATASETS.TEST", "('t_ev_rec',)", "FSOD.TEST.SUPPORT_DATASET", "t_ev",
        )  # fmt: skip
        check_config(cfg)
        (evaluator,) = FsodTrainer.build_evaluator(cfg, "t_ev_rec")._evaluators
        assert type(evaluator) is RecordingEvaluator
        assert evaluator_class("pascal_voc") is None
    finally:
        for v in ("t_ev_rec", "t_ev_rec_base", "t_ev_rec_novel"):
            DatasetCatalog.remove(v)
            MetadataCatalog.remove(v)
