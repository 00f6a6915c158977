"""FsodRCNN: few-shot detector with a shared backbone, attention-RPN and multi-relation head."""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import Boxes, ImageList, Instances
from torch import Tensor

from .attention_rpn import AttentionRPN, AttentionRPNHead
from .fold_bn import fold_frozen_bn
from .relation_head import MultiRelationROIHeads
from .support import PrototypeSet, StalePrototypeError, support_fingerprint, weights_fingerprint
from .transfer import instances_to_device, to_device


@META_ARCH_REGISTRY.register()
class FsodRCNN(GeneralizedRCNN):
    """Few-shot R-CNN (Fan et al., CVPR 2020) on detectron2's GeneralizedRCNN.

    Training input: detectron2 dicts with "image", "instances" (``gt_classes`` are contiguous
    dataset ids) and the episode's supports: "support_images" (N*K, 3, S, S, class-major),
    "support_boxes" (N*K, 4) and "support_classes" (N,). Ground truth of classes outside the
    episode is ignored.

    Inference input: plain detectron2 dicts; the classes are those of the prototypes set with
    :meth:`set_prototypes` (see :meth:`compute_prototypes`). ``pred_classes`` are the
    prototypes' contiguous dataset class ids.
    """

    # 2: the base-class classifier belongs to the ROI heads (version 1: ``base_classifier.*``)
    _version = 2

    @configurable
    def __init__(
        self,
        *,
        shared_proposals: bool = True,
        per_class_reference: bool = False,
        fold_bn: bool = True,
        channels_last: bool = False,
        **kwargs,
    ):
        """
        Args:
            shared_proposals: merge proposals of all classes per image and pair every ROI with
                every class (ROI features once per box); False: each class keeps its own ROIs.
            per_class_reference: run each class separately in a loop (FewX-style benchmark
                reference); the same outputs as ``shared_proposals=False``, only slower.
            fold_bn: run each conv + FrozenBatchNorm as one convolution (see
                :mod:`fsod_d2.modeling.fold_bn`); same weights and outputs, faster.
            channels_last: keep parameters and backbone inputs in channels-last memory format.
            kwargs: see :class:`GeneralizedRCNN`; ``proposal_generator`` must be an
                :class:`AttentionRPN` with an :class:`AttentionRPNHead`, ``roi_heads`` a
                :class:`MultiRelationROIHeads` (or subclasses).
        """
        super().__init__(**kwargs)
        _check_component(
            self.proposal_generator, AttentionRPN, "MODEL.PROPOSAL_GENERATOR.NAME", "AttentionRPN"
        )
        _check_component(
            self.proposal_generator.rpn_head, AttentionRPNHead, "MODEL.RPN.HEAD_NAME",
            "AttentionRPNHead",
        )  # fmt: skip
        _check_component(
            self.roi_heads, MultiRelationROIHeads, "MODEL.ROI_HEADS.NAME", "MultiRelationROIHeads"
        )
        self.shared_proposals = shared_proposals
        self.per_class_reference = per_class_reference
        if fold_bn:
            fold_frozen_bn(self)
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self.prototypes: Optional[PrototypeSet] = None
        rpn_features = list(self.proposal_generator.in_features)
        roi_features = list(self.roi_heads.in_features)
        if len(rpn_features) != 1 or rpn_features != roi_features:
            raise ValueError(
                "FsodRCNN needs one shared feature map (C4 layout): MODEL.RPN.IN_FEATURES="
                f"{rpn_features} and MODEL.ROI_HEADS.IN_FEATURES={roi_features} must be the same "
                "single name"
            )
        self.feature_name = roi_features[0]

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["shared_proposals"] = cfg.MODEL.FSOD.SHARED_PROPOSALS
        ret["per_class_reference"] = cfg.MODEL.FSOD.PER_CLASS_REFERENCE
        ret["fold_bn"] = cfg.MODEL.FSOD.FOLD_FROZEN_BN
        ret["channels_last"] = cfg.MODEL.FSOD.CHANNELS_LAST
        return ret

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        version = local_metadata.get("version")
        if version is None or version < 2:  # the base classifier moved into the ROI heads
            old = prefix + "base_classifier."
            for key in [k for k in state_dict if k.startswith(old)]:
                state_dict[f"{prefix}roi_heads.{key[len(prefix) :]}"] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)

    # ------------------------------------------------------------------ supports
    def _normalize(self, images: Tensor) -> Tensor:
        """uint8 images -> normalized float on the device (converted after the copy)."""
        images = (to_device(images, self.device).float() - self.pixel_mean) / self.pixel_std
        return self._layout(images)

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """detectron2's preprocessing (normalise, pad to a common size by the backbone's
        padding rules) with the sizes computed in Python: ``ImageList.from_tensors`` puts them
        in a tensor and reads them back (host syncs), and ``torch.export`` could then not keep
        an image's height and width symbolic (the exported detector pads as the model does)."""
        images = [
            (self._move_to_current_device(x["image"]) - self.pixel_mean) / self.pixel_std
            for x in batched_inputs
        ]
        sizes = [(im.shape[-2], im.shape[-1]) for im in images]
        constraints = self.backbone.padding_constraints or {}
        stride = constraints.get("size_divisibility", self.backbone.size_divisibility)
        square = constraints.get("square_size", 0)
        if square > 0:
            ph = pw = square
        else:
            ph, pw = max(h for h, _ in sizes), max(w for _, w in sizes)
        if stride > 1:
            ph, pw = (ph + stride - 1) // stride * stride, (pw + stride - 1) // stride * stride
        padded = [F.pad(im, [0, pw - w, 0, ph - h]) for im, (h, w) in zip(images, sizes)]
        return ImageList(torch.stack(padded), sizes)

    def _move_to_current_device(self, x: Tensor) -> Tensor:
        return to_device(x, self.device)

    def _layout(self, x: Tensor) -> Tensor:
        """Backbone input in the model's memory format (MODEL.FSOD.CHANNELS_LAST); loader
        images arrive as channels-last views of HWC arrays and are laid out here, on the
        device."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

    def encode_supports(self, images: Tensor, boxes: Tensor) -> Tuple[Tensor, Tensor]:
        """Raw support crops (S, 3, H, W) and boxes (S, 4) -> per-shot RPN kernels (S, C) and
        ROI features (S, C5, h, w)."""
        features = self.backbone(self._normalize(images))[self.feature_name]
        pooled = self.roi_heads.pool_supports(features, to_device(boxes, self.device).float())
        kernels = self.proposal_generator.support_kernels(pooled)
        return kernels, self.roi_heads.support_prototypes(pooled)

    @torch.no_grad()
    def compute_prototypes(
        self,
        support_images: Tensor,
        support_boxes: Tensor,
        class_ids: Sequence[int],
        class_names: Optional[Sequence[str]] = None,
        *,
        batch_size: int = 32,
        weights_fp: Optional[str] = None,
    ) -> PrototypeSet:
        """Prototypes of a support set, once: K shots per class, class-major.

        Args:
            support_images: (C*K, 3, S, S) crops in the model's input format.
            support_boxes: (C*K, 4) object boxes in crop coordinates (XYXY).
            class_ids: C contiguous dataset class ids (the detections' ``pred_classes``).
            class_names: optional C names, stored with the prototypes.
            batch_size: crops per backbone pass.
            weights_fp: :func:`weights_fingerprint` of this model if already computed (it hashes
                every weight: compute it once when calling this once per class).
        """
        class_ids = torch.as_tensor(list(class_ids), dtype=torch.long)
        num_classes = len(class_ids)
        if num_classes == 0 or len(support_images) % num_classes:
            raise ValueError(
                f"{len(support_images)} support crops cannot be split into {num_classes} classes "
                "of K shots each (class-major order)"
            )
        shots = len(support_images) // num_classes
        was_training = self.training
        self.eval()
        try:
            parts = [
                self.encode_supports(
                    support_images[i : i + batch_size], support_boxes[i : i + batch_size]
                )
                for i in range(0, len(support_images), batch_size)
            ]
        finally:
            self.train(was_training)
        kernels = cat([p[0] for p in parts]).unflatten(0, (num_classes, shots)).mean(1)
        rois = cat([p[1] for p in parts]).unflatten(0, (num_classes, shots)).mean(1)
        return PrototypeSet(
            class_ids=class_ids,
            rpn_kernels=kernels,
            roi_prototypes=rois,
            class_names=list(class_names or []),
            weights_fingerprint=weights_fp or weights_fingerprint(self),
            support_fingerprint=support_fingerprint(
                support_images, support_boxes, class_ids, shots
            ),
        )

    def set_prototypes(self, prototypes: Optional[PrototypeSet]) -> None:
        """Use these class prototypes for inference (``None`` clears them)."""
        self.prototypes = None if prototypes is None else prototypes.to(self.device)

    def load_prototypes(self, path: str, support_fp: Optional[str] = None) -> PrototypeSet:
        """Load a prototype file, check it was made with these weights (and support set, if
        its fingerprint is given), and use it. Raises StalePrototypeError otherwise."""
        prototypes = PrototypeSet.load(
            path, weights_fingerprint=weights_fingerprint(self), support_fingerprint=support_fp
        )
        self.set_prototypes(prototypes)
        return prototypes

    # ------------------------------------------------------------------ training
    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(self._layout(images.tensor))
        kernels, shot_rois = self._episode_prototypes(batched_inputs)
        prototypes = shot_rois.mean(2)
        losses = {}
        if self.roi_heads.base_classifier_weight > 0:
            if self.roi_heads.base_classifier is None:
                raise ValueError(
                    "MODEL.FSOD.BASE_CLASSIFIER.WEIGHT > 0 needs the number of dataset classes: "
                    "set MODEL.FSOD.BASE_CLASSIFIER.NUM_CLASSES, or register DATASETS.TRAIN[0] "
                    "with thing_classes before building the model"
                )
            losses["loss_base_cls"] = self._base_class_loss(features, shot_rois, batched_inputs)
        # relabelled where the loader left them (host), then copied without blocking
        targets = [
            instances_to_device(_episode_targets(x["instances"], x["support_classes"]), self.device)
            for x in batched_inputs
        ]
        if not self.per_class_reference:
            return {**self._losses(images, features, kernels, prototypes, targets), **losses}
        num_classes = kernels.shape[1]
        per_class = [
            self._losses(
                images,
                features,
                kernels[:, n : n + 1],
                prototypes[:, n : n + 1],
                [_class_targets(t, n) for t in targets],
            )
            for n in range(num_classes)
        ]
        losses.update({k: sum(loss[k] for loss in per_class) / num_classes for k in per_class[0]})
        return losses

    def _episode_prototypes(self, batched_inputs: List[Dict]) -> Tuple[Tensor, Tensor]:
        """Encode all support crops of the batch in one pass: RPN kernels averaged over the K
        shots (B, N, C) and per-shot ROI features (B, N, K, C5, h, w)."""
        num_classes = {x["support_classes"].numel() for x in batched_inputs}
        num_shots = {len(x["support_images"]) for x in batched_inputs}
        if len(num_classes) != 1 or len(num_shots) != 1:
            raise ValueError(
                "All episodes of a batch need the same N-way and K-shot; got N in "
                f"{sorted(num_classes)} and N*K in {sorted(num_shots)}"
            )
        num_classes = num_classes.pop()
        num_shots = num_shots.pop() // num_classes
        kernels, rois = self.encode_supports(
            cat([x["support_images"] for x in batched_inputs]),
            cat([x["support_boxes"] for x in batched_inputs]),
        )
        shape = (len(batched_inputs), num_classes, num_shots)
        return kernels.unflatten(0, shape).mean(2), rois.unflatten(0, shape)

    def _base_class_loss(
        self, features: Dict[str, Tensor], shot_rois: Tensor, batched_inputs: List[Dict]
    ) -> Tensor:
        """The ROI heads' base-class loss over every support crop (its episode class) and every
        ground-truth box of the queries (the episode's classes: the mapper keeps only those),
        labelled with dataset class ids."""
        num_classes = self.roi_heads.base_classifier.out_features
        ids = [x["support_classes"] for x in batched_inputs]
        ids += [x["instances"].gt_classes for x in batched_inputs]
        top = max(int(t.max()) for t in ids if t.numel())  # loader's CPU tensors: no device sync
        if top >= num_classes:
            raise ValueError(
                f"class id {top} in the training data, but the base classifier has "
                f"{num_classes} classes: set MODEL.FSOD.BASE_CLASSIFIER.NUM_CLASSES to the "
                "dataset's number of classes (or 0: from DATASETS.TRAIN[0]'s thing_classes)"
            )
        shots = shot_rois.shape[2]
        support_labels = cat(
            [x["support_classes"].to(self.device).repeat_interleave(shots) for x in batched_inputs]
        )
        gt = [x["instances"].to(self.device) for x in batched_inputs]
        return self.roi_heads.base_class_loss(features, shot_rois.flatten(0, 2), support_labels, gt)

    def _losses(
        self,
        images: ImageList,
        features: Dict[str, Tensor],
        kernels: Tensor,
        prototypes: Tensor,
        targets: List[Instances],
    ) -> Dict[str, Tensor]:
        num_classes = kernels.shape[1]
        proposals, rpn_losses = self.proposal_generator(
            images, features, kernels, targets, merge_classes=self.shared_proposals
        )
        if not self.shared_proposals:
            proposals = _group_by_image(proposals, num_classes)
        roi_losses = self.roi_heads(features, proposals, prototypes, targets)
        return {**rpn_losses, **roi_losses}

    # ------------------------------------------------------------------ inference
    def inference(
        self,
        batched_inputs: List[Dict],
        detected_instances: Optional[List[Instances]] = None,
        do_postprocess: bool = True,
    ):
        """Detect the prototypes' classes in a batch of query images."""
        if detected_instances is not None:
            raise ValueError("FsodRCNN.inference does not refine given detected_instances")
        if self.prototypes is None:
            raise RuntimeError(
                "FsodRCNN has no class prototypes: call model.set_prototypes("
                "model.compute_prototypes(...)) or model.load_prototypes(path) first "
                "(tools/predict.py and the evaluator do this)"
            )
        images = self.preprocess_image(batched_inputs)
        detections = self.detect_images(
            images, self.prototypes.rpn_kernels, self.prototypes.roi_prototypes
        )
        results = []
        for (boxes, scores, classes), size in zip(detections, images.image_sizes):
            r = Instances(size, pred_boxes=Boxes(boxes), scores=scores)
            r.pred_classes = self.prototypes.class_ids[classes]
            results.append(r)
        if do_postprocess:
            return GeneralizedRCNN._postprocess(results, batched_inputs, images.image_sizes)
        return results

    def detect_images(
        self, images: ImageList, rpn_kernels: Tensor, roi_prototypes: Tensor
    ) -> List[Tuple[Tensor, Tensor, Tensor]]:
        """The test path on tensors: preprocessed images and prototypes (C, ...) of C classes
        -> per image boxes (D, 4) in the images' pixels, scores (D,) and class indices (D,)
        in 0..C-1. :meth:`inference` and the exported detector
        (:mod:`fsod_d2.export`) both run it."""
        features = self.backbone(self._layout(images.tensor))
        num_images = len(images)
        kernels = rpn_kernels[None].expand(num_images, -1, -1)
        rois = roi_prototypes[None].expand(num_images, -1, -1, -1, -1)
        if self.per_class_reference:
            return self._detect_per_class(images, features, kernels, rois)
        return self._detect(images, features, kernels, rois)

    def _detect(self, images, features, kernels, rois) -> List[Tuple[Tensor, Tensor, Tensor]]:
        num_classes = kernels.shape[1]
        proposals, _ = self.proposal_generator(
            images, features, kernels, merge_classes=self.shared_proposals
        )
        if not self.shared_proposals:
            proposals = _group_by_image(proposals, num_classes)
        return self.roi_heads(features, proposals, rois)

    def _detect_per_class(self, images, features, kernels, rois):
        """FewX-style reference: each class runs RPN, res5 and relation on its own."""
        per_class = [
            self._detect(images, features, kernels[:, n : n + 1], rois[:, n : n + 1])
            for n in range(kernels.shape[1])
        ]
        merged = []
        for per_image in zip(*per_class):
            boxes = cat([d[0] for d in per_image])
            scores = cat([d[1] for d in per_image])
            classes = cat([d[2] + n for n, d in enumerate(per_image)])
            order = scores.argsort(descending=True)[: self.roi_heads.test_detections_per_img]
            merged.append((boxes[order], scores[order], classes[order]))
        return merged


def _check_component(module, expected: type, key: str, default: str) -> None:
    if not isinstance(module, expected):
        raise TypeError(
            f"FsodRCNN needs a {expected.__name__} (or subclass); {key} builds a "
            f"{type(module).__name__}: set {key} to {default!r} or a subclass of it"
        )


def _episode_targets(instances: Instances, support_classes: Tensor) -> Instances:
    """Relabel the ground truth to episode indices 0..N-1; boxes of other classes get -1
    (ignored downstream). No boolean indexing: the box count stays a shape (no host sync)."""
    support_classes = support_classes.to(instances.gt_classes.device)
    match = instances.gt_classes[:, None] == support_classes[None, :]
    out = Instances(instances.image_size, gt_boxes=instances.gt_boxes)
    out.gt_classes = torch.where(match.any(dim=1), match.float().argmax(dim=1), -1)
    return out


def _class_targets(targets: Instances, n: int) -> Instances:
    """Ground truth of episode class n alone, relabelled 0 (one class's branch)."""
    out = targets[targets.gt_classes == n]
    out.gt_classes = torch.zeros_like(out.gt_classes)
    return out


def _group_by_image(proposals: List[Instances], num_classes: int) -> List[Instances]:
    """(image, class) proposal sets -> one set per image with a ``proposal_classes`` field."""
    grouped = []
    for i in range(0, len(proposals), num_classes):
        parts = proposals[i : i + num_classes]
        merged = Instances.cat(parts)
        merged.proposal_classes = cat(
            [
                torch.full((len(p),), n, dtype=torch.long, device=p.proposal_boxes.device)
                for n, p in enumerate(parts)
            ]
        )
        grouped.append(merged)
    return grouped


__all__ = ["FsodRCNN", "StalePrototypeError"]
