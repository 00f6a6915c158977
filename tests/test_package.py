"""Package-level behaviour: registration on import, and the error without detectron2."""

import subprocess
import sys

from detectron2.modeling import (
    BACKBONE_REGISTRY,
    META_ARCH_REGISTRY,
    PROPOSAL_GENERATOR_REGISTRY,
    ROI_HEADS_REGISTRY,
)

import fsod_d2  # noqa: F401


def test_import_registers_components():
    assert "FsodRCNN" in META_ARCH_REGISTRY
    assert "AttentionRPN" in PROPOSAL_GENERATOR_REGISTRY
    assert "MultiRelationROIHeads" in ROI_HEADS_REGISTRY
    assert "build_fsod_tiny_backbone" in BACKBONE_REGISTRY


def test_import_without_detectron2_says_how_to_install():
    code = "import sys; sys.modules['detectron2'] = None; import fsod_d2"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "ImportError: fsod_d2 needs detectron2" in proc.stderr
    assert "make install" in proc.stderr and "DETECTRON2_SRC" in proc.stderr
