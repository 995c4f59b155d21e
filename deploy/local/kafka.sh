#!/usr/bin/env bash
# Local single-node Apache Kafka 4.x broker (KRaft, broker+controller in one
# JVM), assembled from Maven Central with deploy/local/kafka/pom.xml.
# No Docker, no tarball: only java (17+), mvn and a Python with kafka-python.
#
# Usage: deploy/local/kafka.sh start|stop|status|reset|restart
#   start    fetch jars (first time only), format storage (first time only),
#            start the broker in the background and wait until it answers a
#            metadata request; exits 0 at once when it already answers
#   stop     SIGTERM, wait up to KAFKA_STOP_TIMEOUT s, then SIGKILL
#   status   exit 0 when the broker answers, 3 when it does not
#   reset    stop and delete the broker's data (topics, offsets, cluster id)
#
# Settings (environment variables):
#   APIM_LOCAL_DIR         state root (default: <repo>/.local); the broker uses
#                          $APIM_LOCAL_DIR/kafka/{libs,data,broker.log,broker.pid}
#   KAFKA_HOST             address to listen on and advertise (default 127.0.0.1)
#   KAFKA_PORT             client (PLAINTEXT) port (default 9092)
#   KAFKA_CONTROLLER_PORT  KRaft controller port (default 9093)
#   KAFKA_HEAP             JVM heap, -Xms and -Xmx (default 512m)
#   KAFKA_LIBS             folder of the broker jars (default $APIM_LOCAL_DIR/kafka/libs);
#                          a second broker can share the first one's
#   KAFKA_START_TIMEOUT    seconds to wait for the broker to answer (default 90)
#   KAFKA_STOP_TIMEOUT     seconds to wait after SIGTERM before SIGKILL (default 30)
#   KAFKA_CLUSTER_ID       cluster id used when formatting fresh storage
#                          (default: a random one)
#   APIM_PYTHON            Python with kafka-python 3.x, runs wait_kafka.py
#                          (default: <repo>/.venv/bin/python, else python3 if
#                          it has kafka-python)
#   JAVA, MVN              the java and mvn commands (default: from PATH)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"

APIM_LOCAL_DIR="${APIM_LOCAL_DIR:-$REPO_ROOT/.local}"
KAFKA_HOST="${KAFKA_HOST:-127.0.0.1}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_HEAP="${KAFKA_HEAP:-512m}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
KAFKA_CLUSTER_ID="${KAFKA_CLUSTER_ID:-}"
JAVA="${JAVA:-java}"
MVN="${MVN:-mvn}"

POM="$SCRIPT_DIR/kafka/pom.xml"
TEMPLATE="$SCRIPT_DIR/kafka/server.properties.template"
WAIT_PY="$SCRIPT_DIR/wait_kafka.py"

KDIR="$APIM_LOCAL_DIR/kafka"
LIBS="${KAFKA_LIBS:-$KDIR/libs}"
DATA="$KDIR/data"
PROPS="$KDIR/server.properties"
LOG4J_CONF="$KDIR/log4j2.xml"
LOG="$KDIR/broker.log"
PIDFILE="$KDIR/broker.pid"
BOOTSTRAP="$KAFKA_HOST:$KAFKA_PORT"

say() { echo "kafka.sh: $*"; }
die() { echo "kafka.sh: ERROR: $*" >&2; exit 1; }
# shellcheck source=deploy/local/jvm-service.sh
source "$SCRIPT_DIR/jvm-service.sh"

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

# ---------------------------------------------------------------- helpers

