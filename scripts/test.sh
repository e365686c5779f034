#!/usr/bin/env bash
# Runs every check and every test: lint, format, types, compose config, unit,
# integration and end-to-end tests against real Kafka, PostgreSQL and friends.
# Infrastructure is started here (or reused when already running); what this script
# started is stopped again when it ends under CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.local/bin:$PATH"

bash scripts/bootstrap.sh

# The Helm chart is rendered by Helm itself (tests/deploy). Debian has no helm package: it is
# built from source with Go, in the background while the checks below run.
HELM_VERSION=v3.16.4
helm_build=""
if ! command -v helm >/dev/null 2>&1 && [[ ! -x .otbus/tools/bin/helm ]]; then
  echo "test: building helm $HELM_VERSION (go install) in the background for the chart test" >&2
  mkdir -p .otbus/tools
  (GOBIN="$PWD/.otbus/tools/bin" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >.otbus/tools/helm-build.log 2>&1) &
  helm_build=$!
  trap 'kill "$helm_build" 2>/dev/null || true' EXIT  # a failed check does not leave it running
fi

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

started=()
for c in kafka postgres mosquitto; do
  bash deploy/local/infra.sh status "$c" >/dev/null 2>&1 || started+=("$c")
done
cleanup() {
  [[ -z $helm_build ]] || kill "$helm_build" 2>/dev/null || true
  if [[ ${CI:-} == true && ${#started[@]} -gt 0 ]]; then
    bash deploy/local/infra.sh stop "${started[@]}" || true
    bash deploy/local/registry/registry.sh stop >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
bash deploy/local/infra.sh start

if [[ -n $helm_build ]] && ! wait "$helm_build"; then
  echo "test: could not build helm $HELM_VERSION (see .otbus/tools/helm-build.log)" >&2
  exit 1
fi

echo "== tests"
uv run pytest "$@"
