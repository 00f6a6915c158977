"""fsod-deploy: run an exported fsod-d2 detector without PyTorch or detectron2.

Everything in this package imports with numpy, OpenCV and Pillow alone (ONNX Runtime where a
model is run), so a detector exported by ``tools/export_model.py`` runs on machines without
PyTorch. fsod_d2 uses the same pre- and post-processing functions from here, so the exported
and the eager paths share one implementation of them.
"""

__version__ = "0.1.0"
