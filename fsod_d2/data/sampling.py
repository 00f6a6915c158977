"""Support sampling policy: which classes an episode gets and which support crops it shows.

One object decides everything about *what* is sampled; :class:`~.support_pool.SupportPool` only
stores and loads crops. The policy answers:

* :meth:`SupportSampler.choose_classes`: an episode's N classes for a query (present and absent);
* :meth:`SupportSampler.excluded_image`: which image a class's supports must avoid (the query),
  and the fallback when the class has no crop elsewhere;
* :meth:`SupportSampler.sample_k_shot`: the K crops of a class (training episodes);
* :meth:`SupportSampler.evaluation_shots`: the seeded K-shot support set of an evaluation.

A new rule is a subclass registered in :data:`SUPPORT_SAMPLER_REGISTRY`, chosen with
``FSOD.SUPPORT.SAMPLER``; the mapper and :func:`~.support_pool.build_support_set` call only
these methods.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.utils.registry import Registry

from ..utils.text import count
from .support_pool import SupportPool, convert_bgr

logger = logging.getLogger(__name__)

__all__ = [
    "SUPPORT_SAMPLER_REGISTRY",
    "SupportSampler",
    "build_support_sampler",
    "build_support_set",
]

SUPPORT_SAMPLER_REGISTRY = Registry("FSOD_SUPPORT_SAMPLER")
SUPPORT_SAMPLER_REGISTRY.__doc__ = """
Support sampling policies (``FSOD.SUPPORT.SAMPLER``). A registered class is built as
``cls.from_config(cfg, pool)`` and must be a :class:`SupportSampler`.
"""


@SUPPORT_SAMPLER_REGISTRY.register()
class SupportSampler:
    """The default policy (Fan et al. / FewX episodes, TFA-style evaluation draws).

    Episode classes: up to ``max_positive_classes`` classes present in the query (that have
    supports outside it), the rest of the N classes absent from the query (negatives; a class
    with any annotation in the query, crowd included, is never a negative); if too few classes
    are absent, more present classes fill the episode. The order is shuffled. Supports never
    come from the query image, except with ``query_fallback`` for a class whose only crops are
    in the query. K crops are drawn without replacement when possible, else with replacement
    (one warning per class; an error with ``strict_shots``).

    Args:
        pool: the support crops.
        n_way, k_shot: classes per episode and supports per class (``FSOD.N_WAY``,
            ``FSOD.K_SHOT``).
        max_positive_classes: ``FSOD.MAX_POSITIVE_CLASSES``.
        query_fallback: ``FSOD.SUPPORT.QUERY_FALLBACK``.
        strict_shots: ``FSOD.STRICT_SHOTS``.
    """

    def __init__(
        self,
        pool: SupportPool,
        *,
        n_way: int,
        k_shot: int,
        max_positive_classes: int,
        query_fallback: bool = False,
        strict_shots: bool = False,
    ):
        if n_way < 1 or k_shot < 1 or max_positive_classes < 0:
            raise ValueError(
                f"need FSOD.N_WAY >= 1, FSOD.K_SHOT >= 1, FSOD.MAX_POSITIVE_CLASSES >= 0; "
                f"got {n_way}, {k_shot}, {max_positive_classes}"
            )
        self.pool = pool
        self.n_way, self.k_shot = int(n_way), int(k_shot)
        self.max_positive_classes = int(max_positive_classes)
        self.query_fallback, self.strict_shots = bool(query_fallback), bool(strict_shots)
        self.classes = np.asarray(pool.class_ids, dtype=np.int64)
        self._class_set = set(pool.class_ids)
        self._warned: set[int] = set()

    @classmethod
    def from_config(cls, cfg: CfgNode, pool: SupportPool) -> SupportSampler:
        return cls(
            pool,
            n_way=cfg.FSOD.N_WAY,
            k_shot=cfg.FSOD.K_SHOT,
            max_positive_classes=cfg.FSOD.MAX_POSITIVE_CLASSES,
            query_fallback=cfg.FSOD.SUPPORT.QUERY_FALLBACK,
            strict_shots=cfg.FSOD.STRICT_SHOTS,
        )

    # ------------------------------------------------------------------ training episodes
    def check_episodes(self) -> None:
        """Fail early if no N-way episode can exist; warn about classes short of K crops."""
        if self.n_way > len(self.classes):
            raise ValueError(
                f"FSOD.N_WAY={self.n_way} is larger than the {len(self.classes)} classes with "
                f"support crops in {list(self.pool.dataset_names)}; lower N_WAY (or MIN_BOX_SIZE)."
            )
        self.check_shots(self.k_shot, self.classes.tolist())

    def excluded_image(self, class_id: int, image_id: Any) -> Any:
        """The image whose crops ``class_id``'s supports avoid: the query, or None (any image)
        with ``query_fallback`` when the class has no crop elsewhere."""
        if self.query_fallback and len(self.pool.available(class_id, image_id)) == 0:
            return None
        return image_id

    def choose_classes(
        self, annotations: Sequence[dict], image_id: Any, rng: np.random.Generator
    ) -> np.ndarray | None:
        """The episode's N classes (shuffled contiguous ids), or None if impossible."""
        present_any = {int(a["category_id"]) for a in annotations}
        present = {int(a["category_id"]) for a in annotations if not a.get("iscrowd", 0)}
        pos_cands = [
            c
            for c in sorted(present & self._class_set)
            if len(self.pool.available(c, self.excluded_image(c, image_id))) > 0
        ]
        neg_cands = self.classes[~np.isin(self.classes, list(present_any))]
        n_pos = min(self.max_positive_classes, len(pos_cands), self.n_way)
        if self.n_way - n_pos > len(neg_cands):  # too few absent classes: more positives
            n_pos = self.n_way - len(neg_cands)
            if n_pos > len(pos_cands):
                return None
        pos = rng.choice(np.asarray(pos_cands, dtype=np.int64), size=n_pos, replace=False)
        neg = rng.choice(neg_cands, size=self.n_way - n_pos, replace=False)
        return rng.permutation(np.concatenate([pos, neg]).astype(np.int64))

    def sample_k_shot(
        self, class_id: int, k: int, rng: np.random.Generator, exclude_image_id: Any = None
    ) -> np.ndarray:
        """Pool indices of ``k`` crops of ``class_id`` not from ``exclude_image_id``.

        Without replacement when possible; otherwise with replacement and one warning per
        class (``ValueError`` if ``strict_shots``). ``ValueError`` if no crop is available.
        """
        avail = self.pool.available(class_id, exclude_image_id)
        if len(avail) >= k:
            return avail[rng.choice(len(avail), size=k, replace=False)]
        names = self.pool.thing_classes
        name = names[int(class_id)] if class_id < len(names) else ""
        if len(avail) == 0:
            raise ValueError(
                f"no support crop of class {class_id} '{name}' outside image {exclude_image_id}"
            )
        if self.strict_shots:
            raise ValueError(
                f"FSOD.STRICT_SHOTS: class {class_id} '{name}' has {len(avail)} < K={k} crops"
            )
        if int(class_id) not in self._warned:
            self._warned.add(int(class_id))
            logger.warning(
                "Class %d '%s' has %d < K=%d support crops; sampling with replacement.",
                class_id,
                name,
                len(avail),
                k,
            )
        return avail[rng.choice(len(avail), size=k, replace=True)]

    # ------------------------------------------------------------------ evaluation
    def evaluation_shots(self, class_ids: Sequence[int], k: int, seed: int) -> np.ndarray:
        """Pool indices of the seeded K-shot evaluation set, class-major (C*K,). Each class
        draws from its own stream ``(seed, class id)``, so its shots do not depend on which
        other classes are included."""
        missing = [c for c in class_ids if self.pool.num_instances(c) == 0]
        if missing:
            raise ValueError(
                f"classes {missing} have no support crop in {list(self.pool.dataset_names)}"
            )
        self.check_shots(k, class_ids, for_queries=False)
        draws = [self.sample_k_shot(c, k, np.random.default_rng([int(seed), c])) for c in class_ids]
        return np.concatenate(draws) if draws else np.zeros(0, dtype=np.int64)

    # ------------------------------------------------------------------ checks
    def check_shots(
        self, k: int, class_ids: Sequence[int] | None = None, *, for_queries: bool = True
    ) -> None:
        """Warn once per class (error if strict) that may have fewer than ``k`` crops: for some
        training query (``for_queries``: all crops minus those of the class's richest image),
        or at all (evaluation support sets, which exclude no image)."""
        pool = self.pool
        short = []
        for c in pool.class_ids if class_ids is None else class_ids:
            avail = pool.min_available(c) if for_queries else pool.num_instances(c)
            if for_queries and avail == 0 and self.query_fallback:
                avail = pool.num_instances(c)  # all in one image: that query takes them all
            if avail < k:
                short.append((int(c), pool.num_instances(c), avail))
        if not short:
            return
        desc = ", ".join(f"'{pool.thing_classes[c]}' ({n} crops, {a})" for c, n, a in short)
        if self.strict_shots:
            raise ValueError(
                f"FSOD.STRICT_SHOTS: fewer than K={k} support crops available for: {desc} "
                "(crops, crops outside the class's richest image)."
            )
        self._warned.update(c for c, _, _ in short)
        logger.warning(
            "Fewer than K=%d support crops for %s; they are sampled with replacement: %s",
            k,
            count(len(short), "class"),
            desc,
        )


