"""EpisodicDatasetMapper: one query image + N-way K-shot supports, deterministic per episode."""

from __future__ import annotations

import contextlib
import copy
import logging
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .support_pool import SupportPool, convert_bgr

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

    Episode classes: up to ``max_positive_classes`` classes present in the query (that have
    supports outside it), the rest of the N classes absent from the query (negatives; a class
    with any annotation in the query, crowd included, is never a negative); if too few classes
    are absent, more present classes fill the episode. The order is shuffled. Supports never
    come from the query image, except with ``query_fallback`` for a class whose only crops are
    in the query (counted as ``query_supports``). Everything (classes, shots, augmentation) is
    a function of ``episode_seed``.

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
        support_pool: SupportPool,
        n_way: int,
        k_shot: int,
        max_positive_classes: int,
        episode_classes: Sequence[int] | None = None,
        query_fallback: bool = False,
    ):
        """
        Args:
            is_train: training mode (only affects the log line; augmentations are given).
            augmentations: detectron2 augmentations applied to the query.
            image_format: INPUT.FORMAT ("BGR" or "RGB") of query and supports.
            support_pool: where the support crops come from.
            n_way, k_shot: classes per episode and supports per class.
            max_positive_classes: at most this many episode classes are present in the query.
            episode_classes: contiguous ids that may appear in episodes (default: every class
                with a support crop in the pool).
            query_fallback: a class present in the query whose crops all come from the query
                image takes its supports from there (a 1-shot set has each class in one image;
                without this, fine-tuning on it never sees a positive pair).
        """
        if n_way < 1 or k_shot < 1 or max_positive_classes < 0:
            raise ValueError(
                f"need FSOD.N_WAY >= 1, FSOD.K_SHOT >= 1, FSOD.MAX_POSITIVE_CLASSES >= 0; "
                f"got {n_way}, {k_shot}, {max_positive_classes}"
            )
        convert_bgr(np.zeros((1, 1, 3), np.uint8), image_format)  # validates the format
        pool_classes = set(support_pool.class_ids)
        if episode_classes is None:
            classes = sorted(pool_classes)
        else:
            classes = sorted(int(c) for c in episode_classes)
            without = [c for c in classes if c not in pool_classes]
            if without:
                raise ValueError(f"episode classes {without} have no support crop in the pool")
        if n_way > len(classes):
            raise ValueError(
                f"FSOD.N_WAY={n_way} is larger than the {len(classes)} classes with support "
                f"crops in {list(support_pool.dataset_names)}; lower N_WAY (or MIN_BOX_SIZE)."
            )
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.pool = support_pool
        self.n_way, self.k_shot = int(n_way), int(k_shot)
        self.max_positive_classes = int(max_positive_classes)
        self.query_fallback = bool(query_fallback)
        self.episode_classes = np.asarray(classes, dtype=np.int64)
        self._episode_set = set(classes)
        support_pool.check_shots(self.k_shot, classes)
        self.stats = torch.zeros(len(BAD_DATA_KEYS), dtype=torch.int64).share_memory_()
        self.bad_files: set[str] = set()  # per process: images known to be unreadable
        logger.info(
            "[EpisodicDatasetMapper] %s: %d-way %d-shot (<= %d positive) over %d classes; "
            "augmentations %s",
            "train" if is_train else "test",
            self.n_way,
            self.k_shot,
            self.max_positive_classes,
            len(classes),
            augmentations,
        )

    @classmethod
    def from_config(
        cls,
        cfg: CfgNode,
        is_train: bool = True,
        *,
        support_pool: SupportPool | None = None,
        dataset_names: str | Sequence[str] | None = None,
    ) -> dict[str, Any]:
        if support_pool is None:
            names = dataset_names or (cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST)
            support_pool = SupportPool.from_config(cfg, names)
        return {
            "is_train": is_train,
            "augmentations": utils.build_augmentation(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "support_pool": support_pool,
            "n_way": cfg.FSOD.N_WAY,
            "k_shot": cfg.FSOD.K_SHOT,
            "max_positive_classes": cfg.FSOD.MAX_POSITIVE_CLASSES,
            "query_fallback": cfg.FSOD.SUPPORT.QUERY_FALLBACK,
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

    def _excluded_image(self, class_id: int, image_id: Any) -> Any:
        """The image whose crops ``class_id``'s supports avoid: the query, or None (any image)
        with ``query_fallback`` when the class has no crop elsewhere."""
        if self.query_fallback and len(self.pool.available(class_id, image_id)) == 0:
            return None
        return image_id

    def choose_classes(
        self, annotations: Sequence[dict], image_id: Any, rng: np.random.Generator
    ) -> tuple[np.ndarray, int] | None:
        """The episode's N classes (shuffled) and how many are positives; None if impossible."""
        present_any = {int(a["category_id"]) for a in annotations}
        present = {int(a["category_id"]) for a in annotations if not a.get("iscrowd", 0)}
        pos_cands = [
            c
            for c in sorted(present & self._episode_set)
            if len(self.pool.available(c, self._excluded_image(c, image_id))) > 0
        ]
        neg_mask = ~np.isin(self.episode_classes, list(present_any))
        neg_cands = self.episode_classes[neg_mask]
        n_pos = min(self.max_positive_classes, len(pos_cands), self.n_way)
        if self.n_way - n_pos > len(neg_cands):  # too few absent classes: more positives
            n_pos = self.n_way - len(neg_cands)
            if n_pos > len(pos_cands):
                return None
        pos = rng.choice(np.asarray(pos_cands, dtype=np.int64), size=n_pos, replace=False)
        neg = rng.choice(neg_cands, size=self.n_way - n_pos, replace=False)
        return rng.permutation(np.concatenate([pos, neg]).astype(np.int64)), n_pos

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
        except Exception as e:  # missing, truncated, not an image, wrong size: skip, count
            self._bad_image(file_name, e)
            return None

        annotations = d.pop("annotations", [])
        chosen = self.choose_classes(annotations, d["image_id"], rng)
        if chosen is None:
            n = self._count("unformable_episodes")
            if n <= _LOG_FIRST_BAD or n % _LOG_EVERY_BAD == 0:
                logger.warning(
                    "No %d-way episode possible for %s (too many classes present); %d so far",
                    self.n_way,
                    file_name,
                    n,
                )
            return None
        classes, _ = chosen
        crops, boxes = [], []
        for c in classes:
            exclude = self._excluded_image(int(c), d["image_id"])
            if exclude is None:
                self._count("query_supports")
            idx = self.pool.sample_k_shot(int(c), self.k_shot, rng, exclude_image_id=exclude)
            imgs, bxs = self.pool.load_many(idx)
            crops.append(imgs)
            boxes.append(bxs)
        supports = convert_bgr(np.concatenate(crops), self.image_format)

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
            "support_boxes": torch.from_numpy(np.concatenate(boxes).astype(np.float32)),
            "support_classes": torch.as_tensor(classes, dtype=torch.long),
        }
