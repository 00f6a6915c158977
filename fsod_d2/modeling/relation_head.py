"""Multi-relation detector head: (query ROI, support class) match scores and box regression.

Everything is expressed over *pairs* ``(roi, class)``:

* ROI features (res5 on the pooled res4 map) are computed once per unique box, however many
  classes that box is paired with.
* Relation branches (``MODEL.FSOD.RELATIONS``, registered in
  :data:`~fsod_d2.modeling.relations.RELATION_REGISTRY`; Fan et al.'s global, local and patch)
  embed each ROI and each class once and score pairs; their logits are summed.
* At test time, ``patch_topk`` keeps, per ROI, only the top-k classes ranked by the cheap
  branches' score for the expensive branches (patch).
* Box regression is class-agnostic and depends on the ROI alone, so it also runs once per box.
"""

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads
from detectron2.structures import Boxes, Instances
from torch import Tensor, nn

from . import pair_sampling
from .batched_rpn import masked_box_loss, read_host
from .detections import select_detections
from .relations import MultiRelation, build_relations
from .torchvision_backbone import build_torchvision_roi_stage, uses_torchvision_backbone

logger = logging.getLogger(__name__)

_TEST_SCORES = ("sigmoid", "softmax")


def res5_channels(res5: nn.Module) -> int:
    """Output channels of the ROI head's per-box stage (detectron2's res5 or a torchvision
    stage)."""
    return getattr(res5, "out_channels", None) or res5[-1].out_channels


