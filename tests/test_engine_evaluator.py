"""FsodTrainer.build_evaluator: dispatch on the dataset's evaluator_type, class ids in the
constructor, DatasetEvaluators; the builtin VOC sets are evaluated COCO-style."""

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluators

from fsod_d2.data import register_fewshot_coco
from fsod_d2.engine import FsodTrainer
from fsod_d2.evaluation import EVALUATOR_TYPES, FsodCOCOEvaluator

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


def test_build_evaluator_dispatches_and_takes_the_class_ids(data):
    cfg = get_tiny_cfg("OUTPUT_DIR", str(data / "out"))
    evaluators = FsodTrainer.build_evaluator(cfg, "t_ev", class_ids=[0, 2])
    assert isinstance(evaluators, DatasetEvaluators)
    (evaluator,) = evaluators._evaluators
    assert type(evaluator) is FsodCOCOEvaluator and evaluator.class_ids == [0, 2]
    assert evaluator.category_groups() == {"": [0, 2], "b": [0], "n": [2]}
    (default,) = FsodTrainer.build_evaluator(cfg, "t_ev")._evaluators
    assert default.class_ids is None and default.category_groups()[""] == [0, 1, 2]
    with pytest.raises(ValueError, match="evaluator_type 'pascal_voc'"):
        FsodTrainer.build_evaluator(cfg, "t_ev_voc")


def test_builtin_voc_sets_are_evaluated_coco_style():
    for name in ("fsod_voc07_test_split1", "fsod_voc0712_trainval_split2_novel"):
        assert MetadataCatalog.get(name).evaluator_type == "coco"
        assert MetadataCatalog.get(name).evaluator_type in EVALUATOR_TYPES
