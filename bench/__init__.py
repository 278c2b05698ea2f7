"""Benchmark harness: see bench/openai_load.py and bench/report.py."""
