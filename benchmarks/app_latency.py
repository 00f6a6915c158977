"""The app's latency as a user sees it: from the Detect click to the drawn result in the page.

  python -m benchmarks.app_latency --weights output/demo/model_final.pth \\
      --supports output/demo/novel_supports --image datasets/fsod_toy/images/val/000000.jpg

Starts ``tools/app.py`` (default: the MobileNetV2 recipe, ``configs/fsod_mnv2_cpu.yaml``, with
the given weights and support folder) on 127.0.0.1, opens it in headless Chromium (the system's
package, :mod:`benchmarks.app_browser`), uploads the image scaled to ``--width`` pixels wide and
clicks Detect ``--repeats`` times. Each time is taken in the browser's driver: from just before
the click until the page shows the new result (its detections field updated and every picture
of the gallery loaded). The model alone (``Detector.detect`` in this process, same threads) is
timed too, so that the page's own cost shows. Prints median, sample std, min and max; saves JSON
(benchmarks/results/app_latency_<tag>.json) and, with ``--screenshot``, a small PNG of the page.
"""

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2

from benchmarks.app_browser import AppPage, AppServer, chromium_driver, find_chromium
from benchmarks.common import REPO, machine_info, save_json

logger = logging.getLogger("fsod_d2.benchmarks.app_latency")
RECIPE = REPO / "configs" / "fsod_mnv2_cpu.yaml"


def scaled_image(path: str, width: int, out_dir: str) -> str:
    """The image resized to ``width`` pixels wide (aspect ratio kept), as a PNG file."""
    image = cv2.imread(path)
    if image is None:
        raise SystemExit(f"app_latency: error: {path} is not a readable image")
    h, w = image.shape[:2]
    size = (width, round(h * width / w))
    interp = cv2.INTER_AREA if width < w else cv2.INTER_LINEAR
    out = os.path.join(out_dir, f"query_{width}px.png")
    cv2.imwrite(out, cv2.resize(image, size, interpolation=interp))
    return out


def model_only(args, image_path: str, repeats: int) -> list:
    """Seconds of ``Detector.detect`` alone on the same image, classes and threads."""
    import torch

    import fsod_d2  # noqa: F401
    from fsod_d2.config import setup_cfg
    from fsod_d2.predictor import TorchDetector
    from fsod_deploy.images import read_image

    torch.set_num_threads(args.threads)
    cfg = setup_cfg(args.config_file, ["MODEL.WEIGHTS", args.weights, *args.opts])
    detector = TorchDetector(cfg)
    prototypes = detector.prototypes_from_folder(args.supports)
    image = read_image(image_path, "BGR")
    detector.detect(image, prototypes)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        detector.detect(image, prototypes)
        times.append(time.perf_counter() - t)
    return times


def shown(arg: str) -> str:
    """An argument as the JSON keeps it: a path inside the repository relative to it, another
    path by its last two parts (no machine's folders in results)."""
    if not os.path.isabs(arg) or not os.path.exists(arg):
        return arg
    path = Path(arg).resolve()
    try:
        return str(path.relative_to(REPO.resolve()))
    except ValueError:
        return os.path.join(path.parent.name, path.name)


def summary(times: list) -> dict:
    return {
        "median_s": statistics.median(times),
        "std_s": statistics.stdev(times) if len(times) > 1 else 0.0,
        "min_s": min(times),
        "max_s": max(times),
        "n": len(times),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", default=str(RECIPE))
    p.add_argument("--weights", required=True, help="trained weights of the config's model")
    p.add_argument("--supports", required=True, help="support folder (the classes detected)")
    p.add_argument("--image", required=True, help="the query image (scaled to --width)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--repeats", type=int, default=10, help="timed clicks (after one warm-up)")
    p.add_argument("--threads", type=int, default=2, help="the app's CPU threads")
    p.add_argument("--screenshot", default="", help="save a small PNG of the page here")
    p.add_argument("--tag", default="cpu")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(raw_argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    found = find_chromium()
    if found is None:
        raise SystemExit(
            "app_latency: error: Chromium and chromedriver are not installed "
            "(apt-get install chromium chromium-driver)"
        )

    work = tempfile.mkdtemp(prefix="fsod_app_latency_")
    image = scaled_image(args.image, args.width, work)
    app_args = [
        *("--config-file", args.config_file, "--weights", args.weights),
        *("--supports", args.supports, "--threads", str(args.threads), *args.opts),
    ]
    load_before = os.getloadavg()
    with AppServer(app_args, os.path.join(work, "app.log")) as server:
        page = AppPage(chromium_driver(*found, width=1100, height=820), server.url)
        try:
            page.tab("Detect")
            page.set_files("queries", [image])
            times = []
            for i in range(args.repeats + 1):
                before = page.json("detections-json").get("run", 0)
                t = time.perf_counter()
                page.click("detect")
                page.wait(
                    lambda before=before: (
                        page.json("detections-json").get("run") == before + 1
                        and page.gallery_ready("gallery")
                    ),
                    "the drawn result",
                    poll=0.002,
                )
                if i:  # the first click is the warm-up
                    times.append(time.perf_counter() - t)
                logger.info("click %d: %.3f s", i, time.perf_counter() - t)
            data = page.json("detections-json")
            if args.screenshot:
                shot = os.path.join(work, "page.png")
                page.screenshot(shot)
                small_png(shot, args.screenshot)
        finally:
            page.quit()
    model = model_only(args, image, args.repeats)
    h, w = cv2.imread(image).shape[:2]
    payload = {
        "benchmark": "app_latency",
        "command": "python -m benchmarks.app_latency " + " ".join(map(shown, raw_argv)),
        "config": os.path.relpath(args.config_file, REPO),
        "weights": shown(args.weights),
        "supports": shown(args.supports),
        "query": shown(args.image),
        "image": [w, h],
        "classes": data["classes"],
        "detections_drawn": len(data["images"][0]["detections"]),
        "threshold": data["threshold"],
        "app_threads": args.threads,
        "click_to_result": summary(times),
        "model_only": summary(model),
        "times_s": times,
        "loadavg_before": [round(v, 2) for v in load_before],
        "machine": machine_info(),
    }
    save_json(f"app_latency_{args.tag}", payload)
    c, m = payload["click_to_result"], payload["model_only"]
    print(
        f"{w}x{h} image, {len(data['classes'])} classes, {args.threads} threads: click to drawn "
        f"result median {c['median_s']:.3f} s (std {c['std_s']:.3f}, min {c['min_s']:.3f}, "
        f"max {c['max_s']:.3f}, n {c['n']}); model alone median {m['median_s']:.3f} s; "
        f"load {payload['machine'].get('loadavg_1_5_15')}"
    )
    return payload


def small_png(src: str, dst: str, colors: int = 256) -> None:
    """The screenshot with a palette of ``colors`` (a few times smaller than true colour)."""
    from PIL import Image

    with Image.open(src) as im:
        im.convert("RGB").quantize(colors=colors, method=Image.Quantize.FASTOCTREE).save(
            dst, optimize=True
        )
    logger.info("screenshot %s: %.0f KB", dst, os.path.getsize(dst) / 1024)


if __name__ == "__main__":
    main()
