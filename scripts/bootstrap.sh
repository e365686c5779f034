#!/usr/bin/env bash
# Installs what the repo needs on a fresh Debian 12 machine: uv, the Python workspace,
# and (through deploy/local/infra.sh setup) Kafka jars, PostgreSQL and Mosquitto.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v uv >/dev/null 2>&1; then
  echo "bootstrap: installing uv" >&2
  python3 -m pip install --quiet --user uv 2>/dev/null || python3 -m pip install --quiet uv
  export PATH="$HOME/.local/bin:$PATH"
fi
uv sync --all-packages --frozen --quiet
bash deploy/local/infra.sh setup "$@"
