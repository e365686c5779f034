#!/usr/bin/env bash
# Local infrastructure for otbus on one Debian 12 machine, without Docker:
#   Kafka (KRaft, single node), PostgreSQL 15 and Mosquitto 2 as plain processes.
#
#   infra.sh setup  [kafka|postgres|mosquitto ...]  install/download what is missing (idempotent)
#   infra.sh start  [kafka|postgres|mosquitto ...]  setup if needed, start, wait until ready
#   infra.sh stop   [kafka|postgres|mosquitto ...]  graceful stop (TERM, then KILL after a timeout)
#   infra.sh status [kafka|postgres|mosquitto ...]  one line per component; exit 3 if one is down
#   infra.sh env                                    export lines for the OTBUS_* variables
#   infra.sh clean                                  stop all, delete all data (keeps downloaded jars)
#
# All state lives in ${OTBUS_HOME:-<repo>/.otbus}. See deploy/local/README.md.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/../.." && pwd)

OTBUS_HOME=${OTBUS_HOME:-$REPO_ROOT/.otbus}
case $OTBUS_HOME in
  /*) ;;
  *) OTBUS_HOME=$PWD/$OTBUS_HOME ;;
esac

HOST=127.0.0.1
KAFKA_PORT=${OTBUS_KAFKA_PORT:-19092}
KAFKA_CONTROLLER_PORT=${OTBUS_KAFKA_CONTROLLER_PORT:-19093}
PG_PORT=${OTBUS_PG_PORT:-15432}
MQTT_PORT=${OTBUS_MQTT_PORT:-11883}
START_TIMEOUT=${OTBUS_START_TIMEOUT:-90}
STOP_TIMEOUT=${OTBUS_STOP_TIMEOUT:-30}

ALL_COMPONENTS=(kafka postgres mosquitto)

# --- layout -------------------------------------------------------------------
CACHE_DIR=$OTBUS_HOME/cache                 # survives `clean`
KAFKA_LIB=$CACHE_DIR/kafka/lib
KAFKA_POM=$SCRIPT_DIR/kafka/pom.xml
KAFKA_LOG4J=$SCRIPT_DIR/kafka/log4j2.properties
KAFKA_DIR=$OTBUS_HOME/kafka
KAFKA_DATA=$KAFKA_DIR/data
KAFKA_LOGS=$KAFKA_DIR/logs
KAFKA_PROPS=$KAFKA_DIR/server.properties
KAFKA_PID=$KAFKA_DIR/kafka.pid
KAFKA_CLUSTER_ID_FILE=$KAFKA_DIR/cluster.id
KAFKA_MAIN=kafka.Kafka
KAFKA_STORAGE_MAIN=kafka.tools.StorageTool

PG_BIN=${OTBUS_PG_BIN:-/usr/lib/postgresql/15/bin}
PG_OS_USER=postgres                          # only used when running as root
PG_DIR=$OTBUS_HOME/pg
PG_DATA=$PG_DIR/data
PG_LOGS=$PG_DIR/logs
PG_RUN=$PG_DIR/run                           # unix socket directory
PG_PASSWORD=otbus                            # for both `postgres` and `otbus`

MQ_BIN=${OTBUS_MOSQUITTO_BIN:-/usr/sbin/mosquitto}
MQ_DIR=$OTBUS_HOME/mosquitto
MQ_CONF=$MQ_DIR/mosquitto.conf
MQ_DATA=$MQ_DIR/data
MQ_LOG=$MQ_DIR/mosquitto.log
MQ_PID=$MQ_DIR/mosquitto.pid

LOCAL_KAFKA_BOOTSTRAP=$HOST:$KAFKA_PORT
LOCAL_DATABASE_URL=postgresql://otbus:$PG_PASSWORD@$HOST:$PG_PORT/otbus
LOCAL_DATABASE_ADMIN_URL=postgresql://postgres:$PG_PASSWORD@$HOST:$PG_PORT/otbus
LOCAL_MQTT_URL=mqtt://$HOST:$MQTT_PORT

# --- helpers ------------------------------------------------------------------
log() { printf 'infra: %s\n' "$*" >&2; }
die() { printf 'infra: ERROR: %s\n' "$*" >&2; exit 1; }

is_root() { [[ $EUID -eq 0 ]]; }

now_ms() { date +%s%3N; }

# seconds since a now_ms timestamp, e.g. "4.2s"
elapsed() {
  local ms=$(($(now_ms) - $1))
  printf '%d.%ds' $((ms / 1000)) $((ms % 1000 / 100))
}

# Prints the last lines of each existing file given, for error messages.
show_tail() {
  local f
  for f in "$@"; do
    [[ -s $f ]] || continue
    printf '\n----- last lines of %s -----\n' "$f" >&2
    tail -n 40 -- "$f" >&2
  done
  printf '\n' >&2
}

file_size() { stat -c %s -- "$1" 2>/dev/null || echo 0; }

# Like show_tail for one file, but only what was written after byte offset $2.
show_new_tail() {
  local f=$1 off=$2
  [[ -s $f ]] || return 0
  (($(file_size "$f") >= off)) || off=0
  (($(file_size "$f") > off)) || return 0
  printf '\n----- last lines of %s (this start) -----\n' "$f" >&2
  tail -c +"$((off + 1))" -- "$f" | tail -n 40 >&2
  printf '\n' >&2
}

with_lock() {
  mkdir -p -- "$OTBUS_HOME"
  # fd 9 holds the lock; every daemon we spawn gets `9>&-` so it does not keep it.
  exec 9>>"$OTBUS_HOME/.infra.lock"
  flock -w 600 9 || die "could not lock $OTBUS_HOME/.infra.lock (another infra.sh still running?)"
}

read_pid() {
  local f=$1 pid=""
  if [[ -s $f ]]; then read -r pid <"$f" || true; fi
  [[ $pid =~ ^[0-9]+$ ]] && printf '%s' "$pid"
}

# alive and not a zombie
proc_alive() {
  local pid=$1 state
  kill -0 "$pid" 2>/dev/null || return 1
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ $state != Z && $state != X ]]
}

proc_cmd_has() {
  local pid=$1 needle=$2
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$needle"
}

# pid from a pid file if that process is alive and its command line contains $2
running_pid() {
  local pid
  pid=$(read_pid "$1") || return 1
  proc_alive "$pid" && proc_cmd_has "$pid" "$2" && printf '%s' "$pid"
}

port_open() {
  # shellcheck disable=SC2016 # $1/$2 are expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' port-check "$HOST" "$1" 2>/dev/null
}

# TERM, wait up to STOP_TIMEOUT, then KILL.
stop_pid() {
  local name=$1 pid=$2 deadline
  log "$name: stopping (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$(($(now_ms) + STOP_TIMEOUT * 1000))
  while proc_alive "$pid"; do
    if (($(now_ms) >= deadline)); then
      log "$name: still running after ${STOP_TIMEOUT}s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
      proc_alive "$pid" && die "$name: pid $pid survived SIGKILL"
      break
    fi
    sleep 0.1
  done
  log "$name: stopped"
}

# Spawn a daemon in its own session, detached from our stdio, writing its pid.
spawn() {
  local pidfile=$1 outfile=$2
  shift 2
  rm -f -- "$pidfile"
  # shellcheck disable=SC2016 # expanded by the inner bash
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' otbus-spawn "$pidfile" "$@" \
    </dev/null >>"$outfile" 2>&1 9>&- &
  local i
  for ((i = 0; i < 100; i++)); do
    [[ -s $pidfile ]] && return 0
    sleep 0.05
  done
  die "process did not start: $*"
}

APT_UPDATED=""
apt_install() {
  local sudo=() aptlog
  if ! is_root; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo=(sudo -n)
    else
      die "missing Debian packages: $*; install them as root: apt-get install -y $*"
    fi
  fi
  mkdir -p -- "$OTBUS_HOME"
  aptlog=$OTBUS_HOME/apt.log
  log "installing Debian packages: $* (log: $aptlog)"
  if [[ -z $APT_UPDATED ]]; then
    "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300 update >>"$aptlog" 2>&1 || {
      show_tail "$aptlog"
      die "apt-get update failed"
    }
    APT_UPDATED=1
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "$@" >>"$aptlog" 2>&1 || {
    show_tail "$aptlog"
    die "apt-get install $* failed"
  }
}

# --- component selection / external infra -------------------------------------
normalize_component() {
  case $1 in
    kafka) echo kafka ;;
    postgres | postgresql | pg) echo postgres ;;
    mosquitto | mqtt) echo mosquitto ;;
    *) die "unknown component '$1' (expected: kafka, postgres, mosquitto)" ;;
  esac
}

COMPONENTS=()
select_components() {
  COMPONENTS=()
  local c
  if (($# == 0)); then
    COMPONENTS=("${ALL_COMPONENTS[@]}")
  else
    for c in "$@"; do COMPONENTS+=("$(normalize_component "$c")"); done
  fi
}

# The variable a component is reached through, and its local value.
component_var() {
  case $1 in
    kafka) echo OTBUS_KAFKA_BOOTSTRAP ;;
    postgres) echo OTBUS_DATABASE_URL ;;
    mosquitto) echo OTBUS_MQTT_URL ;;
  esac
}
component_local_value() {
  case $1 in
    kafka) echo "$LOCAL_KAFKA_BOOTSTRAP" ;;
    postgres) echo "$LOCAL_DATABASE_URL" ;;
    mosquitto) echo "$LOCAL_MQTT_URL" ;;
  esac
}
component_addr() {
  case $1 in
    kafka) echo "$HOST:$KAFKA_PORT" ;;
    postgres) echo "$HOST:$PG_PORT" ;;
    mosquitto) echo "$HOST:$MQTT_PORT" ;;
  esac
}

# External = the user set the variable to something other than our local value
# (so `eval "$(infra.sh env)"` followed by `infra.sh start` still starts ours).
is_external() {
  local var value
  var=$(component_var "$1")
  value=${!var:-}
  [[ -n $value && $value != "$(component_local_value "$1")" ]]
}

# --- Java / Kafka -------------------------------------------------------------
JAVA=""
find_java() {
  [[ -n $JAVA ]] && return 0
  if [[ -n ${OTBUS_JAVA:-} ]]; then
    JAVA=$OTBUS_JAVA
  elif command -v java >/dev/null 2>&1; then
    JAVA=$(command -v java)
  elif [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then
    JAVA=$JAVA_HOME/bin/java
  else
    apt_install openjdk-17-jre-headless
    JAVA=$(command -v java) || die "java not found after installing openjdk-17-jre-headless"
  fi
  local line major
  line=$("$JAVA" -version 2>&1 | head -n 1)
  major=$(sed -E -n 's/.*version "([0-9]+).*/\1/p' <<<"$line")
  [[ $major =~ ^[0-9]+$ && $major -ge 17 ]] ||
    die "Kafka needs Java 17 or newer; $JAVA is: $line (set OTBUS_JAVA to another java)"
}

