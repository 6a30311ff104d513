"""tokenguard's benchmark suite: ``python -m benchmarks`` prints one table (see benchmarks/README.md)."""
