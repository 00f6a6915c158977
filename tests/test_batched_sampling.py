"""Vectorized RPN / ROI-pair labelling and sampling: agreement with detectron2's per-image
definitions (types, ratio, caps, matching, proposal selection) and host syncs constant in the
batch."""

import pytest
import torch
from detectron2.layers import batched_nms
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.proposal_generator.proposal_utils import find_top_rpn_proposals
from detectron2.modeling.sampling import subsample_labels as d2_subsample_labels
from detectron2.structures import Boxes, Instances, pairwise_iou

from fsod_d2.modeling import batched_rpn, pair_sampling
from tests.common import get_tiny_cfg


def _random_boxes(gen, n, size=100.0, min_side=2.0):
    xy = torch.rand(n, 2, generator=gen) * size
    wh = torch.rand(n, 2, generator=gen) * size / 2 + min_side
    return torch.cat([xy, xy + wh], dim=1)


# ------------------------------------------------------------------ RPN: matching and sampling
def test_match_anchors_equals_detectron2_matcher_per_pair():
    gen = torch.Generator().manual_seed(0)
    anchors = _random_boxes(gen, 300)
    gt = [_random_boxes(gen, n) for n in (3, 0, 1, 5)]  # pair 1 has no ground truth
    num_gt = max(len(g) for g in gt)
    padded = torch.zeros(len(gt), num_gt, 4)
    valid = torch.zeros(len(gt), num_gt, dtype=torch.bool)
    for p, g in enumerate(gt):
        padded[p, : len(g)], valid[p, : len(g)] = g, True
    matcher = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)
    iou = batched_rpn.batched_pairwise_iou(padded, anchors[None])
    matches, labels = batched_rpn.match_anchors(
        iou, valid, matcher.thresholds, matcher.labels, True
    )
    for p, g in enumerate(gt):
        ref_matches, ref_labels = matcher(pairwise_iou(Boxes(g), Boxes(anchors)))
        assert torch.equal(labels[p], ref_labels)
        if len(g):
            assert torch.equal(matches[p], ref_matches)
    assert (labels[1] == 0).all()


@pytest.mark.parametrize("num_pos", [0, 5, 40, 200])
def test_subsample_labels_keeps_detectron2s_caps_and_types(num_pos):
    torch.manual_seed(0)
    rows, length, num, frac = 6, 500, 64, 0.5
    labels = torch.full((rows, length), -1)
    for r in range(rows):
        perm = torch.randperm(length)
        labels[r, perm[: num_pos + r]] = 1
        labels[r, perm[num_pos + r : num_pos + r + 30 * r]] = 0  # row 0: no negatives
    out = batched_rpn.subsample_labels(labels, num, frac)
    for r in range(rows):
        ref_pos, ref_neg = d2_subsample_labels(labels[r], num, frac, 0)
        sampled_pos, sampled_neg = out[r] == 1, out[r] == 0
        assert sampled_pos.sum() == len(ref_pos) and sampled_neg.sum() == len(ref_neg)
        assert (labels[r][sampled_pos] == 1).all() and (labels[r][sampled_neg] == 0).all()


def test_subsample_labels_is_uniform_over_candidates():
    torch.manual_seed(0)
    labels = torch.full((1, 50), -1)
    labels[0, :20] = 1  # 20 positives, 8 drawn each time
    labels[0, 20:40] = 0
    draws = 2000
    hits = torch.zeros(50)
    for _ in range(draws):
        hits += (batched_rpn.subsample_labels(labels, 16, 0.5)[0] == 1).float()
    freq = hits[:20] / draws  # expected 8 / 20 = 0.4 each; binomial sd ~0.011
    assert (freq - 0.4).abs().max() < 0.05
    assert hits[20:].sum() == 0


def test_label_and_sample_anchors_matches_detectron2_rpn_before_sampling():
    """With a sample size that keeps every labelled anchor, the batched labelling of B*N pairs
    equals detectron2's RPN on the per-pair ground truth."""
    from detectron2.modeling import build_model

    cfg = get_tiny_cfg("MODEL.RPN.BATCH_SIZE_PER_IMAGE", "100000")
    rpn = build_model(cfg).proposal_generator
    gen = torch.Generator().manual_seed(1)
    anchors = [Boxes(_random_boxes(gen, 400, 128))]
    targets = []
    for n in (3, 2):
        inst = Instances((128, 160))
        inst.gt_boxes = Boxes(_random_boxes(gen, n, 128, 8))
        inst.gt_classes = torch.tensor([0, 2, -1][:n])
        targets.append(inst)
    labels, matched = rpn.label_and_sample_anchors(anchors, targets, 3, [(128, 160)] * 2)
    per_pair = []
    for t in targets:
        for c in range(3):
            per_pair.append(Instances(t.image_size, gt_boxes=t.gt_boxes[t.gt_classes == c]))
    ref_labels, ref_boxes = type(rpn).__mro__[1].label_and_sample_anchors(rpn, anchors, per_pair)
    for p in range(6):
        assert torch.equal(labels[p], ref_labels[p])
        pos = labels[p] == 1
        assert torch.allclose(matched[p][pos], ref_boxes[p][pos])


