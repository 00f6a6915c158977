"""fsod-d2: few-shot object detection for Detectron2.

Importing this package registers every component (meta-architecture, proposal generator,
ROI heads, backbone, datasets) with detectron2's registries.
"""

try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised by tests with detectron2 hidden
    raise ImportError(
        "fsod_d2 needs detectron2, which is not on PyPI. Install it with `make install` from the "
        "fsod-d2 checkout (builds it from https://github.com/facebookresearch/detectron2), or "
        "`pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'`"
        " (set DETECTRON2_SRC=/path/to/clone for a local copy). Original error: " + str(e)
    ) from e

# before detectron2's modeling code: its dependencies warn at import about things users cannot
# change (fsod_d2/utils/known_warnings.py lists each message)
from .utils.known_warnings import silence_known_warnings  # noqa: E402

silence_known_warnings()

# evaluation is imported where used: detectron2.evaluation needs the compiled detectron2._C,
# while the model and data (everything that registers) run on detectron2's Python sources alone.
from . import data, modeling  # noqa: F401,E402  (registers components)
from .config import add_fsod_config, setup_cfg  # noqa: E402

__all__ = ["add_fsod_config", "setup_cfg"]
__version__ = "0.1.0"
