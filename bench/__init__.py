"""Benchmark harness (issues 7 and 9): `make bench`, `make bench-quick`."""
