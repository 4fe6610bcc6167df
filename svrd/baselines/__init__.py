"""Adapters that turn the paper's non-generative baselines into ScienceQA option choices."""
