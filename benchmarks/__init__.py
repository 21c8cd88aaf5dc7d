"""Benchmarks: scripts that report ratios measured in one run (``python -m benchmarks.<name>``); never tests."""
