"""SVRD: Structured Visual Reasoning Distillation as a DVC pipeline."""

__version__ = "0.1.0"
