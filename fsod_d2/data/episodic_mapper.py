"""EpisodicDatasetMapper: one query image + N-way K-shot supports, deterministic per episode."""

from __future__ import annotations

import contextlib
import copy
import logging
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .sampling import SupportSampler, build_support_sampler
from .support_pool import IMAGE_READ_ERRORS, SupportPool, convert_bgr

logger = logging.getLogger(__name__)

__all__ = ["EpisodicDatasetMapper", "BAD_DATA_KEYS", "INFO_KEYS"]

# Counters shared by the mapper copies in all data-loader workers (shared memory).
BAD_DATA_KEYS = ("episodes", "unreadable_image_skips", "unformable_episodes", "query_supports")
# the counters above that are not problems: episodes built, supports taken from the query
INFO_KEYS = ("episodes", "query_supports")
_LOG_FIRST_BAD = 10  # bad images logged one by one per process; then every _LOG_EVERY_BAD-th
_LOG_EVERY_BAD = 100


@contextlib.contextmanager
def _seeded_global_rngs(seed: int) -> Iterator[None]:
    """Run detectron2 augmentations (which draw from numpy's/python's global RNG) seeded,
    then restore the global state so nothing else is affected."""
    np_state, py_state = np.random.get_state(), random.getstate()
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


class EpisodicDatasetMapper:
    """Map a dataset dict with an ``"episode_seed"`` to one N-way K-shot training episode.

    Output (what :class:`FsodRCNN` consumes)::

        image            uint8 (3, H, W) in INPUT.FORMAT after the augmentations
        height, width    original image size;  image_id, file_name
        instances        Instances(gt_boxes, gt_classes): boxes of the episode's classes only,
                         contiguous dataset ids
        support_images   uint8 (N*K, 3, S, S), same channel order as image, class-major
        support_boxes    float32 (N*K, 4) XYXY in support-crop pixels
        support_classes  long (N,) contiguous ids of the episode classes, in support order

    Which classes and crops an episode gets is the sampling policy's decision
    (:class:`~.sampling.SupportSampler`, ``FSOD.SUPPORT.SAMPLER``): by default positives present
    in the query and negatives absent from it, supports from other images. Supports taken from
    the query image (``FSOD.SUPPORT.QUERY_FALLBACK``) are counted as ``query_supports``.
    Everything (classes, shots, augmentation) is a function of ``episode_seed``.

    A missing/unreadable image, or a query for which no N-way episode exists, returns ``None``
    (counted; the episode stream then draws another query deterministically).
    """

    @configurable
    def __init__(
        self,
        *,
        is_train: bool,
        augmentations: list[T.Augmentation | T.Transform],
        image_format: str,
        sampler: SupportSampler,
    ):
        """
        Args:
            is_train: training mode (only affects the log line; augmentations are given).
            augmentations: detectron2 augmentations applied to the query.
            image_format: INPUT.FORMAT ("BGR" or "RGB") of query and supports.
            sampler: the support sampling policy; ``sampler.pool`` holds the crops.
        """
        convert_bgr(np.zeros((1, 1, 3), np.uint8), image_format)  # validates the format
        sampler.check_episodes()
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.sampler = sampler
        self.pool = sampler.pool
        self.stats = torch.zeros(len(BAD_DATA_KEYS), dtype=torch.int64).share_memory_()
        self.bad_files: set[str] = set()  # per process: images known to be unreadable
        logger.info(
            "[EpisodicDatasetMapper] %s: %s %d-way %d-shot over %d classes; augmentations %s",
            "train" if is_train else "test",
            type(sampler).__name__,
            sampler.n_way,
            sampler.k_shot,
            len(sampler.classes),
            augmentations,
        )

    @classmethod
    def from_config(
        cls, cfg: CfgNode, is_train: bool = True, *, support_pool: SupportPool
    ) -> dict[str, Any]:
        """``support_pool``: the crops of the training datasets (see
        :func:`~.build.build_episodic_train_loader`)."""
        return {
            "is_train": is_train,
            "augmentations": utils.build_augmentation(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "sampler": build_support_sampler(cfg, support_pool),
        }

    # ---------------------------------------------------------------------------- helpers
    def bad_data_summary(self) -> dict[str, int]:
        """Counts over all processes sharing this mapper: episodes, unreadable images, ..."""
        return dict(zip(BAD_DATA_KEYS, self.stats.tolist()))

    def _count(self, key: str) -> int:
        i = BAD_DATA_KEYS.index(key)
        self.stats[i] += 1
        return int(self.stats[i])

    def _bad_image(self, file_name: str, error: Exception) -> None:
        self.bad_files.add(file_name)
        n = self._count("unreadable_image_skips")
        if len(self.bad_files) <= _LOG_FIRST_BAD or n % _LOG_EVERY_BAD == 0:
            logger.warning(
                "Skipping unreadable image %s (%s: %s); %d skips so far (all workers)",
                file_name,
                type(error).__name__,
                error,
                n,
            )

    # ---------------------------------------------------------------------------- call
    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any] | None:
        """Build the episode of ``dataset_dict`` (needs ``"episode_seed"``); None to skip it."""
        d = copy.deepcopy(dataset_dict)  # the dataset's own dict stays untouched
        if "episode_seed" not in d:
            raise KeyError("EpisodicDatasetMapper needs an 'episode_seed' in the dataset dict")
        rng = np.random.default_rng(int(d.pop("episode_seed")))
        file_name = d["file_name"]
        try:
            image = utils.read_image(file_name, format=self.image_format)
            utils.check_image_size(d, image)
        except IMAGE_READ_ERRORS as e:  # missing, truncated, not an image, wrong size: skip
            self._bad_image(file_name, e)
            return None

        annotations = d.pop("annotations", [])
        classes = self.sampler.choose_classes(annotations, d["image_id"], rng)
        if classes is None:
            n = self._count("unformable_episodes")
            if n <= _LOG_FIRST_BAD or n % _LOG_EVERY_BAD == 0:
                logger.warning(
                    "No %d-way episode possible for %s (too many classes present); %d so far",
                    self.sampler.n_way,
                    file_name,
                    n,
                )
            return None
        indices = []
        for c in classes:
            exclude = self.sampler.excluded_image(int(c), d["image_id"])
            if exclude is None:
                self._count("query_supports")
            k = self.sampler.k_shot
            indices.append(self.sampler.sample_k_shot(int(c), k, rng, exclude_image_id=exclude))
        crops, boxes = self.pool.load_many(np.concatenate(indices))
        supports = convert_bgr(crops, self.image_format)

        aug_input = T.AugInput(image)
        with _seeded_global_rngs(int(rng.integers(2**31))):
            transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]
        episode = set(classes.tolist())
        annos = [
            utils.transform_instance_annotations(
                {k: a[k] for k in ("bbox", "bbox_mode", "category_id")}, transforms, image_shape
            )
            for a in annotations
            if not a.get("iscrowd", 0) and int(a["category_id"]) in episode
        ]
        instances = utils.filter_empty_instances(utils.annotations_to_instances(annos, image_shape))
        self._count("episodes")
        # CHW views of the HWC arrays (channels-last strides): no transposing copy on the
        # host; the model converts them on the device
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1),
            "height": d["height"],
            "width": d["width"],
            "image_id": d["image_id"],
            "file_name": file_name,
            "instances": instances,
            "support_images": torch.from_numpy(np.ascontiguousarray(supports)).permute(0, 3, 1, 2),
            "support_boxes": torch.from_numpy(boxes.astype(np.float32)),
            "support_classes": torch.as_tensor(classes, dtype=torch.long),
        }
