"""Benchmarks behind `monoocc bench ...`: each prints a table; none is a test."""
