#!/usr/bin/env bash
# Regenerates the Python code of the .proto files (grpcio-tools from the dev dependencies).
# A test checks that the committed code matches the .proto files.
#   bash schemas/proto/generate.sh [OUTDIR]      (default: libs/otbus-core/src/otbus_core/_generated)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-libs/otbus-core/src/otbus_core/_generated}
mkdir -p "$out"
uv run --frozen python -m grpc_tools.protoc -I schemas/proto --python_out="$out" --pyi_out="$out" schemas/proto/sparkplug_b.proto
