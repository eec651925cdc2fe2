"""Hyper-parameter search and ablation: ``tunedet tune`` and ``tunedet ablate``."""
