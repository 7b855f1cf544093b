"""Ratio benchmarks against peers, run in one process; each writes JSON and prints a table."""
