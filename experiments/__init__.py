"""Benchmarks and evaluations. Never imported by library code."""
