#!/usr/bin/env bash
# Regenerates the Python code of the .proto files with grpcio-tools (a dev dependency).
# libs/otbus-core/tests/test_generated_proto.py checks that the committed code matches the .proto files.
#   bash schemas/proto/generate.sh [OUTROOT]
# OUTROOT (default: the repository) receives the same relative paths as the committed code.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=${1:-.}
protoc() { uv run --frozen python -m grpc_tools.protoc -I schemas/proto "$@"; }

core="$root/libs/otbus-core/src/otbus_core/_generated"
mkdir -p "$core"
protoc --python_out="$core" --pyi_out="$core" schemas/proto/sparkplug_b.proto

sink="$root/services/zerobus-sink/src/otbus_zerobus_sink/_generated"
mkdir -p "$sink"
protoc --python_out="$sink" --pyi_out="$sink" --grpc_python_out="$sink" \
  schemas/proto/zerobus_service.proto schemas/proto/otbus_tag_row.proto
# protoc writes absolute imports between generated modules; make them package-relative
sed -i 's/^import zerobus_service_pb2 as/from . import zerobus_service_pb2 as/' "$sink/zerobus_service_pb2_grpc.py"
rm -f "$sink/otbus_tag_row_pb2_grpc.py"  # no services in that file
