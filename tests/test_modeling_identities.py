"""Core identities of the model, checked through the modules' forward methods: late-conditioned
objectness, best class per anchor, (ROI, class) pair labelling and sampling, episode targets."""

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage
from torch import nn

from fsod_d2.modeling.meta_arch import _episode_targets

from .common import get_tiny_cfg, synthetic_supports


def _model(*opts, seed=0):
    torch.manual_seed(seed)
    return build_model(get_tiny_cfg(*opts))


# ---------------------------------------------------------------------------- attention-RPN head
@pytest.mark.parametrize("conditioning", ["early", "late"])
def test_rpn_head_conditioning_equals_the_explicit_product(conditioning):
    """early: every layer sees ``query * kernel``; late: ``objectness(conv(query) * kernel)``
    with class-agnostic deltas ``anchor_deltas(conv(query))``. Row b*N + n is (image b,
    class n)."""
    head = _model("MODEL.FSOD.RPN_CONDITIONING", conditioning).proposal_generator.rpn_head
    gen = torch.Generator().manual_seed(0)
    num_images, num_classes, channels = 2, 3, head.conv.in_channels
    x = torch.randn(num_images, channels, 6, 7, generator=gen)
    kernels = torch.rand(num_images, num_classes, channels, generator=gen) + 0.5
    with torch.no_grad():
        (logits,), (deltas,) = head([x], kernels)
        for b in range(num_images):
            for n in range(num_classes):
                k = kernels[b, n][:, None, None]
                if conditioning == "early":
                    hidden = head.conv((x[b] * k)[None])
                    want_logits = head.objectness_logits(hidden)[0]
                else:
                    hidden = head.conv(x[b][None])
                    want_logits = head.objectness_logits(hidden * k)[0]
                want_deltas = head.anchor_deltas(hidden)[0]
                row = b * num_classes + n
                torch.testing.assert_close(logits[row], want_logits, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(deltas[row], want_deltas, rtol=1e-5, atol=1e-5)
    assert logits.shape[0] == num_images * num_classes
    # the kernel matters: two classes of one image get different objectness
    assert not torch.allclose(logits[0], logits[1])


# ---------------------------------------------------------------------------- best class per anchor
class _FixedHead(nn.Module):
    """Stands in for the RPN head: returns given per-(image, class) logits and deltas."""

    def __init__(self, logits: torch.Tensor, deltas: torch.Tensor):
        super().__init__()
        self.logits, self.deltas = logits, deltas

    def forward(self, features, kernels):
        return [self.logits], [self.deltas]


def test_shared_proposals_take_the_best_class_and_its_deltas():
    """merge_classes: each anchor is proposed once, with the objectness of its best class and
    the box decoded with that class's deltas, i.e. exactly the proposal the best class's own
    (image, class) set has for that anchor."""
    opts = ("MODEL.RPN.NMS_THRESH", 1.0, "MODEL.RPN.PRE_NMS_TOPK_TEST", 100000)
    rpn = _model(*opts, "MODEL.RPN.POST_NMS_TOPK_TEST", 100000).proposal_generator.eval()
    num_images, num_classes, h, w = 2, 3, 4, 5
    num_anchors = rpn.anchor_generator.num_anchors[0]
    gen = torch.Generator().manual_seed(0)
    # a distinct logit per (image, anchor, class), so that a logit names its anchor and class;
    # which class is best varies from anchor to anchor
    cells = num_anchors * h * w
    order = torch.stack([torch.randperm(num_classes, generator=gen) for _ in range(cells)])
    logits = (torch.arange(cells)[None, :, None] * 10.0 + order[None]).repeat(num_images, 1, 1)
    logits = logits + torch.arange(num_images)[:, None, None] * 1000.0  # (B, cells, N)
    # (B*N, A, H, W) in the RPN head layout: cell index = (y * W + x) * A + a
    head_logits = logits.view(num_images, h, w, num_anchors, num_classes)
    head_logits = head_logits.permute(0, 4, 3, 1, 2).reshape(-1, num_anchors, h, w)
    head_deltas = torch.randn(num_images * num_classes, num_anchors * 4, h, w, generator=gen)
    head_deltas = head_deltas * 0.2
    rpn.rpn_head = _FixedHead(head_logits, head_deltas)

    images = ImageList(torch.zeros(num_images, 3, h * 16, w * 16), [(h * 16, w * 16)] * 2)
    features = {rpn.in_features[0]: torch.zeros(num_images, 8, h, w)}
    kernels = torch.zeros(num_images, num_classes, 8)
    with torch.no_grad():
        merged, _ = rpn(images, features, kernels, merge_classes=True)
        per_pair, _ = rpn(images, features, kernels, merge_classes=False)
    assert len(merged) == num_images and len(per_pair) == num_images * num_classes
    for b in range(num_images):
        pair_box = {}  # logit -> box in the class's own proposal set (empty boxes are dropped)
        for n in range(num_classes):
            p = per_pair[b * num_classes + n]
            for logit, box in zip(p.objectness_logits.tolist(), p.proposal_boxes.tensor):
                pair_box[logit] = box
        best = [v for v in logits[b].max(dim=1).values.tolist() if v in pair_box]
        got = merged[b].objectness_logits.tolist()
        assert sorted(got) == sorted(best) and len(got) > cells * 0.9  # the best, once each
        for logit, box in zip(got, merged[b].proposal_boxes.tensor):
            torch.testing.assert_close(box, pair_box[logit], rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------- pair sampling
def _roi_setup(*opts):
    """The tiny model's ROI head in training mode, query features, class prototypes (3 classes)
    and one query's ground truth: class 0 at gt0, class 1 at gt1, class 2 absent."""
    model = _model(*opts)
    heads = model.roi_heads.train()
    gen = torch.Generator().manual_seed(0)
    channels = model.backbone.output_shape()[model.feature_name].channels
    features = {model.feature_name: torch.randn(1, channels, 8, 10, generator=gen)}
    sup, boxes = synthetic_supports(np.random.default_rng(0), [0, 1, 2], 1, 64)
    with torch.no_grad():
        _, rois = model.encode_supports(sup, boxes)
    prototypes = rois[None]  # (1, N=3, C5, h, w)
    gt = Instances(
        (128, 160),
        gt_boxes=Boxes(torch.tensor([[10.0, 10.0, 50.0, 50.0], [80.0, 40.0, 130.0, 100.0]])),
        gt_classes=torch.tensor([0, 1]),
    )
    return heads, features, prototypes, gt


def _sampled_pairs(heads, features, prototypes, proposals, targets):
    """Run the head's training forward and read back the pairs it scored: per pair the box,
    the episode class and the match label. The relation's output is replaced by zero logits
    that require grad, so d loss_match / d logit = (sigmoid(0) - label) * w, w > 0: its sign
    is the label (0 gradient: a padding pair that does not count)."""
    captured = {}

    def boxes_hook(module, args):  # the ROI format: (M, 5) rows [image, x0, y0, x1, y1]
        captured["boxes"] = args[1][:, 1:]

    def relation_hook(module, args, output):
        captured["pairs"] = (args[2], args[3])
        captured["logits"] = torch.zeros(output.shape, requires_grad=True)
        return captured["logits"]

    handles = [
        heads.pooler.level_poolers[0].register_forward_pre_hook(boxes_hook),
        heads.relation.register_forward_hook(relation_hook),
    ]
    try:
        with EventStorage(0):
            losses = heads(features, proposals, prototypes, targets)
    finally:
        for h in handles:
            h.remove()
    losses["loss_match"].backward()
    grad = captured["logits"].grad
    num_classes = prototypes.shape[1]
    box_idx, class_idx = captured["pairs"]
    real = grad != 0
    return (
        captured["boxes"][box_idx[real]],
        (class_idx[real] % num_classes).tolist(),
        (grad[real] < 0).tolist(),
    )


def test_pairs_are_labelled_positive_background_or_negative_class():
    """Every (box, class) candidate when the cap is high: proposals and ground-truth boxes, each
    with every class; positive = IoU >= 0.5 with a box of that class. The three types are what
    PAIR_SAMPLING_RATIO selects: (1,0,0) positives, (0,1,0) background pairs of classes present
    in the image, (0,0,1) pairs with the absent class."""
    boxes = torch.tensor(
        [
            [10.0, 10.0, 50.0, 50.0],  # = gt0
            [12.0, 12.0, 52.0, 52.0],  # IoU 0.82 with gt0
            [100.0, 0.0, 150.0, 30.0],  # far from both objects
            [82.0, 42.0, 130.0, 100.0],  # IoU 0.93 with gt1
            [30.0, 30.0, 70.0, 70.0],  # IoU 0.14 with gt0: not a match
        ]
    )
    props = Instances((128, 160), proposal_boxes=Boxes(boxes), objectness_logits=torch.zeros(5))
    candidates = torch.cat([boxes, torch.tensor([[10.0, 10.0, 50.0, 50.0], [80, 40, 130, 100]])])
    positive = {(0, 0), (1, 0), (3, 1), (5, 0), (6, 1)}  # (candidate row, class)
    present = {0, 1}

    def run(ratio):
        heads, features, prototypes, gt = _roi_setup(
            "MODEL.FSOD.PAIRS_PER_IMAGE", 1000, "MODEL.FSOD.PAIR_SAMPLING_RATIO", ratio
        )
        torch.manual_seed(0)
        got_boxes, classes, labels = _sampled_pairs(heads, features, prototypes, [props], [gt])
        return sorted(zip(map(tuple, got_boxes.tolist()), classes, labels))

    every = [
        (tuple(candidates[r].tolist()), c, (r, c) in positive) for r in range(7) for c in range(3)
    ]
    assert run([1.0, 1.0, 1.0]) == sorted(every)
    assert run([1.0, 0.0, 0.0]) == sorted(p for p in every if p[2])
    assert run([0.0, 1.0, 0.0]) == sorted(p for p in every if not p[2] and p[1] in present)
    assert run([0.0, 0.0, 1.0]) == sorted(p for p in every if p[1] not in present)


def test_pair_sampling_ratio_and_cap():
    """PAIRS_PER_IMAGE pairs per image in PAIR_SAMPLING_RATIO (positive : background :
    negative-class) when every type has enough candidates; a type short of its quota gives
    what it has, and no type exceeds its quota."""
    gen = torch.Generator().manual_seed(1)
    xy = torch.rand(60, 2, generator=gen) * torch.tensor([100.0, 60.0])
    wh = torch.rand(60, 2, generator=gen) * 40 + 10
    jitter = torch.rand(12, 4, generator=gen) * 4 - 2
    near = torch.tensor([[10.0, 10.0, 50.0, 50.0], [80.0, 40.0, 130.0, 100.0]]).repeat(6, 1)
    boxes = torch.cat([near + jitter, torch.cat([xy, xy + wh], dim=1)])
    props = Instances((128, 160), proposal_boxes=Boxes(boxes), objectness_logits=torch.zeros(72))

    def counts(pairs_per_image, ratio):
        heads, features, prototypes, gt = _roi_setup(
            "MODEL.FSOD.PAIRS_PER_IMAGE", pairs_per_image, "MODEL.FSOD.PAIR_SAMPLING_RATIO", ratio
        )
        torch.manual_seed(0)
        _, classes, labels = _sampled_pairs(heads, features, prototypes, [props], [gt])
        pos = sum(labels)
        neg_class = sum(c == 2 for c in classes)
        return pos, len(labels) - pos - neg_class, neg_class

    # 12 near-object proposals + 2 gt boxes: at least 14 positive candidates
    assert counts(8, [1.0, 2.0, 1.0]) == (2, 4, 2)
    assert counts(12, [1.0, 1.0, 1.0]) == (4, 4, 4)
    assert counts(20, [0.0, 3.0, 1.0]) == (0, 15, 5)
    pos, bg, neg = counts(200, [1.0, 2.0, 1.0])  # quotas 50 : 100 : 50
    assert 14 <= pos < 50 and bg == 100 and neg == 50


# ---------------------------------------------------------------------------- episode targets
def test_episode_targets_relabel_the_episode_classes_and_mark_the_others():
    inst = Instances(
        (100, 100),
        gt_boxes=Boxes(torch.arange(16, dtype=torch.float32).view(4, 4)),
        gt_classes=torch.tensor([7, 3, 9, 3]),
    )
    out = _episode_targets(inst, torch.tensor([3, 5, 7]))  # dataset ids of the N classes
    # 7 -> index 2, 3 -> index 0, 9 (not in the episode) -> -1, ignored downstream; the boxes
    # stay (no boolean indexing: the box count is a shape, no host sync)
    assert out.gt_classes.tolist() == [2, 0, -1, 0]
    assert torch.equal(out.gt_boxes.tensor, inst.gt_boxes.tensor)
    none = _episode_targets(inst, torch.tensor([5]))
    assert none.gt_classes.tolist() == [-1] * 4 and none.gt_classes.dtype == torch.long
