"""Multi-relation detector head: (query ROI, support class) match scores and box regression.

Everything is expressed over *pairs* ``(roi, class)``:

* ROI features (res5 on the pooled res4 map) are computed once per unique box, however many
  classes that box is paired with.
* The three relation branches of Fan et al. score pairs: global (pooled vectors, MLP), local
  (depth-wise correlation of 1x1-reduced maps) and patch (concatenated maps, conv stack). The
  first layer of the global and patch branches acts on a concatenation, so it is split into a
  query part and a support part, computed once per ROI and once per class and added per pair.
* At test time, ``patch_topk`` keeps, per ROI, only the top-k classes ranked by the cheap
  global + local score for the expensive patch branch.
* Box regression is class-agnostic and depends on the ROI alone, so it also runs once per box.
"""

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference_single_image
from detectron2.structures import Boxes, Instances
from torch import Tensor, nn

from . import pair_sampling
from .batched_rpn import masked_box_loss, read_host
from .torchvision_backbone import build_torchvision_roi_stage, uses_torchvision_backbone

# pairs scored per chunk by the gather-heavy branches; bounds peak memory
_PAIR_CHUNK = 1024
_TEST_SCORES = ("sigmoid", "softmax")


class MultiRelation(nn.Module):
    """Global, local and patch relation branches; each returns one match logit per pair."""

    def __init__(
        self, channels: int, hidden: int, use_global: bool, use_local: bool, use_patch: bool
    ):
        super().__init__()
        if not (use_global or use_local or use_patch):
            raise ValueError("At least one of MODEL.FSOD.{GLOBAL,LOCAL,PATCH}_RELATION must be on")
        self.use_global, self.use_local, self.use_patch = use_global, use_local, use_patch
        if use_global:
            self.global_q = nn.Linear(channels, hidden)
            self.global_s = nn.Linear(channels, hidden, bias=False)
            self.global_mlp = nn.Sequential(
                nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
            )
        if use_local:
            self.local_reduce = nn.Conv2d(channels, hidden, 1)
            self.local_fc = nn.Linear(hidden, 1)
        if use_patch:
            self.patch_q = nn.Conv2d(channels, hidden, 1)
            self.patch_s = nn.Conv2d(channels, hidden, 1, bias=False)
            self.patch_convs = nn.Sequential(
                nn.ReLU(),
                nn.Conv2d(hidden, hidden, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(hidden, hidden, 1),
                nn.ReLU(),
            )
            self.patch_fc = nn.Linear(hidden, 1)

    @property
    def has_cheap(self) -> bool:
        return self.use_global or self.use_local

    def embed(self, x: Tensor) -> Dict[str, Tensor]:
        """Per-ROI or per-class embeddings used by the pairwise branches; ``x``: (M, C, h, w)."""
        out = {}
        if self.use_global:
            out["global"] = x.mean(dim=(2, 3))
        if self.use_local:
            out["local"] = self.local_reduce(x).flatten(2)  # (M, hidden, h*w)
        if self.use_patch:
            out["patch"] = x
        return out

    def cheap_logits(
        self, q: Dict[str, Tensor], s: Dict[str, Tensor], qi: Tensor, si: Tensor
    ) -> Tensor:
        """Global + local logits for the pairs (qi[p], si[p])."""
        logits = qi.new_zeros(qi.shape[0], dtype=self._dtype)
        if self.use_global:
            h = self.global_q(q["global"])[qi] + self.global_s(s["global"])[si]
            logits = logits + self.global_mlp(h).squeeze(1)
        if self.use_local:
            hw = q["local"].shape[-1]
            corr = _chunked(lambda a, b: (q["local"][a] * s["local"][b]).sum(2) / hw, qi, si)
            logits = logits + self.local_fc(F.relu(corr)).squeeze(1)
        return logits

    def cheap_logits_dense(self, q: Dict[str, Tensor], s: Dict[str, Tensor]) -> Tensor:
        """Global + local logits of every (query row, support row) pair: (R, N), no gathers."""
        logits = 0.0
        if self.use_global:
            h = self.global_q(q["global"])[:, None] + self.global_s(s["global"])[None]
            logits = logits + self.global_mlp(h).squeeze(-1)
        if self.use_local:
            hw = q["local"].shape[-1]
            corr = torch.einsum("rcs,ncs->rnc", q["local"], s["local"]) / hw
            logits = logits + self.local_fc(F.relu(corr)).squeeze(-1)
        return logits

    def patch_logits(
        self, q: Dict[str, Tensor], s: Dict[str, Tensor], qi: Tensor, si: Tensor
    ) -> Tensor:
        """Patch-relation logits for the pairs (qi[p], si[p])."""
        pq, ps = self.patch_q(q["patch"]), self.patch_s(s["patch"])

        def run(a: Tensor, b: Tensor) -> Tensor:
            return self.patch_fc(self.patch_convs(pq[a] + ps[b]).mean(dim=(2, 3))).squeeze(1)

        return _chunked(run, qi, si)

    def forward(self, q: Dict[str, Tensor], s: Dict[str, Tensor], qi: Tensor, si: Tensor) -> Tensor:
        """Sum of all enabled branches for the pairs (qi[p], si[p])."""
        logits = self.cheap_logits(q, s, qi, si) if self.has_cheap else 0.0
        if self.use_patch:
            logits = logits + self.patch_logits(q, s, qi, si)
        return logits

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


def res5_channels(res5: nn.Module) -> int:
    """Output channels of the ROI head's per-box stage (detectron2's res5 or a torchvision
    stage)."""
    return getattr(res5, "out_channels", None) or res5[-1].out_channels


def _chunked(fn: Callable[[Tensor, Tensor], Tensor], qi: Tensor, si: Tensor) -> Tensor:
    if qi.numel() <= _PAIR_CHUNK:
        return fn(qi, si)
    return cat([fn(a, b) for a, b in zip(qi.split(_PAIR_CHUNK), si.split(_PAIR_CHUNK))], dim=0)


@ROI_HEADS_REGISTRY.register()
class MultiRelationROIHeads(Res5ROIHeads):
    """Res5 ROI head whose predictor is the multi-relation detector (see module docstring).

    Reuses detectron2's pooler and res5 block (``_shared_roi_transform``) for both query ROIs
    and support boxes; replaces the classifier with pairwise match scoring.
    """

    @configurable
    def __init__(
        self,
        *,
        relation: MultiRelation,
        box_regressor: nn.Linear,
        box2box_transform: Box2BoxTransform,
        box_reg_loss_type: str,
        smooth_l1_beta: float,
        pairs_per_image: int,
        pair_sampling_ratio: Sequence[float],
        patch_topk: int,
        test_score_thresh: float,
        test_nms_thresh: float,
        test_detections_per_img: int,
        match_loss_weight: float,
        box_loss_weight: float,
        class_contrast_weight: float = 0.0,
        test_score: str = "softmax",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if test_score not in _TEST_SCORES:
            raise ValueError(
                f"MODEL.FSOD.TEST_SCORE must be one of {_TEST_SCORES}, got {test_score!r}"
            )
        self.test_score = test_score
        self.relation = relation
        self.box_regressor = box_regressor
        self.box2box_transform = box2box_transform
        self.box_reg_loss_type = box_reg_loss_type
        self.smooth_l1_beta = smooth_l1_beta
        self.pairs_per_image = pairs_per_image
        if len(pair_sampling_ratio) != 3 or min(pair_sampling_ratio) < 0:
            raise ValueError(
                "MODEL.FSOD.PAIR_SAMPLING_RATIO must be 3 non-negative numbers "
                f"(positive : background : negative-class), got {pair_sampling_ratio}"
            )
        total = float(sum(pair_sampling_ratio))
        self.pair_fractions = [r / total for r in pair_sampling_ratio]
        self.patch_topk = patch_topk
        self.test_score_thresh = test_score_thresh
        self.test_nms_thresh = test_nms_thresh
        self.test_detections_per_img = test_detections_per_img
        self.loss_weights = {"loss_match": match_loss_weight, "loss_box_reg": box_loss_weight}
        if class_contrast_weight > 0:
            self.loss_weights["loss_class_contrast"] = class_contrast_weight

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        ret = super().from_config(cfg, input_shape)
        # the classifier of Res5ROIHeads is replaced by the relation module
        ret.pop("box_predictor")
        out_channels = res5_channels(ret["res5"])
        m = cfg.MODEL.FSOD
        ret["box_predictor"] = None
        ret["relation"] = MultiRelation(
            out_channels, m.RELATION_DIM, m.GLOBAL_RELATION, m.LOCAL_RELATION, m.PATCH_RELATION
        )
        res5_size = (cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION + 1) // 2  # res5 has stride 2
        ret["box_regressor"] = nn.Linear(out_channels * res5_size**2, 4)
        nn.init.normal_(ret["box_regressor"].weight, std=0.001)
        nn.init.zeros_(ret["box_regressor"].bias)
        ret["box2box_transform"] = Box2BoxTransform(weights=cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS)
        ret["box_reg_loss_type"] = cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE
        ret["smooth_l1_beta"] = cfg.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA
        ret["pairs_per_image"] = m.PAIRS_PER_IMAGE
        ret["pair_sampling_ratio"] = list(m.PAIR_SAMPLING_RATIO)
        ret["patch_topk"] = m.PATCH_TOPK
        ret["test_score_thresh"] = cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST
        ret["test_nms_thresh"] = cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST
        ret["test_detections_per_img"] = cfg.TEST.DETECTIONS_PER_IMAGE
        ret["match_loss_weight"] = m.MATCH_LOSS_WEIGHT
        ret["box_loss_weight"] = m.BOX_LOSS_WEIGHT
        ret["class_contrast_weight"] = m.CLASS_CONTRAST_WEIGHT
        ret["test_score"] = m.TEST_SCORE
        return ret

    @classmethod
    def _build_res5_block(cls, cfg):
        """detectron2's res5, or the stride-32 stage of a torchvision backbone (pretrained)."""
        if uses_torchvision_backbone(cfg):
            return build_torchvision_roi_stage(cfg)
        return super()._build_res5_block(cfg)

    # ------------------------------------------------------------------ supports
    def encode_supports(self, features: Tensor, boxes: Tensor) -> Tuple[Tensor, Tensor]:
        """Support crops' backbone map (S, C, H, W) and object boxes (S, 4) ->
        RPN kernels (S, C) (ROI-pooled map, averaged) and ROI features (S, C5, h, w)."""
        image_idx = torch.arange(len(boxes), device=boxes.device)
        rois = pair_sampling.pooler_rois(image_idx, boxes.to(features.dtype))
        pooled = self.pooler.level_poolers[0](features, rois)
        return pooled.mean(dim=(2, 3)), self.res5(pooled)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        features: Dict[str, Tensor],
        proposals: List[Instances],
        prototypes: Tensor,
        targets: Optional[List[Instances]] = None,
    ):
        """
        Args:
            features: query backbone features.
            proposals: per image, ``proposal_boxes`` and optionally ``proposal_classes``
                (episode class of each box when every class keeps its own proposals; absent
                means every box is paired with every class).
            prototypes: (B, N, C5, h, w) ROI-level support features per image and class.
            targets: training only; per image ``gt_boxes`` and ``gt_classes`` in 0..N-1.

        Returns:
            training: dict of losses; test: per image Instances with ``pred_classes`` in 0..N-1.
        """
        if self.training:
            return self._forward_train(features, proposals, prototypes, targets)
        return self._forward_test(features, proposals, prototypes)

    def _roi_embeddings(self, features: Dict[str, Tensor], boxes: List[Boxes]):
        x = self._shared_roi_transform([features[f] for f in self.in_features], boxes)
        return x, self.relation.embed(x)

    def _forward_train(self, features, proposals, prototypes, targets):
        """All images at once: pairs sampled as tensors, ROI features once per sampled box of
        the batch, masked losses; one host read (how many boxes and pairs were sampled)."""
        num_images, num_classes = prototypes.shape[:2]
        pairs = self._label_and_sample_pairs(proposals, targets, num_classes)
        num_cands = pairs.boxes.shape[1]
        used, rows = pair_sampling.used_boxes(pairs)
        num_rois, num_pairs = read_host(torch.stack([used.sum(), pairs.valid.sum()]))
        roi_idx = pair_sampling.first_true(used.flatten(), num_rois)  # (image, candidate) rows
        roi_boxes = pairs.boxes.flatten(0, 1)[roi_idx]
        x = self._roi_features(features, roi_idx // num_cands, roi_boxes)
        q = self.relation.embed(x)
        s = self.relation.embed(prototypes.flatten(0, 1))

        slot = pair_sampling.first_true(pairs.valid.flatten(), num_pairs)
        image = torch.arange(num_images, device=slot.device)[:, None]
        qi = rows.gather(1, pairs.box_idx).flatten()[slot]
        si = (image * num_classes + pairs.classes).flatten()[slot]
        logits = self.relation(q, s, qi, si)
        labels = pairs.labels.flatten()[slot].to(logits.dtype)
        loss_match = F.binary_cross_entropy_with_logits(logits, labels, reduction="mean")

        fg = pairs.fg.flatten()[roi_idx]
        deltas = self.box_regressor(x.flatten(1))
        loss_box = masked_box_loss(
            self.box2box_transform,
            roi_boxes,
            deltas.float(),
            pairs.matched_boxes.flatten(0, 1)[roi_idx],
            fg,
            self.box_reg_loss_type,
            self.smooth_l1_beta,
        ) / max(num_rois, 1)
        losses = {"loss_match": loss_match, "loss_box_reg": loss_box}
        if "loss_class_contrast" in self.loss_weights:
            fg_idx = torch.nonzero(fg).squeeze(1)  # a host sync, with this optional loss only
            fg_classes = (
                pairs.matched_classes.flatten()[roi_idx] + (roi_idx // num_cands) * num_classes
            )
            losses["loss_class_contrast"] = self._class_contrast_loss(
                q, s, fg_idx, fg_classes[fg_idx], num_classes
            )
        return {k: v * self.loss_weights[k] for k, v in losses.items()}

    def _roi_features(self, features: Dict[str, Tensor], image_idx: Tensor, boxes: Tensor):
        """res5 features of (M, 4) boxes in images ``image_idx`` (M,): the pooler's single
        level called on the ROI format directly (detectron2's pooler splits box lists per
        image, a host sync)."""
        if len(self.pooler.level_poolers) != 1:
            raise ValueError(
                "MultiRelationROIHeads needs one feature map (C4 layout): MODEL.ROI_HEADS."
                f"IN_FEATURES={self.in_features}"
            )
        feature = features[self.in_features[0]]
        rois = pair_sampling.pooler_rois(image_idx, boxes.to(feature.dtype))
        return self.res5(self.pooler.level_poolers[0](feature, rois))

    def _class_contrast_loss(self, q, s, fg_idx: Tensor, fg_classes: Tensor, num_classes: int):
        """Cross-entropy of each foreground ROI over the N classes of its episode: which of
        the prototypes is this object? (``fg_classes``: row of the true class in ``s``)."""
        if fg_idx.numel() == 0:
            return sum(v.sum() for v in s.values()) * 0.0  # keeps the graph, no signal
        first = fg_classes - fg_classes % num_classes  # row of the episode's class 0
        qi = fg_idx.repeat_interleave(num_classes)
        si = (first[:, None] + torch.arange(num_classes, device=first.device)).reshape(-1)
        logits = self.relation(q, s, qi, si).view(-1, num_classes)
        return F.cross_entropy(logits, fg_classes % num_classes)

    def _label_and_sample_pairs(
        self, proposals: List[Instances], targets: List[Instances], num_classes: int
    ) -> pair_sampling.SampledPairs:
        """Candidate (box, class) pairs of all images, labelled and sampled by type
        (:func:`fsod_d2.modeling.pair_sampling.label_and_sample_pairs`).

        Candidates: every proposal with its own class (``proposal_classes``) or with all
        classes, plus every ground-truth box with all classes. Types: positive (IoU >= the
        ROI_HEADS threshold with a box of that class), background (class present in the image,
        box does not match it), negative-class (class absent from the image).
        """
        return pair_sampling.label_and_sample_pairs(
            proposals,
            targets,
            num_classes,
            self.proposal_matcher.thresholds[1],
            self.pairs_per_image,
            self.pair_fractions,
        )

    @torch.no_grad()
    def _forward_test(self, features, proposals, prototypes):
        num_classes = prototypes.shape[1]
        boxes = [p.proposal_boxes for p in proposals]
        x, q = self._roi_embeddings(features, boxes)
        s = self.relation.embed(prototypes.flatten(0, 1))
        deltas = self.box_regressor(x.flatten(1))
        pred_boxes = self.box2box_transform.apply_deltas(deltas, cat([b.tensor for b in boxes]))

        results, offset = [], 0
        for b, props in enumerate(proposals):
            rows = slice(offset, offset + len(props))
            q_b = {k: v[rows] for k, v in q.items()}
            s_b = {k: v[b * num_classes : (b + 1) * num_classes] for k, v in s.items()}
            scores = pred_boxes.new_zeros(len(props), num_classes + 1)  # last: background
            if props.has("proposal_classes"):  # each ROI scored with its own class only
                ri = torch.arange(len(props), device=scores.device)
                ci = props.proposal_classes
                scores[ri, ci] = self.relation(q_b, s_b, ri, ci).sigmoid()
            else:
                scores[:, :num_classes] = self._match_scores(self._all_pairs_logits(q_b, s_b))
            result, _ = fast_rcnn_inference_single_image(
                pred_boxes[rows],
                scores,
                props.image_size,
                self.test_score_thresh,
                self.test_nms_thresh,
                self.test_detections_per_img,
            )
            results.append(result)
            offset += len(props)
        return results

    def _match_scores(self, logits: Tensor) -> Tensor:
        """(R, N) match logits of every ROI with every class -> detection scores
        (``test_score``; see MODEL.FSOD.TEST_SCORE)."""
        if self.test_score == "sigmoid":
            return logits.sigmoid()
        return torch.softmax(F.pad(logits, (0, 1)), dim=1)[:, :-1]

    def _all_pairs_logits(self, q: Dict[str, Tensor], s: Dict[str, Tensor]) -> Tensor:
        """(R, N) logits of every ROI with every class of one image. The cheap branches run
        densely; with ``patch_topk`` the patch branch only sees each ROI's top-k classes by
        cheap score, the others get -inf (score 0)."""
        rel, k = self.relation, self.patch_topk
        num_rois, num_classes = len(next(iter(q.values()))), len(next(iter(s.values())))
        device = next(iter(q.values())).device
        if rel.has_cheap:
            logits = rel.cheap_logits_dense(q, s)
        else:
            logits = torch.zeros(num_rois, num_classes, device=device)
        if not rel.use_patch:
            return logits
        if rel.has_cheap and 0 < k < num_classes:
            top = logits.topk(k, dim=1)
            ri = torch.arange(num_rois, device=device).repeat_interleave(k)
            ci = top.indices.reshape(-1)
            pruned = torch.full_like(logits, float("-inf"))
            pruned[ri, ci] = top.values.reshape(-1) + rel.patch_logits(q, s, ri, ci)
            return pruned
        ri = torch.arange(num_rois, device=device).repeat_interleave(num_classes)
        ci = torch.arange(num_classes, device=device).repeat(num_rois)
        return logits + rel.patch_logits(q, s, ri, ci).view(num_rois, num_classes)
