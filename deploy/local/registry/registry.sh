#!/usr/bin/env bash
# Local Confluent-compatible schema registry (Apicurio Registry 3, plain JVM, no Docker, no Kafka).
#
#   registry.sh setup    fetch + unpack the distribution (Maven, see pom.xml); idempotent
#   registry.sh start    setup if needed, start detached, wait until ready; idempotent
#   registry.sh stop     stop it (TERM, then KILL after a timeout); idempotent
#   registry.sh status   exit 0 = running and ready, 1 = running but not ready, 3 = stopped
#
# Confluent-compatible base URL: http://127.0.0.1:${OTBUS_REGISTRY_PORT}/apis/ccompat/v7
#
# Environment:
#   OTBUS_HOME                    state root (default: <repo>/.otbus); files go to $OTBUS_HOME/registry
#   OTBUS_REGISTRY_PORT           HTTP port (default 18081)
#   OTBUS_REGISTRY_HOST           bind address (default 127.0.0.1)
#   OTBUS_REGISTRY_STORAGE        file (default: H2 database under data/, survives restarts) | mem
#   OTBUS_REGISTRY_COMPATIBILITY  if set (e.g. BACKWARD), PUT as the global compatibility after start
#                                 (Apicurio's default is NONE, Confluent's is BACKWARD)
#   OTBUS_REGISTRY_START_TIMEOUT  seconds to wait for readiness (default 90)
#   OTBUS_REGISTRY_JAVA_OPTS      JVM options (default: small heap, serial GC, C1 only)
#   JAVA_HOME                     Java 17+ (default: java on PATH)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/../../.." && pwd)"
OTBUS_HOME="${OTBUS_HOME:-$REPO_ROOT/.otbus}"
RDIR="$OTBUS_HOME/registry"
DIST="$RDIR/dist"
DATA="$RDIR/data"
LOGDIR="$RDIR/logs"
LOG="$LOGDIR/registry.log"
PIDFILE="$RDIR/registry.pid"
TMPD="$RDIR/tmp"

PORT="${OTBUS_REGISTRY_PORT:-18081}"
HOST="${OTBUS_REGISTRY_HOST:-127.0.0.1}"
STORAGE="${OTBUS_REGISTRY_STORAGE:-file}"
START_TIMEOUT="${OTBUS_REGISTRY_START_TIMEOUT:-90}"
STOP_TIMEOUT=30
JAVA_OPTS_DEFAULT="-Xms16m -Xmx192m -XX:+UseSerialGC -XX:TieredStopAtLevel=1"
JAVA_OPTS="${OTBUS_REGISTRY_JAVA_OPTS:-$JAVA_OPTS_DEFAULT}"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"

BASE="http://$HOST:$PORT"
CCOMPAT="$BASE/apis/ccompat/v7"

