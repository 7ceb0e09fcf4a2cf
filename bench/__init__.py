"""Benchmarks: scripts that print tables and ratios against a baseline measured in the same run."""
