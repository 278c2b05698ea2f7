"""Benchmark harness: bench/run.py (make bench), bench/soak.py (make soak), bench/contention.py."""
