"""Benchmarks of multidistill's product paths (see benchmarks/README.md)."""
