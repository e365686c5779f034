"""otbus HTTP ingest (Ignition Event Streams compatible)."""