def test_rpn_losses_equal_detectron2s_indexed_losses():
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    rpn = build_model(get_tiny_cfg()).proposal_generator
    torch.manual_seed(0)
    num_pairs, num_anchors = 4, 300
    anchors = [Boxes(_random_boxes(torch.Generator().manual_seed(2), num_anchors))]
    labels = torch.randint(-1, 2, (num_pairs, num_anchors))
    gt = anchors[0].tensor[None] + torch.randn(num_pairs, num_anchors, 4)
    logits = [torch.randn(num_pairs, num_anchors)]
    deltas = [torch.randn(num_pairs, num_anchors, 4) * 0.1]
    with EventStorage(0):
        ours = rpn.losses(anchors, logits, labels, deltas, gt)
        ref = type(rpn).__mro__[1].losses(rpn, anchors, logits, list(labels), deltas, list(gt))
    for k in ref:
        assert torch.allclose(ours[k], ref[k], rtol=1e-5, atol=1e-6), k


# ------------------------------------------------------------------ RPN: proposal selection
@pytest.mark.parametrize("min_box_size", [0.0, 6.0])
def test_find_top_proposals_equals_detectron2(min_box_size):
    gen = torch.Generator().manual_seed(3)
    num_pairs, sizes = 5, [(90, 120), (100, 80), (90, 120), (64, 64), (100, 100)]
    proposals = [_random_boxes(gen, num_pairs * n, 130).view(num_pairs, n, 4) for n in (200, 50)]
    proposals[0][1, :5] = 10.0  # degenerate boxes
    logits = [torch.randn(num_pairs, p.shape[1], generator=gen) for p in proposals]
    boxes, scores, valid = batched_rpn.find_top_proposals(
        proposals, logits, sizes, 0.5, 120, 40, min_box_size, False
    )
    ref = find_top_rpn_proposals(proposals, logits, sizes, 0.5, 120, 40, min_box_size, False)
    for p, r in enumerate(ref):
        assert valid[p].sum() == len(r)
        assert torch.equal(boxes[p][valid[p]], r.proposal_boxes.tensor)
        assert torch.equal(scores[p][valid[p]], r.objectness_logits)
        # padding only after the valid rows
        assert not valid[p][int(valid[p].sum()) :].any()


def test_find_top_proposals_raises_on_non_finite_in_training():
    props = [torch.rand(2, 10, 4) * 10]
    props[0][..., 2:] += 10
    logits = [torch.randn(2, 10)]
    logits[0][1, 3] = float("nan")
    with pytest.raises(FloatingPointError, match="Inf/NaN"):
        batched_rpn.find_top_proposals(props, logits, [(30, 30)] * 2, 0.7, 10, 5, 0.0, True)


def test_batched_nms_reference_is_per_pair():
    """The single NMS call over (pair, level) groups never suppresses across pairs."""
    box = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    proposals = [box.expand(3, 1, 4).clone()]  # the same box in 3 pairs
    logits = [torch.tensor([[1.0], [2.0], [3.0]])]
    _, _, valid = batched_rpn.find_top_proposals(proposals, logits, [(60, 60)] * 3, 0.5, 5, 5, 0, 0)
    assert valid.all()
    assert len(batched_nms(box.expand(3, 4), logits[0][:, 0], torch.arange(3), 0.5)) == 3


