"""otbus benchmarks: each figure next to a bare baseline measured in the same run (see bench/README.md)."""