# Sets PY to a Python that can run wait_kafka.py (dies naming the problem).
resolve_python() {
    if [[ -n "${PY:-}" ]]; then return 0; fi
    if [[ -n "${APIM_PYTHON:-}" ]]; then
        command -v "$APIM_PYTHON" >/dev/null 2>&1 || die "APIM_PYTHON=$APIM_PYTHON is not an executable"
        PY="$APIM_PYTHON"
    elif [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then
        PY="$REPO_ROOT/.venv/bin/python"
    elif command -v python3 >/dev/null 2>&1 && python3 -c 'from kafka import KafkaAdminClient' >/dev/null 2>&1; then
        PY=python3
    else
        die "no Python with kafka-python to probe the broker: $REPO_ROOT/.venv/bin/python does not exist and python3 has no 'kafka' module; create the venv or set APIM_PYTHON"
    fi
}

# Ask the broker for metadata; $1 = timeout in seconds. Returns 0 when it answers.
probe() {
    local timeout="$1" rc=0
    resolve_python
    "$PY" "$WAIT_PY" --bootstrap "$BOOTSTRAP" --timeout "$timeout" --quiet 2>/dev/null || rc=$?
    if [[ $rc -eq 2 ]]; then
        die "$PY has no kafka-python 3.x (pip install 'kafka-python>=3.0,<4'); set APIM_PYTHON to a Python that has it"
    fi
    return "$rc"
}

# PID of our broker, if it is alive; empty otherwise.
broker_pid() {
    pid_from_file "kafka.Kafka $PROPS"  # our kafka.Kafka on our config
}

# The jars, fetched once per pom (deploy/local/jvm-service.sh).
fetch_libs() {
    fetch_jars "$POM" "$LIBS" "$KDIR" "kafka_2.13-*.jar" "Kafka"
}

render_config() {
    local tmp="$PROPS.tmp.$$"
    sed -e "s|@KAFKA_HOST@|$KAFKA_HOST|g" \
        -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" \
        -e "s|@KAFKA_CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" \
        -e "s|@KAFKA_DATA_DIR@|$DATA|g" \
        "$TEMPLATE" >"$tmp"
    mv "$tmp" "$PROPS"

    # Everything to stdout (redirected to broker.log) at INFO; the chattiest
    # per-request loggers only at WARN.
    cat >"$LOG4J_CONF" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="stdout" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="stdout"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="kafka.network.RequestChannel$" level="WARN"/>
    <Logger name="org.apache.kafka.server.authorizer" level="WARN"/>
    <Logger name="kafka.authorizer.logger" level="WARN"/>
    <Logger name="org.apache.kafka.clients" level="WARN"/>
  </Loggers>
</Configuration>
EOF
}

format_storage() {
    if [[ -f "$DATA/meta.properties" ]]; then
        return 0
    fi
    local cid="$KAFKA_CLUSTER_ID"
    if [[ -z "$cid" ]]; then
        cid="$("$JAVA" -Dlog4j2.configurationFile="$LOG4J_CONF" -cp "$LIBS/*" \
                kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)"
        [[ -n "$cid" ]] || die "kafka.tools.StorageTool random-uuid printed no cluster id"
    fi
    say "formatting storage in $DATA (cluster id $cid)"
    mkdir -p "$DATA"
    if ! "$JAVA" -Dlog4j2.configurationFile="$LOG4J_CONF" -cp "$LIBS/*" kafka.tools.StorageTool \
            format --standalone -t "$cid" -c "$PROPS" >"$KDIR/format.log" 2>&1; then
        cat "$KDIR/format.log" >&2
        die "formatting Kafka storage in $DATA failed"
    fi
}

# ---------------------------------------------------------------- commands

cmd_start() {
    mkdir -p "$KDIR"
    exec 9>"$KDIR/.lock"
    flock -w 300 9 || die "another kafka.sh holds $KDIR/.lock"
    resolve_python

    local pid
    pid="$(broker_pid)"
    if [[ -n "$pid" ]]; then
        if probe 5; then
            say "already running (pid $pid) and answering at $BOOTSTRAP"
            return 0
        fi
        say "broker pid $pid is up but not answering yet; waiting"
    else
        rm -f "$PIDFILE"
        if port_open "$KAFKA_HOST" "$KAFKA_PORT"; then
            if probe 5; then
                say "a Kafka broker not started by this script (no pid in $PIDFILE) already answers at $BOOTSTRAP; leaving it alone"
                return 0
            fi
            die "port $KAFKA_HOST:$KAFKA_PORT is taken by something that is not a Kafka broker; free it or set KAFKA_PORT"
        fi
        if port_open "$KAFKA_HOST" "$KAFKA_CONTROLLER_PORT"; then
            die "controller port $KAFKA_HOST:$KAFKA_CONTROLLER_PORT is already taken; free it or set KAFKA_CONTROLLER_PORT"
        fi

        need_java "Kafka 4.x"
        resolve_python  # fail early, before starting anything, if we cannot probe
        fetch_libs
        render_config
        format_storage

        [[ -f "$LOG" ]] && mv -f "$LOG" "$LOG.1"
        say "starting broker on $BOOTSTRAP (controller :$KAFKA_CONTROLLER_PORT, heap $KAFKA_HEAP, log $LOG)"
        launch_jvm "$KDIR" -Xms"$KAFKA_HEAP" -Xmx"$KAFKA_HEAP" \
            -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
            -Djava.awt.headless=true \
            -Dlog4j2.configurationFile="$LOG4J_CONF" \
            -Dkafka.logs.dir="$KDIR" \
            -cp "$LIBS/*" kafka.Kafka "$PROPS"
        pid=$LAUNCHED_PID
    fi

    await_ready "$pid" probe "$KAFKA_START_TIMEOUT" "broker" "$BOOTSTRAP"
}

cmd_stop() {
    stop_service "$KDIR" broker_pid "$KAFKA_HOST" "$KAFKA_PORT" "$KAFKA_STOP_TIMEOUT" "broker" 300
}

cmd_status() {
    local pid
    resolve_python
    pid="$(broker_pid)"
    if ! port_open "$KAFKA_HOST" "$KAFKA_PORT"; then
        if [[ -n "$pid" ]]; then
            say "broker pid $pid is alive but $BOOTSTRAP does not accept connections (starting?)"
        else
            say "not running ($BOOTSTRAP closed)"
        fi
        return 3
    fi
    if probe 5; then
        if [[ -n "$pid" ]]; then
            say "running (pid $pid), answering at $BOOTSTRAP"
        else
            say "a broker answers at $BOOTSTRAP, but it was not started from $KDIR"
        fi
        return 0
    fi
    say "$BOOTSTRAP accepts connections but does not answer Kafka metadata requests"
    return 3
}

cmd_reset() {
    cmd_stop
    say "deleting $DATA"
    rm -rf "$DATA" "$KDIR/format.log"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    reset) cmd_reset ;;
    restart) cmd_stop; cmd_start ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
esac
