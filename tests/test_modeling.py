"""FsodRCNN behaviour on the tiny CPU config: shapes, gradients, learning, prototypes, modes."""

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage

from fsod_d2.modeling import PrototypeSet
from fsod_d2.modeling.support import StalePrototypeError

from .common import get_tiny_cfg, synthetic_episode, synthetic_query, synthetic_supports

MODES = {
    "shared-early": (),
    "per-class-rois": ("MODEL.FSOD.SHARED_PROPOSALS", False),
    "late-rpn": ("MODEL.FSOD.RPN_CONDITIONING", "late"),
    "per-class-loop": ("MODEL.FSOD.PER_CLASS_REFERENCE", True),
    "patch-only": ("MODEL.FSOD.RELATIONS", ["PatchRelation"]),
}


def _model(*opts, seed=0):
    torch.manual_seed(seed)
    model = build_model(get_tiny_cfg(*opts))
    return model


def _batch(cfg, seed=0):
    rng = np.random.default_rng(seed)
    return [
        synthetic_episode(cfg, rng, [0, 1], [1, 2, 0]),
        synthetic_episode(cfg, rng, [2], [2, 3, 1]),
    ]


def _set_prototypes(model, classes=(0, 1, 2, 3), seed=5):
    cfg_shots, size = 2, get_tiny_cfg().FSOD.SUPPORT.SIZE
    images, boxes = synthetic_supports(np.random.default_rng(seed), classes, cfg_shots, size)
    protos = model.compute_prototypes(
        images, boxes, [10 + c for c in classes], [f"shape{c}" for c in classes]
    )
    model.set_prototypes(protos)
    return protos, images, boxes


