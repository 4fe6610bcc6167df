"""Benchmarks of the svrd pipeline: `python -m benchmarks [--quick] [--only NAME]` runs them all."""
