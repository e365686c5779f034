#!/usr/bin/env bash
# One command: set everything up, start Kafka, PostgreSQL and Mosquitto, the services,
# and the simulator posting Ignition-style tag events; then print where to look.
# Ctrl-C stops the simulator; `make stop` stops the services and the infrastructure.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.local/bin:$PATH"

bash scripts/bootstrap.sh
bash deploy/local/infra.sh start
eval "$(bash deploy/local/infra.sh env)"

OTBUS_HOME=${OTBUS_HOME:-$PWD/.otbus}
RUN=$OTBUS_HOME/run
mkdir -p "$RUN"
DEMO_KEY=${OTBUS_DEMO_KEY:-demo-key-change-me-0001}
DEMO_TENANT=${OTBUS_DEMO_TENANT:-demo}
export OTBUS_KAFKA_BOOTSTRAP OTBUS_DATABASE_URL
export OTBUS_METADATA_REFRESH_MS=2000
export OTBUS_TENANTS=$DEMO_TENANT # the consumers serve the demo tenant only

start_service() { # name module port [VAR=value ...]
  local name=$1 module=$2 port=$3
  shift 3
  if [[ -s $RUN/$name.pid ]] && kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null; then
    echo "demo: $name already running"
    return
  fi
  env "$@" OTBUS_PORT="$port" setsid nohup uv run --no-sync python -m "$module" >>"$RUN/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
  for _ in $(seq 1 120); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && { echo "demo: $name ready on :$port"; return; }
    kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null || { tail -n 30 "$RUN/$name.log"; echo "demo: $name died" >&2; exit 1; }
    sleep 0.5
  done
  tail -n 30 "$RUN/$name.log"
  echo "demo: $name did not become ready" >&2
  exit 1
}

start_service event-store otbus_event_store 8081 OTBUS_API_TOKENS="{\"$DEMO_KEY\": \"$DEMO_TENANT\"}"
start_service notify-bridge otbus_notify_bridge 8084 OTBUS_API_TOKENS="{\"$DEMO_KEY\": \"$DEMO_TENANT\"}"
start_service normalizer otbus_normalizer 8082 \
  OTBUS_DEFAULT_CONTEXT='{"site": "plant1", "area": "production", "line": "line1", "equipment": "default"}'
# no Databricks settings: the sink embeds the Zerobus emulator and writes local Delta tables
start_service zerobus-sink otbus_zerobus_sink 8083 OTBUS_DATA_DIR="$OTBUS_HOME/delta" \
  OTBUS_DEFAULT_TABLE='main.{tenant}.tag_events'
start_service ingest-http otbus_ingest_http 8088 OTBUS_API_KEYS="{\"$DEMO_KEY\": \"$DEMO_TENANT\"}"

# the simulator's devices (Modbus TCP, MQTT JSON, Sparkplug B) and the adapters reading them
# (deploy/config/sources.example.yaml)
start_sim() { # name marker args...
  local name=$1 marker=$2
  shift 2
  if [[ -s $RUN/$name.pid ]] && kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null; then return; fi
  setsid nohup uv run --no-sync python -m otbus_ot_simulator "$@" >>"$RUN/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
  for _ in $(seq 1 60); do grep -q "$marker" "$RUN/$name.log" 2>/dev/null && break; sleep 0.5; done
  echo "demo: simulator $name started"
}
start_sim modbus-sim "Modbus TCP on" modbus --port 5020 --tags 100
start_sim opcua-sim "OPC-UA on" opcua --port 4840 --tags 200 --interval 1
start_service ingest-modbus otbus_ingest_modbus 8093 OTBUS_TENANT="$DEMO_TENANT" \
  OTBUS_SOURCES_FILE=deploy/config/sources.example.yaml OTBUS_STATE_DIR="$OTBUS_HOME/state"
start_service ingest-opcua otbus_ingest_opcua 8091 OTBUS_TENANT="$DEMO_TENANT" \
  OTBUS_SOURCES_FILE=deploy/config/sources.example.yaml OTBUS_STATE_DIR="$OTBUS_HOME/state" \
  OTBUS_DISCOVERY_TARGETS='["127.0.0.1:4840"]'
start_service ingest-mqtt otbus_ingest_mqtt 8092 OTBUS_TENANT="$DEMO_TENANT" \
  OTBUS_SOURCES_FILE=deploy/config/sources.example.yaml OTBUS_STATE_DIR="$OTBUS_HOME/state"
MQTT_URL=${OTBUS_MQTT_URL:-mqtt://127.0.0.1:11883}
start_sim mqtt-sim "publishing JSON" mqtt-json --url "$MQTT_URL" --tags 100 --rate 100
start_sim sparkplug-sim "Sparkplug B group" sparkplug --url "$MQTT_URL" --group plant1 --tags 100
# the seed's AI agent: recommendations into Lakebase's agentic_hmi.agent_recommendations (live page)
start_sim recommendations-sim "recommendations: writing" recommendations --database-url "$OTBUS_DATABASE_URL" --tenant "$DEMO_TENANT" \
  --interval 10

cat <<MSG

otbus is running (logs in $RUN/*.log):
  ingest-http   http://127.0.0.1:8088/docs      diagnostics: http://127.0.0.1:8088/system/zerobus/diagnostics
  event store   http://127.0.0.1:8081/docs
  live page     http://127.0.0.1:8084/?token=$DEMO_KEY   (notify bridge: WebSocket ws://127.0.0.1:8084/ws)
  normalizer    http://127.0.0.1:8082/metrics
  zerobus-sink  http://127.0.0.1:8083/diagnostics  (local Delta tables under $OTBUS_HOME/delta)
  ingest-opcua  http://127.0.0.1:8091/api/v1/sources   (subscribes to the simulator's OPC-UA server on :4840)
  ingest-modbus http://127.0.0.1:8093/api/v1/sources   (polls the simulator's Modbus device on :5020)
  ingest-mqtt   http://127.0.0.1:8092/api/v1/sources   (the simulator's MQTT JSON and Sparkplug B publishers)

Query the stored, normalized events (tenant '$DEMO_TENANT'):
  curl -s -H 'Authorization: Bearer $DEMO_KEY' 'http://127.0.0.1:8081/api/v1/events?limit=5' | python3 -m json.tool
  curl -s -H 'Authorization: Bearer $DEMO_KEY' 'http://127.0.0.1:8081/api/v1/statistics'
  curl -s -H 'Authorization: Bearer $DEMO_KEY' 'http://127.0.0.1:8081/api/v1/events?subject_prefix=plant1/pressing&limit=5'

Read the Delta table the Zerobus sink writes (main.$DEMO_TENANT.tag_events):
  uv run --no-sync python -c "from deltalake import DeltaTable; t = DeltaTable('$OTBUS_HOME/delta/main/$DEMO_TENANT/tag_events').to_pyarrow_table(); print(t.num_rows, 'rows'); print(t.slice(t.num_rows - 3).to_pylist())"

The simulator now posts Ignition Event Streams style batches (Ctrl-C to stop it; 'make stop' stops everything).
MSG
exec uv run --no-sync python -m otbus_ot_simulator http --url http://127.0.0.1:8088 --api-key "$DEMO_KEY" \
  --tags "${OTBUS_DEMO_TAGS:-200}" --rate "${OTBUS_DEMO_RATE:-500}" ${OTBUS_DEMO_SECONDS:+--seconds "$OTBUS_DEMO_SECONDS"}