# ------------------------------------------------------------------ ROI pairs
def _pair_inputs(shared: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    num_classes, num_props = 4, 30
    proposals, targets = [], []
    for gt_classes in [[0, 0, 2], [1], [], [3, 3, 3, 0, -1]]:
        gt = _random_boxes(gen, len(gt_classes), 100, 10)
        props = Instances((120, 120))
        # proposals: jittered copies of the ground truth and random boxes
        jitter = gt.repeat(3, 1) + torch.randn(3 * len(gt), 4, generator=gen) * 4
        boxes = torch.cat([jitter, _random_boxes(gen, num_props - len(jitter), 100, 4)])
        props.proposal_boxes = Boxes(boxes)
        props.proposal_valid = torch.rand(num_props, generator=gen) > 0.1
        if not shared:
            props.proposal_classes = torch.randint(0, num_classes, (num_props,), generator=gen)
        proposals.append(props)
        tgt = Instances((120, 120), gt_boxes=Boxes(gt))
        tgt.gt_classes = torch.tensor(gt_classes, dtype=torch.long)
        targets.append(tgt)
    return proposals, targets, num_classes


def _reference_pairs(props, tgt, num_classes, thresh):
    """All candidate pairs of one image with their type, from the definitions."""
    valid_gt = tgt.gt_classes >= 0
    gt_boxes, gt_classes = tgt.gt_boxes.tensor[valid_gt], tgt.gt_classes[valid_gt]
    boxes = torch.cat([props.proposal_boxes.tensor, gt_boxes])
    cands = []
    for i in range(len(props)):
        if not props.proposal_valid[i]:
            continue
        classes = (
            [int(props.proposal_classes[i])]
            if props.has("proposal_classes")
            else range(num_classes)
        )
        cands += [(i, c) for c in classes]
    cands += [(len(props) + g, c) for g in range(len(gt_boxes)) for c in range(num_classes)]
    iou = pairwise_iou(Boxes(boxes), Boxes(gt_boxes)) if len(gt_boxes) else None
    present = set(gt_classes.tolist())
    kinds = {}
    for box, c in cands:
        pos = False
        if iou is not None:
            best, j = iou[box].max(0)
            pos = bool(best >= thresh) and int(gt_classes[j]) == c
        kinds[(box, c)] = 0 if pos else (1 if c in present else 2)
    return kinds, boxes


@pytest.mark.parametrize("shared", [True, False])
def test_pair_sampling_types_ratio_and_caps_follow_the_definitions(shared):
    torch.manual_seed(0)
    proposals, targets, num_classes = _pair_inputs(shared)
    pairs_per_image, fractions, thresh = 24, [0.25, 0.5, 0.25], 0.5
    pairs = pair_sampling.label_and_sample_pairs(
        proposals, targets, num_classes, thresh, pairs_per_image, fractions
    )
    caps = [round(pairs_per_image * f) for f in fractions]
    num_props = len(proposals[0])
    for b, (props, tgt) in enumerate(zip(proposals, targets)):
        kinds, boxes = _reference_pairs(props, tgt, num_classes, thresh)
        counts = [sum(1 for k in kinds.values() if k == t) for t in range(3)]
        sampled = []
        for slot in range(pairs.valid.shape[1]):
            if not pairs.valid[b, slot]:
                continue
            box, c = int(pairs.box_idx[b, slot]), int(pairs.classes[b, slot])
            # ground-truth candidates follow the padded proposals; the padding of the ground
            # truth (class -1) is never sampled
            if box >= num_props:
                g = box - num_props
                assert tgt.gt_classes[g] >= 0
                box = num_props + int((tgt.gt_classes[:g] >= 0).sum())
            assert (box, c) in kinds, "sampled pair is not a candidate"
            sampled.append((box, c))
            assert bool(pairs.labels[b, slot]) == (kinds[(box, c)] == 0)
        assert len(set(sampled)) == len(sampled), "a pair was sampled twice"
        got = [sum(1 for p in sampled if kinds[p] == t) for t in range(3)]
        assert got == [min(n, cap) for n, cap in zip(counts, caps)]
        assert torch.allclose(pairs.boxes[b][: len(props)], props.proposal_boxes.tensor)


def test_pair_sampling_is_uniform_within_a_type():
    proposals, targets, num_classes = _pair_inputs(True, seed=1)
    proposals, targets = proposals[:1], targets[:1]
    hits = {}
    torch.manual_seed(0)
    draws = 400
    for _ in range(draws):
        pairs = pair_sampling.label_and_sample_pairs(
            proposals, targets, num_classes, 0.5, 8, [0.0, 0.0, 1.0]
        )
        for box, c, ok in zip(pairs.box_idx[0], pairs.classes[0], pairs.valid[0]):
            if ok:
                hits[(int(box), int(c))] = hits.get((int(box), int(c)), 0) + 1
    kinds, _ = _reference_pairs(proposals[0], targets[0], num_classes, 0.5)
    num_neg = sum(1 for k in kinds.values() if k == 2)
    expected = draws * 8 / num_neg
    freqs = torch.tensor([hits.get(p, 0) for p, k in kinds.items() if k == 2], dtype=torch.float)
    assert set(hits) <= {p for p, k in kinds.items() if k == 2}
    # binomial sd = sqrt(400 * p * (1 - p)) ~ 3.5 at these sizes; 5 sd
    assert (freqs - expected).abs().max() < 5 * (expected * (1 - 8 / num_neg)) ** 0.5


def test_used_boxes_rows_index_the_compacted_boxes():
    proposals, targets, num_classes = _pair_inputs(True)
    torch.manual_seed(0)
    pairs = pair_sampling.label_and_sample_pairs(
        proposals, targets, num_classes, 0.5, 24, [1, 2, 1]
    )
    used, rows = pair_sampling.used_boxes(pairs)
    flat = pair_sampling.first_true(used.flatten(), int(used.sum()))
    assert torch.equal(flat, torch.nonzero(used.flatten()).squeeze(1))
    compact = pairs.boxes.flatten(0, 1)[flat]
    b, s = torch.nonzero(pairs.valid, as_tuple=True)
    box = pairs.box_idx[b, s]
    assert torch.equal(compact[rows[b, box]], pairs.boxes[b, box])


# ------------------------------------------------------------------ host syncs per step
def test_host_syncs_per_training_step_do_not_grow_with_the_batch():
    from benchmarks.count_syncs import build_cfg, measure
    from tests.common import TINY_CONFIG

    cfg = build_cfg(str(TINY_CONFIG), ["FSOD.N_WAY", "3"])
    one, three = measure(cfg, (1, 3), warmup=1)
    assert three["syncs"] <= one["syncs"] + 1, (one["by_op"], three["by_op"])
    assert three["syncs"] <= 20
    assert all(torch.isfinite(torch.tensor(v)) for v in three["losses"].values())
