"""Utilities: visualization and helpers."""
