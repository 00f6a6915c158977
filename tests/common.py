"""Shared test helpers: tiny CPU configs and synthetic inputs (from :mod:`fsod_datagen.synthetic`,
which the benchmarks use too)."""

from fsod_datagen.synthetic import (  # noqa: F401
    CONFIG_DIR,
    REPO_ROOT,
    SHAPE_COLORS,
    TINY_CONFIG,
    draw_shape,
    get_tiny_cfg,
    make_coco_dataset,
    synthetic_episode,
    synthetic_query,
    synthetic_supports,
)