@ROI_HEADS_REGISTRY.register()
class MultiRelationROIHeads(Res5ROIHeads):
    """Res5 ROI head whose predictor is the multi-relation detector (see module docstring).

    Extends :class:`Res5ROIHeads` through ``super()``: its ``from_config`` (pooler, res5,
    proposal matcher), ``_build_res5_block`` (a torchvision stage when the backbone is one) and
    ``_shared_roi_transform`` (pooler + res5, for query ROIs and support boxes). Its public
    methods are what :class:`FsodRCNN` uses: :meth:`pool_supports` and
    :meth:`support_prototypes` (supports), :meth:`roi_features` (any boxes),
    :meth:`base_class_loss` (the optional base-class classifier, which belongs to this head),
    and :meth:`forward`.

    ``forward`` is not ``Res5ROIHeads.forward`` + post-processing (as TridentNet's is): it takes
    the episode's prototypes, scores (ROI, class) *pairs* sampled per class instead of
    classifying proposals, and needs each ROI's whole res5 map (local and patch relations,
    box regression) where ``Res5ROIHeads.forward`` hands its predictor the spatial mean.
    """

    # 2: the base-class classifier lives here (version 1: ``base_classifier.*`` of FsodRCNN,
    # moved by FsodRCNN._load_from_state_dict)
    _version = 2

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
        base_classifier: Optional[nn.Linear] = None,
        base_classifier_weight: float = 0.0,
        **kwargs,
    ):
        """
        Args:
            relation: the relation branches (``MODEL.FSOD.RELATIONS``).
            box_regressor: class-agnostic box deltas from the flattened res5 ROI feature.
            base_classifier: training only: linear layer from pooled res5 features to dataset
                class ids (``MODEL.FSOD.BASE_CLASSIFIER``); None = no ``loss_base_cls``.
            base_classifier_weight: weight of ``loss_base_cls``.
            others: see ``from_config`` (one config key each) and :class:`Res5ROIHeads`.
        """
        super().__init__(**kwargs)
        self.base_classifier = base_classifier
        self.base_classifier_weight = base_classifier_weight
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
        # Res5ROIHeads.from_config also builds its FastRCNNOutputLayers (two Linear layers on
        # the res5 channels); the relation module and the box regressor replace it, so it is
        # dropped here and never becomes part of this module or its checkpoints
        ret["box_predictor"] = None
        out_channels = res5_channels(ret["res5"])
        m = cfg.MODEL.FSOD
        ret["relation"] = build_relations(m.RELATIONS, out_channels, m.RELATION_DIM)
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
        num_classes = _base_classifier_classes(cfg) if m.BASE_CLASSIFIER.WEIGHT > 0 else 0
        if num_classes:
            ret["base_classifier"] = nn.Linear(out_channels, num_classes)
        ret["base_classifier_weight"] = m.BASE_CLASSIFIER.WEIGHT
        return ret

    @classmethod
    def _build_res5_block(cls, cfg):
        """detectron2's res5, or the stride-32 stage of a torchvision backbone (pretrained)."""
        if uses_torchvision_backbone(cfg):
            return build_torchvision_roi_stage(cfg)
        return super()._build_res5_block(cfg)

    # ------------------------------------------------------------------ public pieces
    def pool_supports(self, features: Tensor, boxes: Tensor) -> Tensor:
        """Support crops' backbone map (S, C, H, W) and object boxes (S, 4) -> the ROI-pooled
        map of each object (S, C, r, r); input of the RPN kernels and of the prototypes."""
        image_idx = torch.arange(boxes.shape[0], device=boxes.device)  # one crop per image
        rois = pair_sampling.pooler_rois(image_idx, boxes.to(features.dtype))
        return self.pooler.level_poolers[0](features, rois)

    def support_prototypes(self, pooled: Tensor) -> Tensor:
        """Pooled support maps (S, C, r, r) -> per-shot ROI features (S, C5, h, w)."""
        return self.res5(pooled)

    def roi_features(self, features: Dict[str, Tensor], boxes: List[Boxes]) -> Tensor:
        """Res5 features (R, C5, h, w) of boxes on the query feature maps (the pooler + res5
        of :class:`Res5ROIHeads`)."""
        return self._shared_roi_transform([features[f] for f in self.in_features], boxes)

    def base_class_loss(
        self,
        features: Dict[str, Tensor],
        support_rois: Tensor,
        support_classes: Tensor,
        gt_instances: List[Instances],
    ) -> Tensor:
        """Weighted cross-entropy of the base-class classifier over support ROI features
        (S, C5, h, w) labelled ``support_classes`` (S,) and over every ground-truth box of the
        queries (``gt_classes``: dataset class ids). Needs ``base_classifier``."""
        if self.base_classifier is None:
            raise RuntimeError("base_class_loss needs MODEL.FSOD.BASE_CLASSIFIER.WEIGHT > 0")
        query_rois = self.roi_features(features, [t.gt_boxes for t in gt_instances])
        pooled = cat([support_rois, query_rois]).mean(dim=(2, 3))
        labels = cat([support_classes, cat([t.gt_classes for t in gt_instances])])
        loss = F.cross_entropy(self.base_classifier(pooled), labels)
        return self.base_classifier_weight * loss

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
            training: dict of losses; test: per image (boxes, scores, class indices in
            0..N-1), see :meth:`_forward_test`.
        """
        if self.training:
            return self._forward_train(features, proposals, prototypes, targets)
        return self._forward_test(features, proposals, prototypes)

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
        q = self.relation.embed_queries(x)
        s = self.relation.embed_supports(prototypes.flatten(0, 1))

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
    def _forward_test(self, features, proposals, prototypes) -> List[Tuple[Tensor, Tensor, Tensor]]:
        """Per image (boxes, scores, class indices 0..N-1) as tensors (see
        :func:`~fsod_d2.modeling.detections.select_detections`); rows of ``proposals`` with
        ``proposal_valid`` False (padding) score zero."""
        num_classes = prototypes.shape[1]
        num_rois = [len(p) for p in proposals]
        image_idx = torch.arange(len(proposals), device=prototypes.device)
        image_idx = image_idx.repeat_interleave(torch.tensor(num_rois, device=image_idx.device))
        roi_boxes = cat([p.proposal_boxes.tensor for p in proposals])
        x = self._roi_features(features, image_idx, roi_boxes)
        q = self.relation.embed_queries(x)
        s = self.relation.embed_supports(prototypes.flatten(0, 1))
        deltas = self.box_regressor(x.flatten(1))
        pred_boxes = self.box2box_transform.apply_deltas(deltas, roi_boxes)

        results, offset = [], 0
        for b, props in enumerate(proposals):
            rows = slice(offset, offset + len(props))
            q_b = {k: v[rows] for k, v in q.items()}
            s_b = {k: v[b * num_classes : (b + 1) * num_classes] for k, v in s.items()}
            if props.has("proposal_classes"):  # each ROI scored with its own class only
                ri = torch.arange(len(props), device=pred_boxes.device)
                ci = props.proposal_classes
                scores = pred_boxes.new_zeros(len(props), num_classes)
                scores[ri, ci] = self.relation(q_b, s_b, ri, ci).sigmoid()
            else:
                logits = self.relation.dense(q_b, s_b, self.patch_topk)
                scores = self._match_scores(logits)
            if props.has("proposal_valid"):
                scores = torch.where(props.proposal_valid[:, None], scores, 0.0)
            results.append(
                select_detections(
                    pred_boxes[rows],
                    scores,
                    props.image_size,
                    self.test_score_thresh,
                    self.test_nms_thresh,
                    self.test_detections_per_img,
                )
            )
            offset += len(props)
        return results

    def _match_scores(self, logits: Tensor) -> Tensor:
        """(R, N) match logits of every ROI with every class -> detection scores
        (``test_score``; see MODEL.FSOD.TEST_SCORE)."""
        if self.test_score == "sigmoid":
            return logits.sigmoid()
        return torch.softmax(F.pad(logits, (0, 1)), dim=1)[:, :-1]


def _base_classifier_classes(cfg) -> int:
    """MODEL.FSOD.BASE_CLASSIFIER.NUM_CLASSES, or the training dataset's number of classes;
    0 when neither is known. The classifier is training-only, so inference (``--eval-only``,
    tools/predict.py) builds without it and ignores its weights in a checkpoint; training
    without it raises in ``forward``."""
    num = cfg.MODEL.FSOD.BASE_CLASSIFIER.NUM_CLASSES
    if num > 0:
        return num
    name = cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else None
    classes = MetadataCatalog.get(name).get("thing_classes") if name in MetadataCatalog else None
    if not classes:
        logger.info(
            "MODEL.FSOD.BASE_CLASSIFIER: the number of classes is unknown (DATASETS.TRAIN[0] "
            "%r is not registered): built without the training-only classifier",
            name,
        )
        return 0
    return len(classes)
