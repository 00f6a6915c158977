"""fsod-d2: few-shot object detection (Attention-RPN, multi-relation head) for Detectron2."""

from pathlib import Path

from setuptools import find_packages, setup

DEMO = ["scikit-image", "matplotlib"]
# tools/export_model.py (torch.onnx's exporter) and the ONNX Runtime backend of tools/predict.py
EXPORT = ["onnx", "onnxscript", "onnxruntime"]
# tools/app.py, the interactive few-shot detection app
APP = ["gradio>=6,<7"]

setup(
    name="fsod-d2",
    version="0.1.0",
    description="Few-shot object detection (Attention-RPN, multi-relation head) for Detectron2",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    # fsod_d2: the runtime package; fsod_datagen: generated datasets for the demo, tests and
    # benchmarks (never imported by fsod_d2)
    packages=find_packages(exclude=("tests", "tests.*", "tools", "benchmarks", "configs")),
    python_requires=">=3.10",
    # detectron2 is not on PyPI: `make install` (scripts/install.sh) builds it from source.
    install_requires=[
        "torch",
        "torchvision",
        "fvcore",
        "pycocotools",
        "opencv-python-headless",
        "numpy",
        "Pillow",
        "tqdm",
        "setuptools<81",  # detectron2.model_zoo imports pkg_resources
    ],
    # demo: the generated datasets (fsod_datagen: photos from scikit-image) and the benchmarks'
    # plots; export: ONNX export and ONNX Runtime; app: tools/app.py; dev (what `make install`
    # installs) includes them, and Selenium for the browser tests (they drive the system's
    # Chromium). A machine that only runs exported models needs requirements-runtime.txt alone.
    extras_require={
        "demo": DEMO,
        "export": EXPORT,
        "app": APP,
        "dev": DEMO + EXPORT + APP + ["pytest", "ruff", "black", "psutil", "selenium"],
    },
)
