"""Data: few-shot datasets, splits, support pool, episodic mapper, toy data."""

from . import datasets  # noqa: F401  (registers the builtin few-shot datasets)
from .build import (
    EpisodeDataset,
    EpisodeSampler,
    EpisodicTrainLoader,
    build_episodic_train_loader,
    episode_seed,
)
from .datasets import (
    register_fewshot_coco,
    register_fewshot_voc,
    register_from_config,
    subset_class_ids,
)
from .episodic_mapper import EpisodicDatasetMapper
from .sampling import SUPPORT_SAMPLER_REGISTRY, SupportSampler, build_support_set
from .support_folder import SupportFolderError, load_support_folder
from .support_pool import SupportPool, crop_support

__all__ = [
    "EpisodeDataset",
    "EpisodeSampler",
    "EpisodicDatasetMapper",
    "EpisodicTrainLoader",
    "SUPPORT_SAMPLER_REGISTRY",
    "SupportFolderError",
    "SupportPool",
    "SupportSampler",
    "build_episodic_train_loader",
    "build_support_set",
    "crop_support",
    "episode_seed",
    "load_support_folder",
    "register_fewshot_coco",
    "register_fewshot_voc",
    "register_from_config",
    "subset_class_ids",
]
