"""Exported detector vs eager PyTorch on the CPU: per-image latency, parity, export cost.

  python -m benchmarks.export_latency --weights output/demo/model_final.pth

Exports the MobileNetV2 recipe (``configs/fsod_mnv2_cpu.yaml``, tested at its INPUT.MIN_SIZE_TEST)
with the given weights (default: torchvision's ImageNet backbone and untrained heads), then in
one run, side by side:

* latency: seconds per image of ``Detector.detect`` (test resize, model, boxes back to the
  image) for eager PyTorch (``fsod_d2.predictor.TorchDetector``) and ONNX Runtime
  (``fsod_deploy.runtime.OnnxDetector``) at 1 and 2 threads and 1 / 5 / 50 classes, the two
  backends timed in alternation on the same photos (medians; ratio = eager / ONNX Runtime);
* parity: >= 20 photos at sizes other than the export's example, 1, 5 and 20 classes: every
  detection above the score threshold of either backend matched in the other (same class,
  IoU >= 0.99, score within 1e-3; :func:`fsod_deploy.parity.compare_detections`);
* export time and file sizes.

With a GPU and onnxruntime-gpu, ``--cuda`` adds ONNX Runtime's CUDA execution provider.
Prints a table and saves JSON (benchmarks/results/export_latency_<tag>.json).
"""

import argparse
import logging
import os
import sys
import tempfile
import time

import numpy as np
import torch

import fsod_d2  # noqa: F401
from benchmarks.common import REPO, machine_info, query_image, save_json, support_set
from fsod_d2.config import setup_cfg
from fsod_d2.export import export_model
from fsod_d2.predictor import TorchDetector
from fsod_deploy.parity import compare_detections
from fsod_deploy.runtime import OnnxDetector

logger = logging.getLogger("fsod_d2.benchmarks.export_latency")
RECIPE = REPO / "configs" / "fsod_mnv2_cpu.yaml"


