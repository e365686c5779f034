"""otbus OT simulator."""
