#!/usr/bin/env bash
# `make demo`: the whole few-shot pipeline on CPU in minutes, on the procedural toy dataset.
#   1. generate the toy dataset if absent ($DETECTRON2_DATASETS/fsod_toy, default datasets/; novel
#      classes in training images of their own)
#   2. train FsodRCNN episodically on the 20 base classes (configs/demo/fsod_toy_mnv2.yaml:
#      the pretrained MobileNetV2 recipe)
#   3. evaluate all 25 classes with seeded 3-shot supports: bAP (base) and nAP (5 novel classes
#      never seen in training)
#   4. detect the novel classes from a folder of 3 example images each (tools/predict.py) and
#      write the visualizations
# Every number printed is measured by this run. Environment knobs: DEMO_OUTPUT (default
# output/demo), DEMO_PROCS (training processes, default 2: one per core), DEMO_SEED (training
# seed, default 0: SEED and FSOD.SEED, i.e. initialisation, sampling and the episode stream),
# DEMO_CONFIG (default configs/demo/fsod_toy_mnv2.yaml; configs/demo/fsod_toy_base.yaml: the tiny
# model from scratch), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
OUT=${DEMO_OUTPUT:-output/demo}
PROCS=${DEMO_PROCS:-2}
SEED=${DEMO_SEED:-0}
DATASETS=$($PYTHON -c "from fsod_d2.utils import datasets_root; print(datasets_root())")
TOY="$DATASETS/fsod_toy"
CONFIG=${DEMO_CONFIG:-configs/demo/fsod_toy_mnv2.yaml}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / PROCS > 0 ? $(nproc) / PROCS : 1 ))}
mkdir -p "$OUT"
t0=$(date +%s)

echo "== [1/4] toy dataset ($TOY)"
# --separate-novel: the training images of the novel classes hold no base object, so base
# training never sees a novel object as unlabelled background (the val split is unchanged).
make_toy() {
    $PYTHON tools/make_toy_dataset.py --root "$TOY" --separate-novel "$@" > "$OUT/dataset.log" 2>&1
}
if ! make_toy; then
    # toy data drawn with other parameters (e.g. without --separate-novel): redraw it; anything
    # else (files the generator did not write) stops here
    [ -f "$TOY/meta.json" ] || { tail -n 3 "$OUT/dataset.log"; exit 1; }
    echo "$TOY holds toy data drawn with other parameters: drawing the demo's"
    make_toy --overwrite || { tail -n 3 "$OUT/dataset.log"; exit 1; }
fi
grep -v -i "warn" "$OUT/dataset.log" | tail -n 1
t1=$(date +%s)

echo "== [2/4] base training + [3/4] evaluation on $PROCS CPU process(es), training seed $SEED: $CONFIG"
$PYTHON tools/train_net.py --config-file "$CONFIG" --num-gpus "$PROCS" \
    --dist-url "tcp://127.0.0.1:$($PYTHON -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')" \
    OUTPUT_DIR "$OUT" SEED "$SEED" FSOD.SEED "$SEED" > "$OUT/train.log" 2>&1 \
    || { tail -n 40 "$OUT/train.log"; exit 1; }
grep -E "Overall training speed|Throughput over|copypaste|AP [0-9.]+ \| bAP" "$OUT/train.log" \
    | sed -e 's/^\[[^]]*\]:* *//'
t2=$(date +%s)

echo "== [4/4] novel classes from 3 example images each -> $OUT/predictions/vis"
# Support folder: one sub-folder per novel class with 3 training images and a boxes.json
# (the user-facing format of tools/predict.py); queries: validation images with novel objects.
QUERIES=$($PYTHON - "$TOY" "$OUT/novel_supports" <<'EOF'
import json, os, shutil, sys
toy, dst = sys.argv[1], sys.argv[2]
meta = json.load(open(os.path.join(toy, "meta.json")))
novel = set(meta["novel_classes"])
for split in ("train", "val"):
    data = json.load(open(os.path.join(toy, f"{split}.json")))
    names = {c["id"]: c["name"] for c in data["categories"]}
    files = {im["id"]: im["file_name"] for im in data["images"]}
    novel_anns = [a for a in data["annotations"] if names[a["category_id"]] in novel]
    if split == "train":
        shutil.rmtree(dst, ignore_errors=True)
        for name in sorted(novel):
            os.makedirs(os.path.join(dst, name))
            boxes = {}
            for a in [a for a in novel_anns if names[a["category_id"]] == name][:3]:
                src = files[a["image_id"]]
                base = os.path.basename(src)
                shutil.copy(os.path.join(toy, "images", src), os.path.join(dst, name, base))
                x, y, w, h = a["bbox"]
                boxes[base] = [x, y, x + w, y + h]
            json.dump(boxes, open(os.path.join(dst, name, "boxes.json"), "w"), indent=1)
    else:
        ids = sorted({a["image_id"] for a in novel_anns})[:8]
        print(" ".join(os.path.join(toy, "images", files[i]) for i in ids))
EOF
)
# shellcheck disable=SC2086
$PYTHON tools/predict.py --config-file "$CONFIG" --weights "$OUT/model_final.pth" \
    --supports "$OUT/novel_supports" --input $QUERIES --output "$OUT/predictions" \
    > "$OUT/predict.log" 2>&1 || { tail -n 40 "$OUT/predict.log"; exit 1; }
grep -E "classes from|images in" "$OUT/predict.log" | sed -e 's/^\[[^]]*\]:* *//'
t3=$(date +%s)

echo "== summary"
$PYTHON - "$OUT" "$SEED" <<'EOF'
import glob, json, os, sys
out, seed = sys.argv[1], sys.argv[2]
(path,) = glob.glob(os.path.join(out, "inference", "*", "fsod_metrics_*.json"))
r = json.load(open(path))
m = r["metrics"]["bbox"]
print(f"training seed {seed}; {r['dataset']}: {len(r['classes'])} classes, {r['k_shot']}-shot "
      f"supports (seed {r['seed']})")
print("  AP {AP:.1f}  AP50 {AP50:.1f} | bAP {bAP:.1f}  bAP50 {bAP50:.1f} | nAP {nAP:.1f}  nAP50 {nAP50:.1f}".format(**m))
vis = sorted(glob.glob(os.path.join(out, "predictions", "vis", "*.png")))
print(f"  {len(vis)} visualizations of novel-class detections, e.g. {vis[0] if vis else '-'}")
EOF
echo "  time: dataset $((t1 - t0)) s, training + evaluation $((t2 - t1)) s," \
     "novel-class prediction $((t3 - t2)) s, total $((t3 - t0)) s"
