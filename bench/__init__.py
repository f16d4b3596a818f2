"""Benchmarks: each script starts the servers it needs and prints one JSON object (README)."""
