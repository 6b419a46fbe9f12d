"""Benchmarks of rtserver against bare baselines, each measured in the same run (see README.md)."""
