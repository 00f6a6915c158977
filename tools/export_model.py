#!/usr/bin/env python
"""Export a trained detector to ONNX, for ONNX Runtime on machines without PyTorch.

  python tools/export_model.py --config-file configs/demo/fsod_toy_mnv2.yaml \\
      --weights output/demo/model_final.pth --output exported/demo
  python tools/export_model.py ... --prototypes predictions/prototypes.pth   # convert them too

Writes to --output: support_encoder.onnx (support crops -> per-shot embeddings), detector.onnx
(one image + the prototypes of any number of classes -> boxes, scores, classes), manifest.json
(resize rule, support crop parameters, input format, opset, the weights' fingerprint, the
package version). --prototypes converts prototype files that tools/predict.py saved (.pth) into
<output>/prototypes/<name>.npz, the exported detector's class input (they must have been computed
with the same weights). Run the folder with

  python tools/predict.py --backend onnxruntime --model exported/demo --supports DIR --input ...

A config whose parts cannot be exported, missing weights or an output folder that cannot be
written stop the tool with one line before any work (exit code 1).
"""

import argparse
import logging
import os

import fsod_d2  # noqa: F401  (first: registers components, silences known import warnings)

# isort: split
from detectron2.utils.logger import setup_logger

from fsod_d2.config import setup_cfg
from fsod_d2.export import ExportError, check_exportable, export_model
from fsod_d2.modeling.support import PrototypeSet, StalePrototypeError
from fsod_d2.utils.cli import (
    UsageError,
    check_output_dir,
    check_prototype_file,
    check_weights_file,
    one_line_errors,
)

logger = logging.getLogger("fsod_d2.export_model")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--weights", help="model weights (default: MODEL.WEIGHTS of the config)")
    p.add_argument("--output", required=True, metavar="DIR", help="folder to write")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: torch's)")
    p.add_argument(
        "--prototypes",
        nargs="+",
        default=[],
        metavar="FILE",
        help="prototype files saved by tools/predict.py to convert to <output>/prototypes/*.npz",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p.parse_args(argv)


@one_line_errors("export_model.py", ExportError, StalePrototypeError)
def main(argv=None) -> dict:
    args = parse_args(argv)
    setup_logger(name="fsod_d2")
    opts = list(args.opts) + (["MODEL.WEIGHTS", args.weights] if args.weights else [])
    cfg = setup_cfg(args.config_file, opts)
    check_exportable(cfg)  # before any work: the config key that prevents it
    check_weights_file(cfg.MODEL.WEIGHTS, "--weights" if args.weights else "MODEL.WEIGHTS")
    for path in args.prototypes:
        check_prototype_file(path)
    check_output_dir(args.output, "--output")
    manifest = export_model(cfg, args.output, opset=args.opset, config_file=args.config_file)
    for path in args.prototypes:
        prototypes = PrototypeSet.load(path)
        if prototypes.weights_fingerprint != manifest["weights_fingerprint"]:
            raise UsageError(
                f"--prototypes {path} were computed with other weights than "
                f"{cfg.MODEL.WEIGHTS}; compute them with these weights (tools/predict.py "
                "--supports DIR) or export the weights they were computed with"
            )
        name = os.path.splitext(os.path.basename(path))[0] + ".npz"
        out = os.path.join(args.output, "prototypes", name)
        prototypes.save(out)
    files = manifest["files"]
    logger.info(
        "%s: %s (%.1f MB), %s (%.1f MB), manifest.json; opset %s; %.1f s",
        args.output,
        *[x for name in files for x in (name, files[name]["bytes"] / 1e6)],
        manifest["opset"],
        manifest["export_seconds"],
    )
    return manifest


if __name__ == "__main__":
    main()