def build_support_sampler(cfg: CfgNode, pool: SupportPool) -> SupportSampler:
    """The ``FSOD.SUPPORT.SAMPLER`` policy over ``pool``."""
    name = cfg.FSOD.SUPPORT.SAMPLER
    sampler = SUPPORT_SAMPLER_REGISTRY.get(name).from_config(cfg, pool)
    if not isinstance(sampler, SupportSampler):
        raise TypeError(f"FSOD.SUPPORT.SAMPLER={name!r} must build a SupportSampler (subclass)")
    return sampler


def build_support_set(
    cfg: CfgNode,
    dataset_name: str,
    k: int,
    seed: int,
    *,
    class_ids: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """The seeded K-shot evaluation support set of a registered dataset
    (:meth:`SupportSampler.evaluation_shots` of the ``FSOD.SUPPORT.SAMPLER`` policy).

    Collective when distributed (builds the pool).

    Args:
        cfg: provides ``FSOD.SUPPORT`` and ``INPUT.FORMAT``.
        dataset_name: registered dataset whose annotations provide the supports.
        k: shots per class.
        seed: the draw's seed.
        class_ids: contiguous class ids (default: every class with a support in the dataset).

    Returns:
        ``(images, boxes, class_ids, class_names)``: uint8 ``(C*K, 3, S, S)`` in
        ``cfg.INPUT.FORMAT`` channel order, float32 ``(C*K, 4)`` XYXY crop boxes, long ``(C,)``
        contiguous ids, and their names; class-major (the K shots of class 0 first).
    """
    pool = SupportPool.from_config(cfg, dataset_name)
    classes = pool.class_ids if class_ids is None else [int(c) for c in class_ids]
    if not classes:
        raise ValueError(f"dataset '{dataset_name}' has no usable support annotation")
    indices = build_support_sampler(cfg, pool).evaluation_shots(classes, k, seed)
    crops, boxes = pool.load_many(indices)
    images = convert_bgr(crops, cfg.INPUT.FORMAT)
    images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    names = [pool.thing_classes[c] for c in classes]
    logger.info(
        "Support set of '%s': %s x %s (seed %d)",
        dataset_name,
        count(len(classes), "class"),
        count(k, "shot"),
        seed,
    )
    return images, torch.from_numpy(boxes), torch.tensor(classes, dtype=torch.long), names
