"""otbus notify bridge."""