def photos(count: int, seed: int):
    """BGR HWC photos (scikit-image) at assorted sizes around 640 x 480."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        chw = query_image(int(rng.integers(360, 720)), index=i)
        img = np.ascontiguousarray(chw.numpy().transpose(1, 2, 0))
        w = int(img.shape[1] * rng.uniform(0.7, 1.0))
        out.append(np.ascontiguousarray(img[:, :w]))
    return out


def classes(detector, num_classes: int, shots: int = 3):
    crops, boxes = support_set(num_classes, shots, detector.support_size, seed=num_classes)
    crops, boxes = crops.numpy(), boxes.numpy()
    return [
        (f"c{i}", crops[i * shots : (i + 1) * shots], boxes[i * shots : (i + 1) * shots])
        for i in range(num_classes)
    ]


def parity(eager, onnx, images, score_thresh, max_det):
    rows = []
    for num_classes in (1, 5, 20):
        p = onnx.prototypes(classes(onnx, num_classes))
        p_eager = eager.prototypes(classes(eager, num_classes))
        proto_diff = float(np.abs(p.roi_prototypes - p_eager.roi_prototypes).max())
        unmatched = compared = 0
        max_diff = 0.0
        for img in images:
            r = compare_detections(
                onnx.detect(img, p),
                eager.detect(img, p),
                min_score=score_thresh,
                max_detections=max_det,
            )
            unmatched += r["unmatched"]
            compared += r["compared"]
            max_diff = max(max_diff, r["max_score_diff"])
        rows.append(
            {
                "classes": num_classes,
                "images": len(images),
                "detections_compared": compared,
                "unmatched": unmatched,
                "max_score_diff": max_diff,
                "max_prototype_diff": proto_diff,
            }
        )
        logger.info("parity %s", rows[-1])
    return rows


def latency(eager, onnx_by_threads, images, class_counts, repeats):
    rows = []
    for threads, onnx in onnx_by_threads.items():
        torch.set_num_threads(threads)
        for n in class_counts:
            p = onnx.prototypes(classes(onnx, n))
            times = {"pytorch": [], "onnxruntime": []}
            for img in images[:2]:  # warm-up
                eager.detect(img, p), onnx.detect(img, p)
            for _ in range(repeats):
                for img in images:
                    for name, det in (("pytorch", eager), ("onnxruntime", onnx)):
                        t = time.perf_counter()
                        det.detect(img, p)
                        times[name].append(time.perf_counter() - t)
            row = {
                "threads": threads,
                "classes": n,
                "pytorch_s": float(np.median(times["pytorch"])),
                "onnxruntime_s": float(np.median(times["onnxruntime"])),
            }
            row["speedup"] = row["pytorch_s"] / row["onnxruntime_s"]
            rows.append(row)
            logger.info("latency %s", row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", default=str(RECIPE))
    p.add_argument("--weights", default="", help="trained weights (default: ImageNet backbone)")
    p.add_argument("--images", type=int, default=24, help="photos for latency and parity")
    p.add_argument("--repeats", type=int, default=2, help="passes over the photos per cell")
    p.add_argument("--classes", type=int, nargs="+", default=[1, 5, 50])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--cuda", action="store_true", help="also ONNX Runtime's CUDA provider")
    p.add_argument("--tag", default="cpu")
    p.add_argument("opts", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")

    out = tempfile.mkdtemp(prefix="fsod_export_")
    weights = args.weights
    if not weights:  # export loads a checkpoint: the ImageNet-initialised model's
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.modeling import build_model

        init = setup_cfg(args.config_file, ["MODEL.DEVICE", "cpu", *args.opts])
        DetectionCheckpointer(build_model(init), save_dir=out).save("init")
        weights = os.path.join(out, "init.pth")
    cfg = setup_cfg(args.config_file, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights, *args.opts])
    manifest = export_model(cfg, out, config_file=args.config_file)
    eager = TorchDetector(cfg)
    images = photos(args.images, seed=0)
    onnx_by_threads = {t: OnnxDetector(out, threads=t) for t in args.threads}
    par = parity(
        eager,
        onnx_by_threads[max(args.threads)],
        images,
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
        cfg.TEST.DETECTIONS_PER_IMAGE,
    )
    lat = latency(eager, onnx_by_threads, images, args.classes, args.repeats)
    cuda = []
    if args.cuda:
        gpu = OnnxDetector(out, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        for n in args.classes:
            prot = gpu.prototypes(classes(gpu, n))
            for img in images[:3]:
                gpu.detect(img, prot)
            t = time.perf_counter()
            for img in images:
                gpu.detect(img, prot)
            seconds = (time.perf_counter() - t) / len(images)
            cuda.append({"classes": n, "onnxruntime_cuda_s": seconds})
    payload = {
        "benchmark": "export_latency",
        "command": "python -m benchmarks.export_latency "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "config": os.path.relpath(args.config_file, REPO),
        "weights": os.path.basename(args.weights) or "ImageNet backbone, untrained heads",
        "test_size": [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST],
        "export_seconds": manifest["export_seconds"],
        "file_mb": {k: round(v["bytes"] / 1e6, 2) for k, v in manifest["files"].items()},
        "opset": manifest["opset"],
        "latency": lat,
        "parity": par,
        "cuda": cuda,
        "machine": machine_info(),
    }
    save_json(f"export_latency_{args.tag}", payload)
    print(f"export: {manifest['export_seconds']:.1f} s, files {payload['file_mb']} MB")
    print("| threads | classes | PyTorch s/img | ONNX Runtime s/img | speed-up |")
    print("|---|---|---|---|---|")
    for r in lat:
        print(
            f"| {r['threads']} | {r['classes']} | {r['pytorch_s']:.3f} | "
            f"{r['onnxruntime_s']:.3f} | {r['speedup']:.2f}x |"
        )
    print("| classes | images | detections compared | unmatched | max score diff |")
    print("|---|---|---|---|---|")
    for r in par:
        print(
            f"| {r['classes']} | {r['images']} | {r['detections_compared']} | "
            f"{r['unmatched']} | {r['max_score_diff']:.1e} |"
        )
    return payload


if __name__ == "__main__":
    main()
