"""Load generator and benchmarks for the lobby server (see docs/benchmarks.md)."""
