#!/usr/bin/env bash
# GPU check of fsod-d2's training and inference speed on one GPU, in under 8 minutes.
#
# Needs python3 with torch (CUDA build) on a machine with one GPU. detectron2's Python sources
# and its pure-Python dependencies are used from the repository's .d2src/ and .whl/ folders
# when present (for machines without network; nothing is compiled), else from the installed
# packages.
#
#   bash benchmarks/gpu_check.sh --prepare   # once, on a machine with network: fills .whl/
#                                             # (wheels for Python $PYVER, default 3.12) and
#                                             # .d2src/ (from $DETECTRON2_SRC, a detectron2
#                                             # checkout); both are gitignored, copy them along
#   bash benchmarks/gpu_check.sh             # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry-run   # the same path on CPU with the tiny config (~3 min)
#
# What runs (R-50-C4, 5-way 3-shot, 384 px supports, queries 440-600 px, random weights with
# FrozenBN statistics calibrated on a photo):
#   1. benchmarks/train_throughput.py: training step on prefetched episodes, fp32 vs AMP
#      (float16 + GradScaler), batched vs the per-class loop, FrozenBN folded vs not, early vs
#      late RPN conditioning, 1 and 8 episodes per step, then sweeps while its budget lasts;
#   2. benchmarks/train_e2e.py: the real trainer (FsodTrainer, loader workers included) on the
#      toy dataset at 8 and 16 episodes per iteration, float16 and bfloat16: episodes/min, GPU
#      utilization, divergence;
#   3. benchmarks/count_syncs.py: a profiled 8-episode float16 step: CUDA time, host syncs
#      (cudaStreamSynchronize), kernel launches, top kernels;
#   4. benchmarks/inference_scaling.py: inference cost vs number of classes.
# Output (at most 8 files) in $OUT (default benchmarks/results/gpu_check): gpu_check.log,
# train_throughput.json/.png, train_e2e.json, count_syncs_gpu.json,
# inference_scaling.json/.png; a summary ends the log.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=${1:-run}
WHEEL_DIR=${WHEEL_DIR:-.whl}
D2SRC=${D2SRC:-.d2src}
PYVER=${PYVER:-3.12}
PY=${PYTHON:-python3}

# detectron2's run-time needs that a bare torch image may lack (numpy, opencv, pyyaml, tabulate,
# cloudpickle, matplotlib, pillow, portalocker, tqdm, psutil, scikit-image are there).
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
# the toy dataset of the end-to-end run goes to a scratch folder unless one is given
export DETECTRON2_DATASETS=${DETECTRON2_DATASETS:-$(mktemp -d -t fsod_datasets.XXXX)}
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
           --sweep-sizes 64 96 --warmup 0 --iters 1 --isolate never --time-budget 60)
    E2E=(--device cpu --config tiny --support-size 0 --ims-per-batch 2 4 --iters 2 --warmup 1
         --workers 1 --toy-images 40)
    SYNCS=(--device cpu --config-file configs/quick_schedules/fsod_tiny_cpu.yaml --amp bf16
           --episodes 1 4)
    INFER=(--device cpu --configs tiny --classes 1 5 --shots 1 3 --repeats 1)
    LIMITS=(400 400 300 300)  # seconds; shared CPUs are slow, no 8-minute bound here
else
    TRAIN=(--configs R50-C4 --support-sizes 384 --amp both --ims-per-batch 1 8
           --sweeps R50-C4 --sweep-ways 1 3 5 10 --sweep-shots 1 3 5 10
           --sweep-sizes 256 320 384 512 --time-budget 100)
    E2E=(--config R50-C4 --ims-per-batch 8 16 --amp-dtypes float16 bfloat16 --iters 20
         --warmup 8 --time-budget 120)
    SYNCS=(--device cuda --config-file configs/Base-FSOD-C4.yaml --calibrate --amp fp16
           --episodes 8 --steps 3 FSOD.SUPPORT.SIZE 384)
    INFER=(--configs R50-C4)
    LIMITS=(150 170 60 60)  # seconds: train_throughput, train_e2e, count_syncs, inference
fi
# the time budgets stop starting new cases; timeouts are the backstop (JSON saved per case)
timeout "${LIMITS[0]}" "$PY" -m benchmarks.train_throughput --ways-shots 5x3 --rpn early late --procs 1 \
    --unfolded "${TRAIN[@]}" --out-dir "$OUT" || echo "train_throughput exited with $?"
echo "train_throughput done: $((SECONDS - START)) s"
timeout "${LIMITS[1]}" "$PY" -m benchmarks.train_e2e "${E2E[@]}" --out-dir "$OUT" \
    || echo "train_e2e exited with $?"
echo "train_e2e done: $((SECONDS - START)) s"
timeout "${LIMITS[2]}" "$PY" -m benchmarks.count_syncs "${SYNCS[@]}" --name count_syncs_gpu --out-dir "$OUT" \
    || echo "count_syncs exited with $?"
echo "count_syncs done: $((SECONDS - START)) s"
timeout "${LIMITS[3]}" "$PY" -m benchmarks.inference_scaling "${INFER[@]}" --out-dir "$OUT" \
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
e = out / "train_e2e.json"
if e.is_file():
    for r in json.loads(e.read_text())["runs"]:
        if "skipped" in r:
            print(f"e2e B{r['ims_per_batch']} {r['amp_dtype']}: skipped (time budget)")
            continue
        util = r.get("gpu_util_percent")
        state = "DIVERGED " + r.get("error", "") if r.get("diverged") else r.get("error", "ok")
        print(f"e2e {r['config']} B{r['ims_per_batch']} {r['amp_dtype']:8} workers {r['workers']}: "
              f"{r.get('episodes_per_min', float('nan')):8.1f} ep/min, GPU util "
              f"{util if util is not None else float('nan'):.0f} %, {state[:80]}")
c = out / "count_syncs_gpu.json"
if c.is_file():
    for r in json.loads(c.read_text())["rows"]:
        line = f"profile B{r['episodes']}: {r['syncs']:g} sync ops, {r['aten_ops']:g} aten ops"
        if "cuda" in r:
            k = r["cuda"]
            calls = k["runtime_calls_per_step"]
            line += (f"; CUDA {k['cuda_ms_per_step']:.1f} ms / wall {r['wall_ms_per_step']:.1f} ms;"
                     f" cudaStreamSynchronize {calls.get('cudaStreamSynchronize', 0):g},"
                     f" launches {calls.get('cudaLaunchKernel', 0):g},"
                     f" memcpy {calls.get('cudaMemcpyAsync', 0):g} per step")
            for t in k["top_kernels"][:5]:
                line += f"\n  {t['ms_per_step']:7.2f} ms/step {t['kernel'][:90]}"
        print(line)
i = out / "inference_scaling.json"
if i.is_file():
    d = json.loads(i.read_text())
    for name, per_cond in d["configs"].items():
        for cond, r in per_cond.items():
            row = {n: round(v["batched"] * 1e3, 1) for n, v in r["classes"].items()}
            print(f"inference {name} {cond}-RPN ms/image by #classes: {row}")
EOF
echo "total: $((SECONDS - START)) s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
