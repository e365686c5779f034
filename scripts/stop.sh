#!/usr/bin/env bash
# Stops the demo's services (SIGTERM: they finish their batch, commit and exit) and the infrastructure.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${OTBUS_HOME:-$PWD/.otbus}/run
for name in recommendations-sim mqtt-sim sparkplug-sim ingest-mqtt ingest-opcua opcua-sim ingest-modbus modbus-sim ingest-http zerobus-sink normalizer notify-bridge event-store; do
  f=$RUN/$name.pid
  [[ -s $f ]] || continue
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  fi
  rm -f "$f"
  echo "stop: $name stopped"
done
bash deploy/local/infra.sh stop
