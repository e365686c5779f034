"""otbus zerobus-sink: ISA-95 tag records into Databricks Delta tables through Zerobus."""

import os

# The SDK's Rust core logs through `tracing` to stdout; keep it to warnings, without colour
# codes, unless the operator asks for more.
os.environ.setdefault("RUST_LOG", "warn")
os.environ.setdefault("NO_COLOR", "1")
