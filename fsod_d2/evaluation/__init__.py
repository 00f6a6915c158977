"""Evaluation: COCO-style AP with base/novel split."""