log() { echo "registry: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# stamp = hash of pom.xml: a changed pom makes setup fetch again
stamp() { sha256sum "$HERE/pom.xml" | cut -d' ' -f1; }
first_file() { local f; for f in "$@"; do [[ -f "$f" ]] && { echo "$f"; return 0; }; done; return 0; }
runner_jar() { first_file "$DIST"/apicurio-registry-app-*-runner.jar; }
is_setup() {
  [[ -f "$DIST/.stamp" && "$(cat "$DIST/.stamp")" == "$(stamp)" && -n "$(runner_jar)" && -d "$DIST/lib" ]]
}

http_code() { curl -s -o /dev/null -m 3 -w '%{http_code}' "$1" 2>/dev/null || true; }

pid_alive() {
  # the pid file names a live process that is our registry JVM
  [[ -f "$PIDFILE" ]] || return 1
  local pid; pid="$(cat "$PIDFILE" 2>/dev/null)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  local cmdline
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
  [[ "$cmdline" == *apicurio-registry-app-*-runner.jar* ]]
}

is_ready() {
  [[ "$(http_code "$BASE/health/ready")" == 200 && "$(http_code "$CCOMPAT/subjects")" == 200 ]]
}

port_busy() {
  # something (not necessarily us) accepts connections on the port
  (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null
}

check_java() {
  command -v "$JAVA" >/dev/null 2>&1 || die "java not found (install openjdk-17-jre-headless or set JAVA_HOME)"
  local v
  v="$("$JAVA" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)"
  [[ -n "$v" && "$v" -ge 17 ]] || die "Java 17+ required, found: $("$JAVA" -version 2>&1 | head -n1)"
}

cmd_setup() {
  if is_setup; then
    log "already set up: $(runner_jar)"
    return 0
  fi
  if pid_alive; then
    die "registry is running from an outdated distribution; run '$0 stop' first"
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found (apt-get install maven)"
  command -v tar >/dev/null 2>&1 || die "tar not found"
  check_java
  mkdir -p "$RDIR"
  local new="$RDIR/dist.new"
  rm -rf "$new"
  mkdir -p "$new"
  log "fetching the Apicurio Registry distribution with Maven (about 110 MB the first time)..."
  if ! mvn -B -q -f "$HERE/pom.xml" dependency:copy -Dotbus.registry.dist="$new" >"$RDIR/setup.log" 2>&1; then
    tail -n 30 "$RDIR/setup.log" >&2
    die "maven failed (full log: $RDIR/setup.log)"
  fi
  local tgz
  tgz="$(first_file "$new"/download/apicurio-registry-app-*-all.tar.gz)"
  [[ -n "$tgz" ]] || die "maven did not produce the distribution tarball (see $RDIR/setup.log)"
  tar --no-same-owner -xzf "$tgz" -C "$new"
  rm -rf "$new/download" "$new/.mvn-build"
  [[ -n "$(first_file "$new"/apicurio-registry-app-*-runner.jar)" ]] || die "unexpected tarball layout (no *-runner.jar)"
  stamp >"$new/.stamp"
  rm -rf "$DIST"
  mv "$new" "$DIST"
  log "set up: $(runner_jar)"
}

cmd_start() {
  if pid_alive; then
    if is_ready; then
      log "already running (pid $(cat "$PIDFILE")): $CCOMPAT"
      return 0
    fi
    log "already running (pid $(cat "$PIDFILE")), waiting for readiness..."
  else
    rm -f "$PIDFILE"
    is_setup || cmd_setup
    check_java
    if port_busy; then
      die "port $HOST:$PORT is already in use by another process (set OTBUS_REGISTRY_PORT)"
    fi
    mkdir -p "$DATA" "$LOGDIR" "$TMPD"
    local dsurl
    case "$STORAGE" in
      file) dsurl="jdbc:h2:file:$DATA/registry" ;;
      mem)  dsurl="jdbc:h2:mem:otbus_registry" ;;
      *)    die "OTBUS_REGISTRY_STORAGE must be 'file' or 'mem', not '$STORAGE'" ;;
    esac
    local jar; jar="$(runner_jar)"
    [[ -f "$LOG" ]] && mv -f "$LOG" "$LOG.1"
    : >"$LOG"
    rm -f "$PIDFILE"
    # setsid: own session, so the JVM survives the caller's terminal/job; the inner shell writes
    # its own pid (= the JVM's, thanks to exec) even if setsid had to fork.
    # shellcheck disable=SC2086,SC2016
    (
      cd "$RDIR"
      exec setsid bash -c 'echo $$ >"$0"; log=$1; shift; exec nohup "$@" </dev/null >>"$log" 2>&1' \
        "$PIDFILE" "$LOG" \
        "$JAVA" $JAVA_OPTS \
        -Djava.io.tmpdir="$TMPD" \
        -Dquarkus.http.host="$HOST" \
        -Dquarkus.http.port="$PORT" \
        -Dquarkus.http.access-log.enabled=false \
        -Dapicurio.storage.kind=sql \
        -Dapicurio.storage.sql.kind=h2 \
        -Dapicurio.datasource.url="$dsurl" \
        -Dapicurio.ccompat.use-canonical-hash=true \
        -Dapicurio.import.work-dir="$TMPD" \
        -Dapicurio.storage.snapshot.location="$TMPD" \
        -jar "$jar"
    ) </dev/null >/dev/null 2>&1 &
    local i
    for ((i = 0; i < 50; i++)); do [[ -s "$PIDFILE" ]] && break; sleep 0.1; done
    [[ -s "$PIDFILE" ]] || die "could not start the JVM (log: $LOG)"
    log "started pid $(cat "$PIDFILE") (storage=$STORAGE, log $LOG)"
  fi

  local t0 now
  t0=$(date +%s)
  while ! is_ready; do
    # (kill -0, not pid_alive: for a moment after launch the pid is still the exec'ing shell)
    if ! kill -0 "$(cat "$PIDFILE" 2>/dev/null || echo none)" 2>/dev/null; then
      tail -n 40 "$LOG" >&2 || true
      rm -f "$PIDFILE"
      die "registry exited during start-up (log: $LOG)"
    fi
    now=$(date +%s)
    if (( now - t0 >= START_TIMEOUT )); then
      tail -n 40 "$LOG" >&2 || true
      cmd_stop || true
      die "not ready after ${START_TIMEOUT}s (log: $LOG)"
    fi
    sleep 0.5
  done
  if [[ -n "${OTBUS_REGISTRY_COMPATIBILITY:-}" ]]; then
    curl -sf -m 5 -X PUT -H 'Content-Type: application/vnd.schemaregistry.v1+json' \
      -d "{\"compatibility\":\"$OTBUS_REGISTRY_COMPATIBILITY\"}" "$CCOMPAT/config" >/dev/null \
      || die "could not set global compatibility to $OTBUS_REGISTRY_COMPATIBILITY"
  fi
  log "ready after $(( $(date +%s) - t0 ))s: $CCOMPAT"
}

cmd_stop() {
  if ! pid_alive; then
    rm -f "$PIDFILE"
    log "not running"
    return 0
  fi
  local pid i
  pid="$(cat "$PIDFILE")"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_TIMEOUT * 4; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid still alive after ${STOP_TIMEOUT}s, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$PIDFILE"
  log "stopped (pid $pid)"
}

cmd_status() {
  if pid_alive; then
    if is_ready; then
      local rss
      rss=$(ps -o rss= -p "$(cat "$PIDFILE")" 2>/dev/null | tr -d ' ')
      echo "registry: running, ready (pid $(cat "$PIDFILE"), rss $(( ${rss:-0} / 1024 )) MB): $CCOMPAT"
      return 0
    fi
    echo "registry: running (pid $(cat "$PIDFILE")) but not ready: $CCOMPAT"
    return 1
  fi
  echo "registry: stopped"
  return 3
}

case "${1:-}" in
  setup)  cmd_setup ;;
  start)  cmd_start ;;
  stop)   cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 setup|start|stop|status" >&2; exit 2 ;;
esac