pom_hash() { sha256sum -- "$KAFKA_POM" | cut -d' ' -f1; }

kafka_jars_ok() {
  [[ -f $KAFKA_LIB/.pom.sha256 ]] &&
    [[ $(<"$KAFKA_LIB/.pom.sha256") == "$(pom_hash)" ]] &&
    compgen -G "$KAFKA_LIB/kafka_2.13-*.jar" >/dev/null
}

setup_kafka() {
  find_java
  if kafka_jars_ok; then
    log "kafka: jars present in $KAFKA_LIB"
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || apt_install maven
  mkdir -p -- "$CACHE_DIR/kafka"
  local tmp mvn_extra=() mvnlog=$CACHE_DIR/kafka/mvn.log t0
  read -r -a mvn_extra <<<"${OTBUS_MVN_OPTS:-}"
  tmp=$(mktemp -d "$CACHE_DIR/kafka/lib.tmp.XXXXXX")
  log "kafka: fetching jars with Maven into $KAFKA_LIB (log: $mvnlog)"
  t0=$(now_ms)
  if ! mvn -q -B -f "$KAFKA_POM" "${mvn_extra[@]}" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp" >"$mvnlog" 2>&1; then
    rm -rf -- "$tmp"
    show_tail "$mvnlog"
    die "kafka: Maven could not fetch the Kafka jars (see $mvnlog)"
  fi
  compgen -G "$tmp/kafka_2.13-*.jar" >/dev/null || {
    rm -rf -- "$tmp"
    die "kafka: Maven ran but no kafka_2.13 jar arrived in $tmp"
  }
  pom_hash >"$tmp/.pom.sha256"
  chmod 755 -- "$tmp"
  rm -rf -- "$KAFKA_LIB"
  mv -- "$tmp" "$KAFKA_LIB"
  log "kafka: $(find "$KAFKA_LIB" -name '*.jar' | wc -l) jars fetched in $(elapsed "$t0")"
}

