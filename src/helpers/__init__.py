"""Reproducing two ImageNet-transfer studies on medical images (chest X-ray, kidney CT)."""

__version__ = "0.1.0"
