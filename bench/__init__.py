"""Benchmarks for FLM: a fast fake backend, a bare proxy floor, load and startup runs."""
