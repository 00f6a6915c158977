"""Versioned state dicts: a checkpoint written before the relation registry and the base
classifier's move into the ROI heads (unversioned key layout) loads and gives the same outputs.

The fixture (tests/fixtures/fsod_tiny_unversioned*.pt*) was written by fsod-d2 0.1.0 before
these changes: the tiny config below with its weights perturbed and stored as float16 (exact in
float32), plus that code's outputs on the synthetic inputs below.
"""

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from .common import get_tiny_cfg, synthetic_query, synthetic_supports

FIXTURES = Path(__file__).resolve().parent / "fixtures"
OLD_CHECKPOINT = FIXTURES / "fsod_tiny_unversioned.pth"
OLD_OUTPUTS = FIXTURES / "fsod_tiny_unversioned_outputs.pt"
OPTS = (
    "MODEL.RESNETS.NORM", "", "MODEL.RESNETS.RES2_OUT_CHANNELS", 8,
    "MODEL.RESNETS.WIDTH_PER_GROUP", 2, "MODEL.FSOD.TINY_BACKBONE.STEM_CHANNELS", 8,
    "MODEL.FSOD.RELATION_DIM", 8, "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", 4,
    "MODEL.FSOD.BASE_CLASSIFIER.WEIGHT", 1.0, "MODEL.FSOD.BASE_CLASSIFIER.NUM_CLASSES", 4,
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
)  # fmt: skip


def _model():
    torch.manual_seed(123)  # other weights than the fixture's, so loading must change them
    return build_model(get_tiny_cfg(*OPTS)).eval()


def _outputs(model):
    cfg = get_tiny_cfg(*OPTS)
    images, boxes = synthetic_supports(
        np.random.default_rng(5), (0, 1, 2, 3), 2, cfg.FSOD.SUPPORT.SIZE
    )
    protos = model.compute_prototypes(images, boxes, [10, 11, 12, 13])
    model.set_prototypes(protos)
    image, _ = synthetic_query(np.random.default_rng(1), [0, 2])
    with torch.no_grad():
        inst = model([{"image": image}])[0]["instances"]
    return protos, inst


def _check_same_outputs(model):
    expected = torch.load(OLD_OUTPUTS, weights_only=True)
    protos, inst = _outputs(model)
    torch.testing.assert_close(protos.rpn_kernels, expected["rpn_kernels"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(
        protos.roi_prototypes, expected["roi_prototypes"], rtol=1e-4, atol=1e-4
    )
    top = 20  # the best detections; far below, near-equal scores may swap places
    assert torch.equal(inst.pred_classes[:top], expected["classes"][:top])
    torch.testing.assert_close(inst.scores[:top], expected["scores"][:top], rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(
        inst.pred_boxes.tensor[:top], expected["boxes"][:top], rtol=1e-3, atol=1e-2
    )


def test_fixture_has_the_old_key_layout():
    old = torch.load(OLD_CHECKPOINT, weights_only=True)["model"]
    assert "base_classifier.weight" in old and "roi_heads.relation.global_q.weight" in old
    assert not any(".branches." in k or "roi_heads.base_classifier" in k for k in old)
    assert OLD_CHECKPOINT.stat().st_size < 200_000


def test_unversioned_checkpoint_loads_with_detection_checkpointer_and_gives_the_same_outputs():
    model = _model()
    old = torch.load(OLD_CHECKPOINT, weights_only=True)["model"]
    DetectionCheckpointer(model).load(str(OLD_CHECKPOINT))
    state = model.state_dict()
    torch.testing.assert_close(
        state["roi_heads.base_classifier.weight"], old["base_classifier.weight"].float()
    )
    torch.testing.assert_close(
        state["roi_heads.relation.branches.PatchRelation.fc.weight"],
        old["roi_heads.relation.patch_fc.weight"].float(),
    )
    _check_same_outputs(model)


def test_version_1_metadata_loads_strictly():
    """Old checkpoints carry torch's default module version 1 in their metadata."""
    old = torch.load(OLD_CHECKPOINT, weights_only=True)["model"]
    state = OrderedDict((k, v.float()) for k, v in old.items())
    state._metadata = OrderedDict(
        (m, {"version": 1}) for m in ("", "roi_heads", "roi_heads.relation")
    )
    model = _model()
    model.load_state_dict(state, strict=True)  # no missing, no unexpected key
    _check_same_outputs(model)


def test_current_checkpoints_record_their_version_and_round_trip(tmp_path):
    model = _model()
    state = model.state_dict()
    assert state._metadata[""]["version"] == 2
    assert state._metadata["roi_heads"]["version"] == 2
    assert state._metadata["roi_heads.relation"]["version"] == 2
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    other = build_model(get_tiny_cfg(*OPTS)).eval()
    DetectionCheckpointer(other).load(str(tmp_path / "model.pth"))
    for k, v in other.state_dict().items():
        assert torch.equal(v, state[k]), k
