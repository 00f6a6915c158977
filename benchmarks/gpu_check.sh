#!/usr/bin/env bash
# GPU benchmark check for a machine with one GPU and python3 + torch (CUDA), where neither
# detectron2 nor fsod-d2 is installed and there may be no network. Under 8 minutes in all; the
# log, the JSONs and the PNGs go to $OUT (default benchmarks/results/gpu_check).
#
#   1. Prepare, once, on any machine with network (both folders are untracked):
#        DETECTRON2_SRC=/path/to/detectron2 bash benchmarks/gpu_check.sh --prepare
#      -> .whl/    wheels of detectron2's pure-Python dependencies that a bare torch image lacks
#                  (for Python $PYVER, default 3.12; the exact commands are below).
#      -> .d2src/  detectron2's Python sources (no compiled _C: the model does not need it).
#   2. Copy the repository with both folders to the GPU machine and run, from its root:
#        bash benchmarks/gpu_check.sh
#   3. CPU rehearsal of the same path (install, imports without detectron2._C, both benchmarks,
#      plots) on the tiny config, 1 step per case, about 3 minutes:
#        bash benchmarks/gpu_check.sh --dry-run
#      (WHEEL_DIR=... selects wheels built for this machine's Python, see --prepare / PYVER).
#
# What runs: benchmarks/train_throughput.py on R-50-C4, 5-way 3-shot, 384 px supports, query
# shorter side 600: fp32 vs AMP (fp16 + GradScaler), batched vs the per-class loop (same
# weights), FrozenBN folded vs not (batched_unfolded), early vs late RPN conditioning, 1 and 8
# episodes per step, then N/K/support-size sweeps while its time budget lasts; then
# benchmarks/inference_scaling.py --configs R50-C4, the plots and a summary table.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=${1:-run}
WHEEL_DIR=${WHEEL_DIR:-.whl}
D2SRC=${D2SRC:-.d2src}
PYVER=${PYVER:-3.12}
PY=${PYTHON:-python3}

# detectron2's run-time needs that a bare torch image lacks (numpy, opencv, pyyaml, tabulate,
# cloudpickle, matplotlib, pillow, portalocker, tqdm, psutil and scikit-image are expected).
# pycocotools: detectron2.structures imports pycocotools.mask. hydra-core is not needed.
BINARY_WHEELS=(termcolor==3.3.0 yacs==0.1.8 iopath==0.1.9 omegaconf==2.3.1 pycocotools==2.0.11)
SDIST_ONLY=(fvcore==0.1.5.post20221221 antlr4-python3-runtime==4.9.3)  # pure Python: built here

prepare() {
    mkdir -p "$WHEEL_DIR"
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version "$PYVER" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d "$WHEEL_DIR" "${BINARY_WHEELS[@]}"
    "$PY" -m pip wheel --no-deps --no-build-isolation -w "$WHEEL_DIR" "${SDIST_ONLY[@]}"
    local src=${DETECTRON2_SRC:-}
    if [ -z "$src" ]; then
        echo "DETECTRON2_SRC unset: $D2SRC not refreshed (set it to a detectron2 checkout)" >&2
    else
        rm -rf "$D2SRC" && mkdir -p "$D2SRC"
        cp -r "$src/detectron2" "$D2SRC/"
        find "$D2SRC" \( -name __pycache__ -o -name '*.so' \) -prune -exec rm -rf {} +
    fi
    ls "$WHEEL_DIR"
    du -sh "$WHEEL_DIR" "$D2SRC" 2>/dev/null || true
}

if [ "$MODE" = "--prepare" ]; then
    prepare
    exit 0
fi
if [ "$MODE" != "run" ] && [ "$MODE" != "--dry-run" ]; then
    echo "usage: $0 [--prepare | --dry-run]" >&2
    exit 2
fi

OUT=${OUT:-$ROOT/benchmarks/results/gpu_check}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
START=$SECONDS
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore

# ---- dependencies: carried wheels into a private target, detectron2 from its sources
SITE=$(mktemp -d -t fsod_site.XXXX)
if compgen -G "$WHEEL_DIR/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$WHEEL_DIR"/*.whl
fi
export PYTHONPATH="$SITE:$ROOT/$D2SRC:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'EOF'
import importlib.util, sys, torch
import detectron2, fsod_d2  # noqa: F401  (registers the model; must not need detectron2._C)
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
print("detectron2 from", detectron2.__file__, "| _C present:",
      importlib.util.find_spec("detectron2._C") is not None)
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm \
    --format=csv || true
echo "setup: $((SECONDS - START)) s"

# ---- benchmarks
if [ "$MODE" = "--dry-run" ]; then  # CPU, tiny config: exercises every code path, 1 step each
    TRAIN=(--device cpu --configs tiny --support-sizes 64 --query-size 128 --amp both
           --amp-dtype bf16 --ims-per-batch 1 2 --sweeps tiny --sweep-ways 1 5 --sweep-shots 1 3
           --sweep-sizes 64 96 --warmup 0 --iters 1 --isolate never --time-budget 120)
    INFER=(--device cpu --configs tiny --classes 1 5 --shots 1 3 --repeats 1)
else
    TRAIN=(--configs R50-C4 --support-sizes 384 --amp both --ims-per-batch 1 8
           --sweeps R50-C4 --sweep-ways 1 3 5 10 --sweep-shots 1 3 5 10
           --sweep-sizes 256 320 384 512 --time-budget 220)
    INFER=(--configs R50-C4)
fi
# the time budget stops starting new cases; timeout is the backstop (JSON is saved per case)
timeout 330 "$PY" -m benchmarks.train_throughput --ways-shots 5x3 --rpn early late --procs 1 \
    --unfolded "${TRAIN[@]}" --out-dir "$OUT" || echo "train_throughput exited with $?"
echo "train_throughput done: $((SECONDS - START)) s"
timeout 150 "$PY" -m benchmarks.inference_scaling "${INFER[@]}" --out-dir "$OUT" \
    || echo "inference_scaling exited with $?"
echo "inference_scaling done: $((SECONDS - START)) s"
"$PY" -m benchmarks.plots "$OUT" || true

# ---- short summary last (a runner that keeps only the end of the output still shows it)
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
t = out / "train_throughput.json"
if t.is_file():
    d = json.loads(t.read_text())
    print(d["machine"].get("gpu") or d["machine"].get("cpu_model"))
    for c in d["cases"]:
        for m, v in c["modes"].items():
            ratio = f" loop/batched {c['per_class_over_batched']:.2f}x" if m == "per_class" else ""
            print(f"{c['config']} {c['n_way']}w{c['k_shot']}s S{c['support_size']} {c['rpn']:5} "
                  f"B{c['ims_per_batch']} amp={'on ' if c['amp'] else 'off'} {m:9} "
                  f"{v['step_s'] * 1e3:8.1f} ms {v['episodes_per_min']:8.1f} ep/min "
                  f"{v['images_per_s']:7.1f} img/s {v['peak_memory_mb']:6d} MiB{ratio}")
    for k in ("skipped", "failed"):
        if d.get(k):
            print(k, len(d[k]), d[k][:3])
i = out / "inference_scaling.json"
if i.is_file():
    d = json.loads(i.read_text())
    for name, per_cond in d["configs"].items():
        for cond, r in per_cond.items():
            row = {n: round(v["batched"] * 1e3, 1) for n, v in r["classes"].items()}
            print(f"inference {name} {cond}-RPN ms/image by #classes: {row}")
EOF
echo "total: $((SECONDS - START)) s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