@pytest.mark.parametrize("mode", sorted(MODES))
def test_losses_finite_and_every_parameter_gets_gradient(mode):
    model = _model(*MODES[mode])
    model.train()
    with EventStorage(0):
        losses = model(_batch(get_tiny_cfg()))
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_match", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize("mode", sorted(MODES))
def test_inference_outputs(mode):
    # score threshold 0: the untrained model's detections are kept, so there are boxes to check
    model = _model(*MODES[mode], "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0).eval()
    protos, _, _ = _set_prototypes(model)
    image, _ = synthetic_query(np.random.default_rng(1), [0, 2])
    out = model([{"image": image, "height": 256, "width": 320}, {"image": image}])
    assert len(out) == 2
    inst = out[0]["instances"]
    assert isinstance(inst, Instances) and inst.image_size == (256, 320)
    assert 0 < len(inst) <= get_tiny_cfg().TEST.DETECTIONS_PER_IMAGE
    assert inst.pred_boxes.tensor.shape == (len(inst), 4)
    assert inst.scores.shape == (len(inst),) and inst.pred_classes.dtype == torch.long
    assert set(inst.pred_classes.tolist()) <= set(protos.class_ids.tolist())
    b = inst.pred_boxes.tensor  # rescaled to the requested output size, inside it
    assert b[:, 0].min() >= 0 and b[:, 1].min() >= 0
    assert b[:, 2].max() <= 320 and b[:, 3].max() <= 256
    assert out[1]["instances"].image_size == tuple(image.shape[1:])


def test_inference_without_prototypes_raises():
    model = _model().eval()
    image, _ = synthetic_query(np.random.default_rng(1), [0])
    with pytest.raises(RuntimeError, match="prototypes"):
        model([{"image": image}])


@pytest.mark.slow
def test_overfit_one_episode():
    model = _model()
    model.train()
    batch = _batch(get_tiny_cfg(), seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 200)
    history = []
    torch.manual_seed(0)
    with EventStorage(0):
        for _ in range(200):
            loss = sum(model(batch).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            history.append(loss.item())
    first, last = history[0], float(np.mean(history[-10:]))
    assert last * 5 <= first, f"total loss {first:.3f} -> {last:.3f}, less than 5x lower"


@pytest.mark.slow
def test_support_swap_scores_the_right_class():
    """The score of a query follows its support. Two fixed episodes (one query with a square,
    one with a disc, both paired with supports of both classes) are fitted until the match loss
    is near zero; then each query, given its own class's support, must score far above the same
    query given the other class's support (a clear margin, not a marginal trained outcome: the
    episodes are memorised, so the margin is ~0.9 on any CPU kernel and thread count)."""
    cfg = get_tiny_cfg("FSOD.K_SHOT", 1)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    rng = np.random.default_rng(0)
    batch = [synthetic_episode(cfg, rng, [c], [0, 1]) for c in (0, 1)]
    steps = 150
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    with EventStorage(0):
        for _ in range(steps):
            losses = model(batch)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
            sched.step()
    assert losses["loss_match"].item() < 0.1, f"episodes not fitted: {losses}"
    model.eval()
    for episode in batch:
        present = int(episode["instances"].gt_classes[0])
        top = {}
        for cls in (0, 1):  # support_images are class-major, K = 1: row cls is class cls
            sup = episode["support_images"][cls : cls + 1]
            boxes = episode["support_boxes"][cls : cls + 1]
            model.set_prototypes(model.compute_prototypes(sup, boxes, [cls]))
            scores = model([{"image": episode["image"]}])[0]["instances"].scores
            top[cls] = scores.max().item() if len(scores) else 0.0
        assert top[present] - top[1 - present] > 0.5, f"support swap: scores {top}"


def test_prototype_file_round_trip_and_stale_detection(tmp_path):
    model = _model().eval()
    protos, images, boxes = _set_prototypes(model)
    image, _ = synthetic_query(np.random.default_rng(2), [1, 3])
    before = model([{"image": image}])[0]["instances"]
    path = str(tmp_path / "protos.pth")
    protos.save(path)

    fresh = _model().eval()  # same seed -> same weights
    loaded = fresh.load_prototypes(path, support_fp=protos.support_fingerprint)
    assert loaded.class_names == protos.class_names
    assert torch.equal(loaded.class_ids, protos.class_ids)
    after = fresh([{"image": image}])[0]["instances"]
    assert torch.equal(before.pred_classes, after.pred_classes)
    assert torch.allclose(before.scores, after.scores)
    assert torch.allclose(before.pred_boxes.tensor, after.pred_boxes.tensor)

    other = _model(seed=1).eval()  # different weights
    with pytest.raises(StalePrototypeError, match="weights"):
        other.load_prototypes(path)
    with pytest.raises(StalePrototypeError, match="support set"):
        fresh.load_prototypes(path, support_fp="0" * 40)


def test_batch_of_two_equals_each_alone():
    model = _model().eval()
    _set_prototypes(model)
    rng = np.random.default_rng(4)
    images = [synthetic_query(rng, c)[0] for c in ([0, 1], [2])]
    together = model([{"image": im} for im in images])
    for im, joint in zip(images, together):
        alone = model([{"image": im}])[0]["instances"]
        joint = joint["instances"]
        assert len(alone) == len(joint)
        assert torch.equal(alone.pred_classes, joint.pred_classes)
        assert torch.allclose(alone.scores, joint.scores, atol=1e-5)
        assert torch.allclose(alone.pred_boxes.tensor, joint.pred_boxes.tensor, atol=1e-3)


def test_per_class_loop_matches_batched_per_class_rois():
    """The FewX-style loop is a reference formulation: same weights, same detections."""
    batched = _model("MODEL.FSOD.SHARED_PROPOSALS", False).eval()
    loop = _model(
        "MODEL.FSOD.PER_CLASS_REFERENCE", True, "MODEL.FSOD.SHARED_PROPOSALS", False
    ).eval()
    loop.load_state_dict(batched.state_dict())
    protos, _, _ = _set_prototypes(batched)
    loop.set_prototypes(protos)
    image, _ = synthetic_query(np.random.default_rng(6), [0, 3])
    a = batched([{"image": image}])[0]["instances"]
    b = loop([{"image": image}])[0]["instances"]
    assert len(a) == len(b) > 0
    assert torch.allclose(a.scores, b.scores, atol=1e-5)
    assert torch.equal(a.pred_classes, b.pred_classes)


def test_patch_topk_pruning():
    """k >= N is exactly the unpruned model. k < N: each ROI keeps its k best classes by the
    cheap (global + local) score, and a kept pair scores what it scores unpruned. Seen with
    sigmoid scores, no score threshold and no NMS, so every (ROI, class) pair is a detection:
    the cheap ranking comes from the same weights without the patch branch."""
    full = _model().eval()
    protos, _, _ = _set_prototypes(full)
    image, _ = synthetic_query(np.random.default_rng(7), [0, 2])
    ref = full([{"image": image}])[0]["instances"]
    assert len(ref) > 0
    for k in (len(protos), len(protos) + 2):
        pruned = _model("MODEL.FSOD.PATCH_TOPK", k).eval()
        pruned.load_state_dict(full.state_dict())
        pruned.set_prototypes(protos)
        out = pruned([{"image": image}])[0]["instances"]
        assert torch.equal(out.pred_classes, ref.pred_classes)
        torch.testing.assert_close(out.scores, ref.scores, rtol=0, atol=1e-6)
        torch.testing.assert_close(out.pred_boxes.tensor, ref.pred_boxes.tensor, rtol=0, atol=1e-4)

    every_pair = ("MODEL.FSOD.TEST_SCORE", "sigmoid", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0)
    every_pair += ("MODEL.ROI_HEADS.NMS_THRESH_TEST", 1.0, "TEST.DETECTIONS_PER_IMAGE", 10000)

    def pairs(*opts):
        """{box: {class: score}} of every detection."""
        model = _model(*every_pair, *opts).eval()
        missing = model.load_state_dict(full.state_dict(), strict=False).missing_keys
        assert not missing  # (without the patch branch, the full model has extra keys)
        model.set_prototypes(protos)
        inst = model([{"image": image}])[0]["instances"]
        out = {}
        for box, cls, score in zip(
            inst.pred_boxes.tensor.tolist(), inst.pred_classes.tolist(), inst.scores.tolist()
        ):
            out.setdefault(tuple(round(v, 3) for v in box), {})[cls] = score
        return out

    unpruned = pairs()
    cheap = pairs("MODEL.FSOD.RELATIONS", "['GlobalRelation', 'LocalRelation']")
    num_classes = len(protos)
    assert unpruned.keys() == cheap.keys() and len(unpruned) > 5
    assert all(len(v) == num_classes for v in unpruned.values())
    for k in (1, 2):
        kept = pairs("MODEL.FSOD.PATCH_TOPK", k)
        assert kept.keys() == unpruned.keys()
        for box, scores in kept.items():
            by_cheap = sorted(cheap[box], key=cheap[box].get, reverse=True)
            assert sorted(scores) == sorted(by_cheap[:k])
            for cls, score in scores.items():
                assert score == pytest.approx(unpruned[box][cls], abs=1e-6)


def test_softmax_test_score_makes_classes_compete():
    """TEST_SCORE softmax: (N+1)-way softmax with a zero background logit. One class: the
    sigmoid exactly (same detections); several: every score at most its sigmoid, per ROI the
    class scores sum below 1 and keep the sigmoid's order."""
    softmax = _model().eval()  # the default
    sigmoid = _model("MODEL.FSOD.TEST_SCORE", "sigmoid").eval()
    sigmoid.load_state_dict(softmax.state_dict())
    image, _ = synthetic_query(np.random.default_rng(3), [0])
    for model in (sigmoid, softmax):
        _set_prototypes(model, classes=(0,))
    ref, out = (m([{"image": image}])[0]["instances"] for m in (sigmoid, softmax))
    assert len(out) == len(ref) and torch.allclose(out.scores, ref.scores, atol=1e-6)

    logits = torch.randn(50, 4) * 3
    logits[0, 1:] = float("-inf")  # pruned pairs (PATCH_TOPK) score 0
    competing = softmax.roi_heads._match_scores(logits)
    independent = sigmoid.roi_heads._match_scores(logits)
    assert torch.all(competing <= independent + 1e-7) and torch.all(competing.sum(1) < 1)
    assert torch.equal(competing[1:].argsort(1), logits[1:].argsort(1))
    assert torch.allclose(competing[0, 0], independent[0, 0]) and competing[0, 1:].eq(0).all()
    with pytest.raises(ValueError, match="MODEL.FSOD.TEST_SCORE"):
        _model("MODEL.FSOD.TEST_SCORE", "max")


def test_checkpoint_round_trip_has_no_missing_or_unexpected_keys(tmp_path):
    model = _model()
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_final")
    path = str(tmp_path / "model_final.pth")
    saved = torch.load(path, map_location="cpu", weights_only=False)["model"]
    fresh = _model(seed=1)
    incompatible = fresh.load_state_dict(saved, strict=False)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    fresh = _model(seed=1)
    DetectionCheckpointer(fresh).load(path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k


def test_prototype_file_of_another_format_version_is_refused(tmp_path):
    """A prototype file carries its format version; another version (or a file that is not a
    prototype file, e.g. a checkpoint) is refused with the fix, never half-loaded."""
    model = _model().eval()
    protos, _, _ = _set_prototypes(model)
    path = tmp_path / "protos.pth"
    protos.save(str(path))
    state = torch.load(path, weights_only=True)
    assert isinstance(state["format_version"], int)
    for version in (state["format_version"] + 1, None):
        old = dict(state, format_version=version)
        if version is None:
            old.pop("format_version")
        torch.save(old, path)
        with pytest.raises(StalePrototypeError, match="format version.*recompute the prototypes"):
            model.load_prototypes(str(path))
    torch.save({"model": model.state_dict()}, path)  # a checkpoint given as prototypes
    with pytest.raises(StalePrototypeError, match="format version"):
        PrototypeSet.load(str(path))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        PrototypeSet.load(str(tmp_path / "missing.pth"))


def test_prototype_set_validates_shapes():
    with pytest.raises(ValueError, match="class ids"):
        PrototypeSet(torch.arange(3), torch.zeros(2, 8), torch.zeros(3, 8, 2, 2))


def test_mixed_n_way_batch_is_rejected():
    model = _model()
    model.train()
    cfg = get_tiny_cfg()
    rng = np.random.default_rng(0)
    batch = [synthetic_episode(cfg, rng, [0], [0, 1, 2]), synthetic_episode(cfg, rng, [0], [0, 1])]
    with EventStorage(0), pytest.raises(ValueError, match="N-way"):
        model(batch)


def test_folded_frozen_bn_computes_what_the_unfolded_model_does():
    """MODEL.FSOD.FOLD_FROZEN_BN changes how conv + FrozenBN run, not the weights or the
    result: same state_dict keys, same features and gradients (backbone and res5 head)."""
    from detectron2.layers import FrozenBatchNorm2d

    from fsod_d2.modeling.fold_bn import FrozenBNConv2d

    opts = ("MODEL.RESNETS.NORM", "FrozenBN")
    folded = _model(*opts)
    plain = _model(*opts, "MODEL.FSOD.FOLD_FROZEN_BN", False)
    num_norms = sum(isinstance(m, FrozenBatchNorm2d) for m in folded.modules())
    assert sum(type(m) is FrozenBNConv2d for m in folded.modules()) == num_norms > 10
    assert not any(type(m) is FrozenBNConv2d for m in plain.modules())
    gen = torch.Generator().manual_seed(0)
    for m in folded.modules():  # statistics far from the identity
        if isinstance(m, FrozenBatchNorm2d):
            for buf, (lo, hi) in zip(
                (m.weight, m.bias, m.running_mean, m.running_var),
                ((0.5, 2.0), (-0.5, 0.5), (-0.5, 0.5), (0.3, 3.0)),
            ):
                buf.copy_(torch.rand(buf.shape, generator=gen) * (hi - lo) + lo)
    assert folded.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(folded.state_dict())

    image = torch.randn(2, 3, 64, 96, generator=gen)
    outputs = []
    for model in (folded, plain):
        model.train()
        model.zero_grad()
        feat = model.backbone(image)[model.feature_name]
        head = model.roi_heads.res5(feat[:, :, :4, :4])
        (feat.square().mean() + head.square().mean()).backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        outputs.append((feat.detach(), head.detach(), grads))
    (f1, h1, g1), (f2, h2, g2) = outputs
    assert torch.allclose(f1, f2, rtol=1e-4, atol=1e-5)
    assert torch.allclose(h1, h2, rtol=1e-4, atol=1e-5)
    assert g1.keys() == g2.keys() and len(g1) > 10
    # float32 rounding differs between the two orders of operations (and between CPU
    # kernels): compare each gradient to its own scale, not element by element, where a
    # near-zero entry is a difference of large terms. Unfolding wrongly gives errors of ~1.
    for name in g1:
        err = (g1[name] - g2[name]).abs().max() / g2[name].abs().max()
        assert err < 1e-4, (name, float(err))


def test_torch_fuse_conv_bn_weights_cuts_the_gradient():
    """Why fold_bn computes the fold itself: torch's fuse_conv_bn_weights gives the same
    numbers but as new leaf parameters, so no gradient would reach the conv weight."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 3, 3, 3, generator=gen, requires_grad=True)
    mean, var = torch.randn(4, generator=gen), torch.rand(4, generator=gen) + 0.5
    gamma, beta = torch.randn(4, generator=gen), torch.randn(4, generator=gen)
    fused_w, fused_b = fuse_conv_bn_weights(weight, None, mean, var, 1e-5, gamma, beta)
    scale = gamma * (var + 1e-5).rsqrt()
    assert torch.allclose(fused_w, weight * scale.view(-1, 1, 1, 1))
    assert torch.allclose(fused_b, beta - mean * scale, atol=1e-6)
    assert fused_w.is_leaf and fused_w.grad_fn is None
    fused_w.sum().backward()
    assert weight.grad is None


def _train_on_one_batch(model, steps: int, loss_key: str, check_first_step) -> None:
    """Adam steps on one fixed batch; ``check_first_step(model, losses)`` after the first
    backward; ``losses[loss_key]`` must fall at least 3x."""
    model.train()
    batch = _batch(get_tiny_cfg(), seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    history = []
    torch.manual_seed(0)
    with EventStorage(0):
        for step in range(steps):
            losses = model(batch)
            opt.zero_grad()
            sum(losses.values()).backward()
            if step == 0:
                check_first_step(model, losses)
            opt.step()
            history.append(losses[loss_key].item())
    first, last = float(np.mean(history[:5])), float(np.mean(history[-5:]))
    assert last * 3 <= first, f"{loss_key} {first:.3f} -> {last:.3f}"


@pytest.mark.slow
def test_class_contrast_loss_trains_the_relation_to_pick_the_episode_class():
    """MODEL.FSOD.CLASS_CONTRAST_WEIGHT adds a cross-entropy of each foreground ROI over its
    episode's N classes; off by default (see the loss-set assertion above)."""

    def check(model, losses):
        assert torch.isfinite(losses["loss_class_contrast"])
        rel = [p.grad for n, p in model.named_parameters() if "relation" in n]
        assert rel and all(g is not None for g in rel)

    model = _model("MODEL.FSOD.CLASS_CONTRAST_WEIGHT", 1.0)
    _train_on_one_batch(model, 60, "loss_class_contrast", check)


@pytest.mark.slow
def test_base_classifier_loss_trains():
    """MODEL.FSOD.BASE_CLASSIFIER: supports and query gt boxes classified over the dataset's
    classes (loss_base_cls); the backbone gets its gradient."""

    def check(model, losses):
        assert set(losses) >= {"loss_match", "loss_base_cls"}
        assert model.roi_heads.base_classifier.weight.grad.abs().sum() > 0
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, f"parameters without gradient: {missing}"

    model = _model(
        "MODEL.FSOD.BASE_CLASSIFIER.WEIGHT", 1.0, "MODEL.FSOD.BASE_CLASSIFIER.NUM_CLASSES", 4
    )
    assert model.roi_heads.base_classifier.out_features == 4
    _train_on_one_batch(model, 40, "loss_base_cls", check)


def test_base_classifier_is_training_only():
    """Inference ignores the base classifier: the same other weights without it detect exactly
    the same (after a training step, so that every weight the head touches has moved)."""
    model = _model(
        "MODEL.FSOD.BASE_CLASSIFIER.WEIGHT", 1.0, "MODEL.FSOD.BASE_CLASSIFIER.NUM_CLASSES", 4
    ).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with EventStorage(0):
        losses = model(_batch(get_tiny_cfg(), seed=3))
    sum(losses.values()).backward()
    opt.step()
    plain = _model()
    weights = {k: v for k, v in model.state_dict().items() if "base_classifier" not in k}
    assert len(weights) < len(model.state_dict())
    plain.load_state_dict(weights)  # strict: every other weight is shared
    image, _ = synthetic_query(np.random.default_rng(1), [0, 2])
    outputs = []
    for m in (model, plain):
        m.eval()
        _set_prototypes(m)
        with torch.no_grad():
            outputs.append(m([{"image": image}])[0]["instances"])
    with_head, without = outputs
    assert len(with_head) > 0
    assert torch.equal(with_head.pred_classes, without.pred_classes)
    assert torch.equal(with_head.scores, without.scores)
    assert torch.equal(with_head.pred_boxes.tensor, without.pred_boxes.tensor)


def test_base_classifier_without_class_count_names_the_keys():
    """Unknown class count: the model builds without the training-only head (inference works),
    and training stops at its first step with the keys to set."""
    unknown = _model(
        "MODEL.FSOD.BASE_CLASSIFIER.WEIGHT", 1.0, "DATASETS.TRAIN", ("not_registered",)
    )
    assert unknown.roi_heads.base_classifier is None
    with EventStorage(0), pytest.raises(ValueError, match="BASE_CLASSIFIER.NUM_CLASSES"):
        unknown.train()(_batch(get_tiny_cfg()))
    model = _model(
        "MODEL.FSOD.BASE_CLASSIFIER.WEIGHT", 1.0, "MODEL.FSOD.BASE_CLASSIFIER.NUM_CLASSES", 2
    ).train()
    with EventStorage(0), pytest.raises(ValueError, match="class id 3 .* 2 classes"):
        model(_batch(get_tiny_cfg()))  # the batch has classes 0-3


@pytest.mark.parametrize(
    "key, value",
    [
        ("MODEL.PROPOSAL_GENERATOR.NAME", "RPN"),
        ("MODEL.RPN.HEAD_NAME", "StandardRPNHead"),
        ("MODEL.ROI_HEADS.NAME", "Res5ROIHeads"),
    ],
)
def test_wrong_component_names_the_config_key(key, value):
    with pytest.raises(TypeError, match=f"{key} builds a .*: set {key}"):
        _model(key, value)


def test_public_support_pieces_make_encode_supports():
    """encode_supports = ROI head's pooling -> RPN's kernels and ROI head's prototypes."""
    model = _model().eval()
    images, boxes = synthetic_supports(np.random.default_rng(0), (0, 1), 2, 64)
    with torch.no_grad():
        kernels, rois = model.encode_supports(images, boxes)
        features = model.backbone(model._normalize(images))[model.feature_name]
        pooled = model.roi_heads.pool_supports(features, boxes)
        assert torch.equal(kernels, model.proposal_generator.support_kernels(pooled))
        assert torch.equal(rois, model.roi_heads.support_prototypes(pooled))
    assert kernels.shape == (4, features.shape[1])
    assert rois.shape[:2] == (4, model.roi_heads.res5[-1].out_channels)
