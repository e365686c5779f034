"""otbus event store."""
