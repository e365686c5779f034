#!/usr/bin/env bash
# Runs every check and every test: lint, format, types, compose config, unit,
# integration and end-to-end tests against real Kafka, PostgreSQL and friends.
# Infrastructure is started here (or reused when already running); what this script
# started is stopped again when it ends under CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.local/bin:$PATH"

bash scripts/bootstrap.sh

echo "== lint, format, types"
uv run ruff check .
uv run ruff format --check .
uv run mypy

echo "== docker-compose.yml"
if ! command -v docker-compose >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq docker-compose) >/dev/null 2>&1 ||
    { echo "test: could not install docker-compose to validate docker-compose.yml" >&2; exit 1; }
fi
docker-compose -f docker-compose.yml config --quiet

if ! command -v chromium >/dev/null 2>&1; then  # the live page is tested in a real browser
  echo "test: installing chromium" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) \
    >/dev/null 2>&1 || { echo "test: could not install chromium (Debian package) for the live page test" >&2; exit 1; }
fi

# the Helm chart is rendered by Helm itself (tests/deploy); built from source with Go when absent
HELM_VERSION=v3.16.4
if ! command -v helm >/dev/null 2>&1 && [[ ! -x .otbus/tools/bin/helm ]]; then
  echo "test: building helm $HELM_VERSION (go install) for the chart test" >&2
  GOBIN="$PWD/.otbus/tools/bin" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >/dev/null 2>&1 ||
    { echo "test: could not build helm $HELM_VERSION with go install" >&2; exit 1; }
fi

started=()
for c in kafka postgres mosquitto; do
  bash deploy/local/infra.sh status "$c" >/dev/null 2>&1 || started+=("$c")
done
cleanup() {
  if [[ ${CI:-} == true && ${#started[@]} -gt 0 ]]; then
    bash deploy/local/infra.sh stop "${started[@]}" || true
    bash deploy/local/registry/registry.sh stop >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
bash deploy/local/infra.sh start

echo "== tests"
uv run pytest "$@"
