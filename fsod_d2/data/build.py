"""The episode stream and the episodic training data loader.

Episode ``g`` (a global counter) is a pure function of ``(FSOD.SEED, g)``, and
``g = (iteration * world_size + rank) * batch_per_rank + position_in_batch``:

* the query is position ``g mod n`` of a seeded permutation of the ``n`` query images, drawn
  anew each epoch ``g // n`` -- so every image is a query once per epoch and, within an
  epoch, all ranks and workers see different images;
* the mapper gets ``episode_seed = hash(FSOD.SEED, g, attempt)`` for classes, shots and
  augmentation; if the query cannot be used (unreadable image, no N-way episode), another
  query is drawn from a stream seeded by ``(FSOD.SEED, g, attempt)`` -- still deterministic.

Resuming: the loader returned by :func:`build_episodic_train_loader` has a ``start_iter``
attribute (default 0). Set it before the first batch is drawn, e.g. after
``DefaultTrainer.resume_or_load``::

    trainer.resume_or_load(resume=True)
    trainer.data_loader.start_iter = trainer.start_iter   # detectron2 creates the iterator
    trainer.train()                                       # lazily on the first step

and iteration ``i`` of the resumed run gets exactly the episodes of iteration ``i`` of the
uninterrupted run (same number of processes and IMS_PER_BATCH; aspect-ratio grouping, if
enabled, regroups across the resume point).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import (
    DatasetFromList,
    MetadataCatalog,
    build_batch_data_loader,
    get_detection_dataset_dicts,
)
from detectron2.utils import comm
from torch.utils.data import Dataset, Sampler

from ..utils.text import count
from .datasets import register_from_config
from .episodic_mapper import INFO_KEYS, EpisodicDatasetMapper
from .support_pool import SupportPool, shot_counts

logger = logging.getLogger(__name__)

__all__ = [
    "EpisodeDataset",
    "EpisodeSampler",
    "EpisodicTrainLoader",
    "build_episodic_train_loader",
    "episode_seed",
]

_MAX_TRIES = 32  # queries tried for one episode before giving up (the data is then broken)
_SUMMARY_PERIOD_S = 600.0  # seconds between bad-data summaries while training


def episode_seed(seed: int, g: int, attempt: int = 0) -> int:
    """The mapper seed of global episode ``g`` (64-bit, well mixed)."""
    state = np.random.SeedSequence([int(seed), int(g), int(attempt)]).generate_state(2)
    return int(state[0]) << 32 | int(state[1])


class EpisodeSampler(Sampler):
    """Infinite stream of this rank's global episode indices, from ``start_iter`` on.

    Iteration ``i`` yields ``(i * world_size + rank) * batch_size + p`` for ``p`` in
    ``range(batch_size)``. ``start_iter`` may be changed until the loader starts iterating.
    """

    def __init__(
        self,
        batch_size: int,
        *,
        start_iter: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        self.batch_size = int(batch_size)
        self.start_iter = int(start_iter)
        self.rank = comm.get_rank() if rank is None else int(rank)
        self.world_size = comm.get_world_size() if world_size is None else int(world_size)

    def __iter__(self) -> Iterator[int]:
        for it in itertools.count(self.start_iter):
            base = (it * self.world_size + self.rank) * self.batch_size
            yield from range(base, base + self.batch_size)


class EpisodeDataset(Dataset):
    """Map-style dataset over global episode indices: ``dataset[g]`` is episode ``g``.

    Args:
        dataset_dicts: query images (detectron2 dicts); wrapped in :class:`DatasetFromList`.
        mapper: callable(dict with ``episode_seed``) -> episode dict or None.
        seed: ``FSOD.SEED``.
    """

    def __init__(self, dataset_dicts: Sequence[dict], mapper: EpisodicDatasetMapper, seed: int):
        if seed < 0:
            raise ValueError(f"FSOD.SEED must be >= 0, got {seed}")
        if len(dataset_dicts) == 0:
            raise ValueError("no query image left for the episode stream")
        self.dicts = DatasetFromList(list(dataset_dicts), copy=False, serialize=True)
        self.mapper = mapper
        self.seed = int(seed)
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.dicts)

    def query_index(self, g: int) -> int:
        """Index of the query image of episode ``g`` (its first attempt)."""
        epoch, pos = divmod(int(g), len(self.dicts))
        if self._perm is None or self._perm[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = (epoch, rng.permutation(len(self.dicts)))
        return int(self._perm[1][pos])

    def __getitem__(self, g: int) -> dict[str, Any]:
        idx = self.query_index(g)
        for attempt in range(_MAX_TRIES):
            d = self.dicts[idx]
            # A file that failed before fails again: skip reading it (same outcome).
            if d["file_name"] not in self.mapper.bad_files:
                out = self.mapper(dict(d, episode_seed=episode_seed(self.seed, g, attempt)))
                if out is not None:
                    return out
            rng = np.random.default_rng([self.seed, int(g), attempt, 1])
            idx = int(rng.integers(len(self.dicts)))
        raise RuntimeError(
            f"No episode could be formed from {_MAX_TRIES} query images for episode {g}; "
            f"bad-data counts: {self.mapper.bad_data_summary()}"
        )


def _problems(summary: dict[str, int]) -> dict[str, int]:
    """The non-zero counters of a loader summary that are bad data (not ``INFO_KEYS``)."""
    return {k: v for k, v in summary.items() if k not in INFO_KEYS and v}


class EpisodicTrainLoader:
    """Iterable over lists of episode dicts (one list per iteration, this rank's share).

    Attributes:
        start_iter: iteration of the first batch; set it before iterating to resume.
        mapper: the :class:`EpisodicDatasetMapper` (its ``bad_data_summary()`` counts all
            workers).
    """

    def __init__(self, data_loader, sampler: EpisodeSampler, dataset: EpisodeDataset):
        self.data_loader = data_loader
        self.sampler = sampler
        self.dataset = dataset
        self.mapper = dataset.mapper

    @property
    def start_iter(self) -> int:
        return self.sampler.start_iter

    @start_iter.setter
    def start_iter(self, value: int) -> None:
        self.sampler.start_iter = int(value)

    @property
    def batch_size(self) -> int:
        """Episodes per iteration on this rank."""
        return self.sampler.batch_size

    def bad_data_summary(self) -> dict[str, int]:
        """Counts so far (all workers): episodes built, queries skipped because their image was
        unreadable (each worker skips a bad file once, then avoids it), queries for which no
        N-way episode exists, and classes that took supports from their query image
        (``FSOD.SUPPORT.QUERY_FALLBACK``)."""
        return self.mapper.bad_data_summary()

    def log_bad_data_summary(self, final: bool = False) -> None:
        s = self.bad_data_summary()
        bad = _problems(s)
        level = logging.WARNING if bad else logging.INFO
        logger.log(
            level,
            "Episode data%s: %d episodes built%s; bad data: %s",
            " (final)" if final else "",
            s["episodes"],
            f" ({count(s['query_supports'], 'class')} took supports from the query image)"
            if s.get("query_supports")
            else "",
            ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in bad.items()) or "none",
        )

    def __iter__(self) -> Iterator[list[dict]]:
        last_log, last_bad = time.perf_counter(), None
        try:
            for batch in self.data_loader:
                yield batch
                now = time.perf_counter()
                if now - last_log > _SUMMARY_PERIOD_S:
                    bad = _problems(self.bad_data_summary())
                    if bad != last_bad:  # only when something new went wrong
                        self.log_bad_data_summary()
                        last_bad = bad
                    last_log = now
        finally:
            self.log_bad_data_summary(final=True)


def check_training_shots(cfg: CfgNode, names: Sequence[str], dicts: Sequence[dict]) -> None:
    """With ``FSOD.STRICT_SHOTS`` (no sampling with replacement), refuse ``FSOD.K_SHOT`` above
    the support crops of a class outside its richest image (the shots some query of the class
    can get) from the annotations, before the support cache is built."""
    if not cfg.FSOD.STRICT_SHOTS:
        return
    k = cfg.FSOD.K_SHOT
    counts = shot_counts(dicts, cfg.FSOD.SUPPORT.MIN_BOX_SIZE)
    # with QUERY_FALLBACK a class whose boxes are all in one image takes them from that query
    fallback = cfg.FSOD.SUPPORT.QUERY_FALLBACK
    avail = {c: outside or (total if fallback else 0) for c, (total, outside) in counts.items()}
    short = {c: n for c, n in avail.items() if n < k}
    if short:
        classes = MetadataCatalog.get(names[0]).thing_classes
        desc = [(classes[c], n) for c, n in sorted(short.items())]
        raise ValueError(
            f"FSOD.K_SHOT={k} but {count(len(desc), 'class')} of DATASETS.TRAIN {list(names)} "
            f"{'has' if len(desc) == 1 else 'have'} fewer support boxes outside their query "
            f"image: {desc[:10]}, and FSOD.STRICT_SHOTS is True "
            f"(no sampling with replacement). Lower FSOD.K_SHOT (the fewest is "
            f"{min(short.values())}), annotate more instances of these classes, or set "
            "FSOD.STRICT_SHOTS False (they are then sampled with replacement)."
        )


def build_episodic_train_loader(
    cfg: CfgNode,
    dataset_name_or_names: str | Sequence[str] | None = None,
    *,
    mapper: EpisodicDatasetMapper | None = None,
) -> EpisodicTrainLoader:
    """The episodic training loader: ``cfg.SOLVER.IMS_PER_BATCH`` episodes per iteration in
    total, split across ranks, ``cfg.DATALOADER.NUM_WORKERS`` workers per rank.

    Registers ``cfg.FSOD.REGISTER`` datasets, loads the dataset dicts once (empty images
    filtered as ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` says), builds the support pool (cached;
    collective when distributed) and drops query images the pool found unreadable.
    See the module docstring for determinism and resuming (``loader.start_iter``).
    """
    register_from_config(cfg)
    names = dataset_name_or_names or cfg.DATASETS.TRAIN
    names = [names] if isinstance(names, str) else list(names)
    dicts = get_detection_dataset_dicts(names, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
    if mapper is None:
        check_training_shots(cfg, names, dicts)
        pool = SupportPool.from_config(cfg, names, dataset_dicts=dicts)
        mapper = EpisodicDatasetMapper(cfg, is_train=True, support_pool=pool)
    bad = set(mapper.pool.bad_images)
    if bad:
        dicts = [d for d in dicts if d["file_name"] not in bad]
        logger.warning(
            "%d unreadable images (found while building the support pool) are not used as queries",
            len(bad),
        )
    dataset = EpisodeDataset(dicts, mapper, cfg.FSOD.SEED)
    world = comm.get_world_size()
    total = cfg.SOLVER.IMS_PER_BATCH
    if total % world:
        raise ValueError(f"SOLVER.IMS_PER_BATCH={total} is not divisible by {world} processes")
    sampler = EpisodeSampler(total // world)
    data_loader = build_batch_data_loader(
        dataset,
        sampler,
        total,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        # page-locked batches: the model copies them to the GPU without blocking
        pin_memory=torch.cuda.is_available() and cfg.MODEL.DEVICE.startswith("cuda"),
    )
    return EpisodicTrainLoader(data_loader, sampler, dataset)
