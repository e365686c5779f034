#!/usr/bin/env bash
# `make bench`: start (or reuse) Kafka and PostgreSQL, run the benchmarks, write
# bench/out/report.json and print the table. See bench/README.md.
#
#   BENCH_QUICK=1 bash bench/run.sh                 # the short run (~3 minutes)
#   BENCH_ONLY=normalizer,e2e bash bench/run.sh     # some of: ingest, normalizer, event_store, e2e, adapters, zerobus, notify
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.local/bin:$PATH"

bash scripts/bootstrap.sh kafka postgres   # uv, the workspace venv, Kafka jars and PostgreSQL

# The HTTP load generator: wrk from Debian (bench/poster.py is used when it cannot be installed).
if ! command -v wrk >/dev/null 2>&1; then
  echo "bench: installing wrk" >&2
  { apt-get install -y -qq wrk || { apt-get update -qq && apt-get install -y -qq wrk; }; } >/dev/null 2>&1 ||
    echo "bench: wrk could not be installed; the HTTP benchmark uses bench/poster.py" >&2
fi

# The live page's latency is measured in Debian's chromium (the notify benchmark).
if ! command -v chromium >/dev/null 2>&1; then
  echo "bench: installing chromium" >&2
  { apt-get install -y -qq --no-install-recommends chromium || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; }; } >/dev/null 2>&1 ||
    echo "bench: chromium could not be installed; notify_bridge_browser will report why it did not run" >&2
fi

bash deploy/local/infra.sh start kafka postgres
eval "$(bash deploy/local/infra.sh env)"
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
mkdir -p bench/out
exec uv run --frozen python -m bench.main "$@"
