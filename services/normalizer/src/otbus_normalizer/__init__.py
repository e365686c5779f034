"""otbus normalizer."""