kafka_write_config() {
  mkdir -p -- "$KAFKA_DATA" "$KAFKA_LOGS"
  cat >"$KAFKA_PROPS" <<EOF
# Generated by deploy/local/infra.sh on every start: edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DATA

# one node: everything replicated once, transactions usable
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
delete.topic.enable=true

# After a kill -9 the controller keeps the old broker registration until its session
# expires (default 9s) before the restarted broker may register; the heartbeat goes to
# the controller in the same JVM, so a short session is safe and restarts are fast.
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=3000

num.network.threads=3
num.io.threads=8
num.recovery.threads.per.data.dir=2
log.retention.hours=168
log.cleaner.dedupe.buffer.size=33554432
EOF
}

kafka_jvm_opts() {
  local heap
  read -r -a heap <<<"${OTBUS_KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"
  KAFKA_JVM_OPTS=("${heap[@]}"
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
    -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$KAFKA_LOG4J" "-Dkafka.logs.dir=$KAFKA_LOGS")
}

kafka_format_if_needed() {
  [[ -f $KAFKA_DATA/meta.properties ]] && return 0
  local cid
  if [[ -s $KAFKA_CLUSTER_ID_FILE ]]; then
    cid=$(<"$KAFKA_CLUSTER_ID_FILE")
  else
    # a Kafka cluster id is 16 random bytes, base64url without padding (what `random-uuid` prints)
    cid=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    printf '%s\n' "$cid" >"$KAFKA_CLUSTER_ID_FILE"
  fi
  log "kafka: formatting storage (cluster id $cid)"
  kafka_jvm_opts
  if ! "$JAVA" "${KAFKA_JVM_OPTS[@]}" -cp "$KAFKA_LIB/*" "$KAFKA_STORAGE_MAIN" format \
    -t "$cid" -c "$KAFKA_PROPS" --ignore-formatted >"$KAFKA_LOGS/format.log" 2>&1 9>&-; then
    show_tail "$KAFKA_LOGS/format.log"
    die "kafka: formatting storage failed"
  fi
}

# A real Kafka Metadata request (v8) over bash's /dev/tcp; succeeds only when the broker
# answers with at least one live broker.
kafka_probe() {
  local out b=()
  # shellcheck disable=SC2016 # expanded by the inner bash
  out=$(timeout 5 bash -c '
    exec 3<>"/dev/tcp/$1/$2" || exit 1
    # size=28 | api_key=3 (Metadata) | version=8 | correlation_id=42 | client_id "otbus-probe"
    # | topics=[] | allow_auto_topic_creation=false | include_*_authorized_operations=false,false
    printf "\x00\x00\x00\x1c\x00\x03\x00\x08\x00\x00\x00\x2a\x00\x0botbus-probe\x00\x00\x00\x00\x00\x00\x00" >&3
    head -c 16 <&3 | od -An -v -tu1
  ' kafka-probe "$HOST" "$KAFKA_PORT" 2>/dev/null) || return 1
  read -r -a b <<<"$(tr '\n' ' ' <<<"$out")"
  ((${#b[@]} == 16)) || return 1
  # response: size(4) correlation_id(4) throttle_time_ms(4) brokers.length(4)
  ((b[4] == 0 && b[5] == 0 && b[6] == 0 && b[7] == 42)) || return 1
  (((b[12] << 24 | b[13] << 16 | b[14] << 8 | b[15]) >= 1))
}

kafka_cds_key() {
  local real
  real=$(readlink -f -- "$JAVA")
  printf '%s %s %s %s' "$(pom_hash)" "$KAFKA_LIB" "$real" \
    "$(stat -c '%s-%Y' -- "$(dirname -- "$real")/../lib/modules" 2>/dev/null || true)" |
    sha256sum | cut -c1-12
}

kafka_pid() { running_pid "$KAFKA_PID" "$KAFKA_MAIN"; }

kafka_show_logs() {
  show_new_tail "$KAFKA_LOGS/server.log" "$KAFKA_LOG_OFF"
  show_new_tail "$KAFKA_LOGS/kafka.out" "$KAFKA_OUT_OFF"
}

kafka_wait_ready() {
  local pid=$1 t0=$2 deadline
  deadline=$((t0 + START_TIMEOUT * 1000))
  until kafka_probe; do
    if ! proc_alive "$pid"; then
      kafka_show_logs
      die "kafka: the broker process exited during startup (logs: $KAFKA_LOGS)"
    fi
    if (($(now_ms) >= deadline)); then
      kafka_show_logs
      die "kafka: not answering Metadata on $HOST:$KAFKA_PORT after ${START_TIMEOUT}s (pid $pid, logs: $KAFKA_LOGS)"
    fi
    sleep 0.2
  done
  log "kafka: ready on $HOST:$KAFKA_PORT (pid $pid, $(elapsed "$t0"))"
}

# Launches the broker and sets KAFKA_STARTED_PID (empty if it was already running).
KAFKA_STARTED_PID=""
KAFKA_T0=0
KAFKA_LOG_OFF=0
KAFKA_OUT_OFF=0
kafka_launch() {
  KAFKA_STARTED_PID=""
  KAFKA_T0=$(now_ms)
  local pid
  if pid=$(kafka_pid); then
    if kafka_probe; then
      log "kafka: already running on $HOST:$KAFKA_PORT (pid $pid)"
    else
      log "kafka: process $pid is up but not answering yet; waiting"
      KAFKA_STARTED_PID=$pid
    fi
    return 0
  fi
  local p
  for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    port_open "$p" && die "kafka: port $HOST:$p is already in use by another process (set OTBUS_KAFKA_PORT / OTBUS_KAFKA_CONTROLLER_PORT, or stop it)"
  done
  kafka_jars_ok || setup_kafka
  find_java
  kafka_write_config
  kafka_format_if_needed
  kafka_jvm_opts
  local cds=() jsa
  # Class-data sharing (AppCDS): the first start records the loaded classes when the
  # broker exits (on `stop`); later starts map them, ~1s faster. The archive name
  # depends on the jars and the JVM, so a stale archive is never used.
  if [[ ${OTBUS_KAFKA_CDS:-1} == 1 ]]; then
    jsa=$CACHE_DIR/kafka/kafka-$(kafka_cds_key).jsa
    if [[ -s $jsa ]]; then
      cds=("-XX:SharedArchiveFile=$jsa" -Xlog:cds=off -Xlog:cds+dynamic=off)
    else
      rm -f -- "$CACHE_DIR"/kafka/kafka-*.jsa
      cds=("-XX:ArchiveClassesAtExit=$jsa" -Xlog:cds=off -Xlog:cds+dynamic=off)
    fi
  fi
  log "kafka: starting broker on $HOST:$KAFKA_PORT (controller $HOST:$KAFKA_CONTROLLER_PORT)"
  KAFKA_LOG_OFF=$(file_size "$KAFKA_LOGS/server.log")
  KAFKA_OUT_OFF=$(file_size "$KAFKA_LOGS/kafka.out")
  printf '\n===== %s start =====\n' "$(date -Is)" >>"$KAFKA_LOGS/kafka.out"
  (cd -- "$KAFKA_DIR" && spawn "$KAFKA_PID" "$KAFKA_LOGS/kafka.out" \
    "$JAVA" "${KAFKA_JVM_OPTS[@]}" "${cds[@]}" -cp "$KAFKA_LIB/*" "$KAFKA_MAIN" "$KAFKA_PROPS")
  KAFKA_STARTED_PID=$(read_pid "$KAFKA_PID") || die "kafka: no pid file after start"
}

stop_kafka() {
  local pid
  if pid=$(kafka_pid); then
    stop_pid kafka "$pid"
  else
    log "kafka: not running"
  fi
  rm -f -- "$KAFKA_PID"
}

# --- PostgreSQL ---------------------------------------------------------------
# Run a command as the OS user owning the cluster (postgres refuses to run as root).
as_pg() {
  if is_root; then
    (cd / && runuser -u "$PG_OS_USER" -- "$@" 9>&-)
  else
    "$@" 9>&-
  fi
}

setup_postgres() {
  if [[ ! -x $PG_BIN/postgres || ! -x $PG_BIN/initdb || ! -x $PG_BIN/psql ]]; then
    apt_install postgresql
  fi
  [[ -x $PG_BIN/postgres ]] || die "postgres: $PG_BIN/postgres still missing after installing postgresql (set OTBUS_PG_BIN)"
  if is_root; then
    id -u "$PG_OS_USER" >/dev/null 2>&1 || die "postgres: OS user '$PG_OS_USER' does not exist (it comes with the postgresql package)"
  fi
  log "postgres: binaries present in $PG_BIN"
}

pg_prepare_dirs() {
  mkdir -p -- "$PG_DIR" "$PG_LOGS" "$PG_RUN"
  if is_root; then
    id -u "$PG_OS_USER" >/dev/null 2>&1 || die "postgres: OS user '$PG_OS_USER' does not exist (it comes with the postgresql package)"
    chmod a+x -- "$OTBUS_HOME"
    chown "$PG_OS_USER:" -- "$PG_DIR" "$PG_LOGS" "$PG_RUN"
    as_pg test -w "$PG_LOGS" ||
      die "postgres: the '$PG_OS_USER' OS user cannot reach $PG_DIR (a parent directory is not searchable by others); set OTBUS_HOME to a directory it can reach, e.g. /var/tmp/otbus"
  fi
  chmod 700 -- "$PG_RUN"
  local sock=$PG_RUN/.s.PGSQL.$PG_PORT
  ((${#sock} < 100)) || die "postgres: socket path $sock is too long for a unix socket; use a shorter OTBUS_HOME"
}

pg_initdb_if_needed() {
  [[ -f $PG_DATA/PG_VERSION ]] && return 0
  log "postgres: creating cluster in $PG_DATA"
  local pwfile=$PG_DIR/.initdb-pw
  (umask 077 && printf '%s\n' "$PG_PASSWORD" >"$pwfile")
  is_root && chown "$PG_OS_USER:" -- "$pwfile"
  if ! as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --pwfile="$pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 >"$PG_LOGS/initdb.log" 2>&1; then
    rm -f -- "$pwfile"
    show_tail "$PG_LOGS/initdb.log"
    die "postgres: initdb failed"
  fi
  rm -f -- "$pwfile"
  # our settings live in otbus.conf (rewritten on every start)
  printf "\n# added by deploy/local/infra.sh\ninclude 'otbus.conf'\n" >>"$PG_DATA/postgresql.conf"
}

pg_write_config() {
  cat >"$PG_DATA/otbus.conf" <<EOF
# Generated by deploy/local/infra.sh on every start: edit the script, not this file.
listen_addresses = '$HOST'
port = $PG_PORT
unix_socket_directories = '$PG_RUN'
max_connections = 200
shared_buffers = 256MB
fsync = on
synchronous_commit = on
full_page_writes = on
password_encryption = 'scram-sha-256'
timezone = 'UTC'
log_timezone = 'UTC'
log_line_prefix = '%m [%p] %q%u@%d '
EOF
  is_root && chown "$PG_OS_USER:" -- "$PG_DATA/otbus.conf"
  return 0
}

pg_running() {
  [[ -f $PG_DATA/PG_VERSION ]] || return 1
  as_pg "$PG_BIN/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1
}

pg_ready() { "$PG_BIN/pg_isready" -q -h "$HOST" -p "$PG_PORT" -d postgres >/dev/null 2>&1; }

pg_bootstrap() {
  as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_RUN" -p "$PG_PORT" -U postgres -d postgres \
    >"$PG_LOGS/bootstrap.log" 2>&1 <<SQL || {
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'otbus') THEN
    CREATE ROLE otbus LOGIN CREATEDB NOSUPERUSER NOBYPASSRLS PASSWORD '$PG_PASSWORD';
  END IF;
  -- the event store creates its read role (otbus_query, under row-level security) on first start
  ALTER ROLE otbus CREATEROLE;
END
\$\$;
SELECT 'CREATE DATABASE otbus OWNER otbus'
 WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = 'otbus')\gexec
SQL
    show_tail "$PG_LOGS/bootstrap.log"
    die "postgres: creating role/database otbus failed"
  }
}

start_postgres() {
  local t0
  t0=$(now_ms)
  [[ -x $PG_BIN/postgres && -x $PG_BIN/initdb && -x $PG_BIN/psql ]] || setup_postgres
  pg_prepare_dirs
  pg_initdb_if_needed
  if pg_running; then
    log "postgres: already running on $HOST:$PG_PORT"
  else
    port_open "$PG_PORT" && die "postgres: port $HOST:$PG_PORT is already in use by another process (set OTBUS_PG_PORT, or stop it)"
    pg_write_config
    log "postgres: starting on $HOST:$PG_PORT"
    if ! as_pg "$PG_BIN/pg_ctl" start -D "$PG_DATA" -l "$PG_LOGS/postgres.log" \
      -w -t "$START_TIMEOUT" -s >>"$PG_LOGS/pg_ctl.log" 2>&1; then
      show_tail "$PG_LOGS/pg_ctl.log" "$PG_LOGS/postgres.log"
      die "postgres: pg_ctl start failed (logs: $PG_LOGS)"
    fi
  fi
  local deadline=$((t0 + START_TIMEOUT * 1000))
  until pg_ready; do
    if (($(now_ms) >= deadline)); then
      show_tail "$PG_LOGS/postgres.log"
      die "postgres: not accepting connections on $HOST:$PG_PORT after ${START_TIMEOUT}s"
    fi
    sleep 0.2
  done
  pg_bootstrap
  log "postgres: ready on $HOST:$PG_PORT ($(elapsed "$t0"))"
}

stop_postgres() {
  if ! pg_running; then
    log "postgres: not running"
    return 0
  fi
  log "postgres: stopping"
  as_pg "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m fast -w -t "$STOP_TIMEOUT" -s >>"$PG_LOGS/pg_ctl.log" 2>&1 && {
    log "postgres: stopped"
    return 0
  }
  log "postgres: fast shutdown did not finish in ${STOP_TIMEOUT}s, trying immediate"
  as_pg "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m immediate -w -t 10 -s >>"$PG_LOGS/pg_ctl.log" 2>&1 && {
    log "postgres: stopped"
    return 0
  }
  local pid
  pid=$(read_pid "$PG_DATA/postmaster.pid") || die "postgres: could not stop it, and no pid in postmaster.pid"
  if proc_alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  log "postgres: killed (pid $pid)"
}

# --- Mosquitto ----------------------------------------------------------------
setup_mosquitto() {
  local pkgs=()
  [[ -x $MQ_BIN ]] || pkgs+=(mosquitto)
  command -v mosquitto_pub >/dev/null 2>&1 || pkgs+=(mosquitto-clients)
  ((${#pkgs[@]} == 0)) || apt_install "${pkgs[@]}"
  [[ -x $MQ_BIN ]] || die "mosquitto: $MQ_BIN still missing after installing mosquitto (set OTBUS_MOSQUITTO_BIN)"
  log "mosquitto: $MQ_BIN present"
}

mq_write_config() {
  mkdir -p -- "$MQ_DATA"
  {
    echo "# Generated by deploy/local/infra.sh on every start: edit the script, not this file."
    echo "per_listener_settings false"
    echo "listener $MQTT_PORT $HOST"
    echo "allow_anonymous true"
    echo "persistence true"
    echo "persistence_location $MQ_DATA/"
    echo "autosave_interval 60"
    echo "max_queued_messages 0"   # unlimited: persistent sessions keep everything sent while a client is away
    echo "max_queued_bytes 0"
    echo "max_inflight_messages 0"
    echo "log_dest file $MQ_LOG"
    echo "log_type error"
    echo "log_type warning"
    echo "log_type notice"
    echo "log_type information"
    echo "log_timestamp_format %Y-%m-%dT%H:%M:%S"
    echo "connection_messages true"
    # As root, mosquitto would otherwise switch to the `mosquitto` user, which may not be
    # able to write our data dir; this is a loopback-only test broker.
    if is_root; then echo "user root"; fi
  } >"$MQ_CONF"
}

# A real MQTT 3.1.1 CONNECT; succeeds on CONNACK "accepted".
mqtt_probe() {
  local out b=()
  # shellcheck disable=SC2016 # expanded by the inner bash
  out=$(timeout 5 bash -c '
    exec 3<>"/dev/tcp/$1/$2" || exit 1
    printf "\x10\x17\x00\x04MQTT\x04\x02\x00\x3c\x00\x0botbus-probe" >&3
    head -c 4 <&3 | od -An -v -tu1
    printf "\xe0\x00" >&3
  ' mqtt-probe "$HOST" "$MQTT_PORT" 2>/dev/null) || return 1
  read -r -a b <<<"$out"
  [[ ${b[*]} == "32 2 0 0" ]]
}

mq_pid() { running_pid "$MQ_PID" mosquitto; }

start_mosquitto() {
  local t0 pid
  t0=$(now_ms)
  if pid=$(mq_pid); then
    log "mosquitto: already running (pid $pid)"
  else
    [[ -x $MQ_BIN ]] || setup_mosquitto
    port_open "$MQTT_PORT" && die "mosquitto: port $HOST:$MQTT_PORT is already in use by another process (set OTBUS_MQTT_PORT, or stop it)"
    mq_write_config
    log "mosquitto: starting on $HOST:$MQTT_PORT"
    spawn "$MQ_PID" "$MQ_DIR/mosquitto.out" "$MQ_BIN" -c "$MQ_CONF"
    pid=$(read_pid "$MQ_PID") || die "mosquitto: no pid file after start"
  fi
  local deadline=$((t0 + START_TIMEOUT * 1000))
  until mqtt_probe; do
    if ! proc_alive "$pid"; then
      show_tail "$MQ_DIR/mosquitto.out" "$MQ_LOG"
      die "mosquitto: exited during startup (logs: $MQ_DIR)"
    fi
    if (($(now_ms) >= deadline)); then
      show_tail "$MQ_DIR/mosquitto.out" "$MQ_LOG"
      die "mosquitto: no CONNACK on $HOST:$MQTT_PORT after ${START_TIMEOUT}s"
    fi
    sleep 0.1
  done
  log "mosquitto: ready on $HOST:$MQTT_PORT (pid $pid, $(elapsed "$t0"))"
}

stop_mosquitto() {
  local pid
  if pid=$(mq_pid); then
    stop_pid mosquitto "$pid"
  else
    log "mosquitto: not running"
  fi
  rm -f -- "$MQ_PID"
}

# --- commands -----------------------------------------------------------------
cmd_setup() {
  select_components "$@"
  with_lock
  local c
  for c in "${COMPONENTS[@]}"; do "setup_$c"; done
}

cmd_start() {
  select_components "$@"
  with_lock
  local c want_kafka=""
  for c in "${COMPONENTS[@]}"; do
    if is_external "$c"; then
      local var
      var=$(component_var "$c")
      log "$c: using external $var=${!var} (not starting a local one)"
    elif [[ $c == kafka ]]; then
      want_kafka=1
    fi
  done
  # Kafka is the slowest: launch it first, start the others meanwhile, then wait for it.
  if [[ -n $want_kafka ]]; then kafka_launch; fi
  for c in "${COMPONENTS[@]}"; do
    [[ $c == kafka ]] && continue
    is_external "$c" && continue
    "start_$c"
  done
  if [[ -n $KAFKA_STARTED_PID ]]; then kafka_wait_ready "$KAFKA_STARTED_PID" "$KAFKA_T0"; fi
}

cmd_stop() {
  select_components "$@"
  with_lock
  local c
  for c in "${COMPONENTS[@]}"; do "stop_$c"; done
}

cmd_status() {
  select_components "$@"
  local c state detail pid rc=0 var
  for c in "${COMPONENTS[@]}"; do
    detail=""
    if is_external "$c"; then
      var=$(component_var "$c")
      printf '%-10s %-9s %s\n' "$c" external "${!var}"
      continue
    fi
    state=stopped
    case $c in
      kafka)
        if pid=$(kafka_pid); then
          state=running detail="(pid $pid)"
          kafka_probe || detail="(pid $pid, not answering yet)"
        fi
        ;;
      postgres)
        if pg_running; then
          state=running detail="(pid $(read_pid "$PG_DATA/postmaster.pid" || true))"
          pg_ready || detail="$detail not accepting connections yet"
        fi
        ;;
      mosquitto)
        if pid=$(mq_pid); then
          state=running detail="(pid $pid)"
          mqtt_probe || detail="(pid $pid, not answering yet)"
        fi
        ;;
    esac
    [[ $state == running ]] || rc=3
    printf '%-10s %-9s %s%s\n' "$c" "$state" "$(component_addr "$c")" "${detail:+ $detail}"
  done
  return "$rc"
}

cmd_env() {
  local kafka=${OTBUS_KAFKA_BOOTSTRAP:-$LOCAL_KAFKA_BOOTSTRAP}
  local db=${OTBUS_DATABASE_URL:-$LOCAL_DATABASE_URL}
  local mqtt=${OTBUS_MQTT_URL:-$LOCAL_MQTT_URL}
  local admin
  if is_external postgres; then
    admin=${OTBUS_DATABASE_ADMIN_URL:-}
  else
    admin=${OTBUS_DATABASE_ADMIN_URL:-$LOCAL_DATABASE_ADMIN_URL}
  fi
  printf 'export OTBUS_KAFKA_BOOTSTRAP=%q\n' "$kafka"
  printf 'export OTBUS_DATABASE_URL=%q\n' "$db"
  if [[ -n $admin ]]; then
    printf 'export OTBUS_DATABASE_ADMIN_URL=%q\n' "$admin"
  else
    echo "# OTBUS_DATABASE_ADMIN_URL is not set (external database)"
  fi
  printf 'export OTBUS_MQTT_URL=%q\n' "$mqtt"
}

cmd_clean() {
  (($# == 0)) || die "clean takes no arguments"
  with_lock
  stop_kafka
  stop_postgres
  stop_mosquitto
  log "deleting $KAFKA_DIR $PG_DIR $MQ_DIR (keeping $CACHE_DIR)"
  rm -rf -- "$KAFKA_DIR" "$PG_DIR" "$MQ_DIR"
}

usage() {
  sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

main() {
  local cmd=${1:-help}
  (($# == 0)) || shift
  case $cmd in
    setup) cmd_setup "$@" ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    status) cmd_status "$@" ;;
    env) cmd_env "$@" ;;
    clean) cmd_clean "$@" ;;
    help | -h | --help) usage ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"
