#!/usr/bin/env bash
# Local Apache Beam Flink job server (Beam's portable job service in front of
# Flink 1.19; by default an embedded Flink mini-cluster in the same JVM),
# assembled from Maven Central with deploy/local/flink-jobserver/pom.xml.
# No Docker, no tarball: only java (17+) and mvn.
#
# Usage: deploy/local/flink-jobserver.sh start|stop|status|restart|rss
#   start    fetch jars (first time only), start the job server in the
#            background and wait until its job port accepts connections and
#            its log says the job service is listening; exits 0 at once when
#            it already runs
#   stop     SIGTERM, wait up to JOBSERVER_STOP_TIMEOUT s, then SIGKILL
#   status   exit 0 when the job server answers, 3 when it does not
#   rss      print the job server JVM's resident memory in MB (VmRSS from
#            /proc/PID/status); exit 3 when it does not run
#
# Settings (environment variables):
#   APIM_LOCAL_DIR            state root (default: <repo>/.local); the job server uses
#                             $APIM_LOCAL_DIR/flink-jobserver/{libs,jobserver.log,jobserver.pid}
#   JOBSERVER_DIR             folder of this job server's log, pid, lock and tmp
#                             (default $APIM_LOCAL_DIR/flink-jobserver); a second job
#                             server on other ports needs its own (flink-cluster.sh
#                             sets it); the jars stay in JOBSERVER_LIBS
#   JOBSERVER_HOST            address of the job, artifact and expansion
#                             services (default 127.0.0.1)
#   JOBSERVER_JOB_PORT        job service port, the Python SDK's --job_endpoint
#                             (default 8099)
#   JOBSERVER_ARTIFACT_PORT   artifact staging port (default 8098)
#   JOBSERVER_EXPANSION_PORT  cross-language expansion port (default 8097)
#   FLINK_MASTER              [local] for an embedded Flink mini-cluster, or
#                             HOST:PORT of a standalone Flink 1.19 JobManager
#                             (default [local])
#   FLINK_CONF_DIR            Flink configuration folder given to the job server
#                             (default deploy/local/flink-jobserver/conf: for the
#                             embedded mini-cluster, its REST API on a port in
#                             8281-8299, which `pipeline run --streaming` uses to
#                             find and stop its job, and restarts from checkpoints)
#   JOBSERVER_HEAP            JVM maximum heap, -Xmx (default 1g)
#   JOBSERVER_LIBS            folder of the job server jars (default
#                             $APIM_LOCAL_DIR/flink-jobserver/libs)
#   JOBSERVER_START_TIMEOUT   seconds to wait for the job server (default 120)
#   JOBSERVER_STOP_TIMEOUT    seconds to wait after SIGTERM before SIGKILL (default 30)
#   JAVA, MVN                 the java and mvn commands (default: from PATH)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"

APIM_LOCAL_DIR="${APIM_LOCAL_DIR:-$REPO_ROOT/.local}"
JOBSERVER_HOST="${JOBSERVER_HOST:-127.0.0.1}"
JOBSERVER_JOB_PORT="${JOBSERVER_JOB_PORT:-8099}"
JOBSERVER_ARTIFACT_PORT="${JOBSERVER_ARTIFACT_PORT:-8098}"
JOBSERVER_EXPANSION_PORT="${JOBSERVER_EXPANSION_PORT:-8097}"
FLINK_MASTER="${FLINK_MASTER:-[local]}"
JOBSERVER_HEAP="${JOBSERVER_HEAP:-1g}"
FLINK_CONF_DIR="${FLINK_CONF_DIR:-$SCRIPT_DIR/flink-jobserver/conf}"
JOBSERVER_START_TIMEOUT="${JOBSERVER_START_TIMEOUT:-120}"
JOBSERVER_STOP_TIMEOUT="${JOBSERVER_STOP_TIMEOUT:-30}"
JAVA="${JAVA:-java}"
MVN="${MVN:-mvn}"

POM="$SCRIPT_DIR/flink-jobserver/pom.xml"
MAIN_CLASS="org.apache.beam.runners.flink.FlinkJobServerDriver"

JDIR="${JOBSERVER_DIR:-$APIM_LOCAL_DIR/flink-jobserver}"
LIBS="${JOBSERVER_LIBS:-$APIM_LOCAL_DIR/flink-jobserver/libs}"
LOG="$JDIR/jobserver.log"
PIDFILE="$JDIR/jobserver.pid"
ENDPOINT="$JOBSERVER_HOST:$JOBSERVER_JOB_PORT"
# What the driver logs once the job service's gRPC server is bound.
READY_LINE="JobService started on"

# Flink 1.19 (Kryo, its closure cleaner, netty, the memory manager) reflects
# into these JDK packages; Java 17 refuses that unless they are opened.
ADD_OPENS=(
    java.base/java.lang
    java.base/java.lang.invoke
    java.base/java.lang.reflect
    java.base/java.io
    java.base/java.math
    java.base/java.net
    java.base/java.nio
    java.base/java.security
    java.base/java.text
    java.base/java.time
    java.base/java.util
    java.base/java.util.concurrent
    java.base/java.util.concurrent.atomic
    java.base/java.util.concurrent.locks
    java.base/sun.nio.ch
)

say() { echo "flink-jobserver.sh: $*"; }
die() { echo "flink-jobserver.sh: ERROR: $*" >&2; exit 1; }
# shellcheck source=deploy/local/jvm-service.sh
source "$SCRIPT_DIR/jvm-service.sh"

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

# ---------------------------------------------------------------- helpers

# Does $1:$2 speak HTTP/2 (gRPC)? Sends the HTTP/2 client preface and expects
# the server's first frame to be SETTINGS (frame type 0x04, the 4th byte).
# Used only for a listener this script did not start.
speaks_grpc() {  # $1 host $2 port
    local first
    first="$(timeout 3 bash -c '
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        printf "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\4\0\0\0\0\0" >&3
        head -c 9 <&3 | od -An -tx1' _ "$1" "$2" 2>/dev/null || true)"
    [[ "$(awk '{print $4}' <<<"$first")" == 04 ]]
}

# PID of our job server, if it is alive; empty otherwise.
jobserver_pid() {
    pid_from_file "$MAIN_CLASS --job-host $JOBSERVER_HOST --job-port $JOBSERVER_JOB_PORT "  # our driver, our port
}

# Ours answers: the job port accepts connections and the log says it listens.
ready() {
    port_open "$JOBSERVER_HOST" "$JOBSERVER_JOB_PORT" && grep -qF "$READY_LINE" "$LOG" 2>/dev/null
}


fetch_libs() {
    fetch_jars "$POM" "$LIBS" "$JDIR" "beam-runners-flink-*.jar" "Beam Flink job server"
}

# ---------------------------------------------------------------- commands

cmd_start() {
    mkdir -p "$JDIR"
    exec 9>"$JDIR/.lock"
    flock -w 600 9 || die "another flink-jobserver.sh holds $JDIR/.lock"

    local pid port
    pid="$(jobserver_pid)"
    if [[ -n "$pid" ]]; then
        if ready; then
            say "already running (pid $pid), job endpoint $ENDPOINT"
            return 0
        fi
        say "job server pid $pid is up but not listening yet; waiting"
    else
        rm -f "$PIDFILE"
        if port_open "$JOBSERVER_HOST" "$JOBSERVER_JOB_PORT"; then
            if speaks_grpc "$JOBSERVER_HOST" "$JOBSERVER_JOB_PORT"; then
                say "a gRPC server not started by this script (no pid in $PIDFILE) already listens at $ENDPOINT; leaving it alone"
                return 0
            fi
            die "port $ENDPOINT is taken by something that is not a gRPC server; free it or set JOBSERVER_JOB_PORT"
        fi
        for port in "$JOBSERVER_ARTIFACT_PORT" "$JOBSERVER_EXPANSION_PORT"; do
            if port_open "$JOBSERVER_HOST" "$port"; then
                die "port $JOBSERVER_HOST:$port is already taken; free it or set JOBSERVER_ARTIFACT_PORT / JOBSERVER_EXPANSION_PORT"
            fi
        done

        need_java "the Beam Flink job server"
        fetch_libs

        local opens=() o
        for o in "${ADD_OPENS[@]}"; do opens+=("--add-opens=$o=ALL-UNNAMED"); done

        mkdir -p "$JDIR/tmp"
        [[ -f "$LOG" ]] && mv -f "$LOG" "$LOG.1"
        say "starting job server on $ENDPOINT (artifact :$JOBSERVER_ARTIFACT_PORT, expansion :$JOBSERVER_EXPANSION_PORT, flink master $FLINK_MASTER, heap $JOBSERVER_HEAP, log $LOG)"
        launch_jvm "$JDIR" -Xmx"$JOBSERVER_HEAP" \
            "${opens[@]}" \
            -Djava.awt.headless=true \
            -Djava.io.tmpdir="$JDIR/tmp" \
            -cp "$LIBS/*" "$MAIN_CLASS" \
            --job-host "$JOBSERVER_HOST" \
            --job-port "$JOBSERVER_JOB_PORT" \
            --artifact-port "$JOBSERVER_ARTIFACT_PORT" \
            --expansion-port "$JOBSERVER_EXPANSION_PORT" \
            --flink-master "$FLINK_MASTER" \
            --flink-conf-dir "$FLINK_CONF_DIR"
        pid=$LAUNCHED_PID
    fi

    await_ready "$pid" ready "$JOBSERVER_START_TIMEOUT" "job server" "$ENDPOINT"
}

cmd_stop() {
    stop_service "$JDIR" jobserver_pid "$JOBSERVER_HOST" "$JOBSERVER_JOB_PORT" "$JOBSERVER_STOP_TIMEOUT" "job server" 600
}

cmd_status() {
    local pid
    pid="$(jobserver_pid)"
    if ! port_open "$JOBSERVER_HOST" "$JOBSERVER_JOB_PORT"; then
        if [[ -n "$pid" ]]; then
            say "job server pid $pid is alive but $ENDPOINT does not accept connections (starting?)"
        else
            say "not running ($ENDPOINT closed)"
        fi
        return 3
    fi
    if [[ -n "$pid" ]]; then
        if ready; then
            say "running (pid $pid), job endpoint $ENDPOINT, flink master $FLINK_MASTER"
            return 0
        fi
        say "job server pid $pid: $ENDPOINT accepts connections but $LOG has no '$READY_LINE' yet"
        return 3
    fi
    if speaks_grpc "$JOBSERVER_HOST" "$JOBSERVER_JOB_PORT"; then
        say "a gRPC server listens at $ENDPOINT, but it was not started from $JDIR"
        return 0
    fi
    say "$ENDPOINT accepts connections but does not speak gRPC"
    return 3
}

cmd_rss() {
    local pid kb
    pid="$(jobserver_pid)"
    if [[ -z "$pid" ]]; then
        say "not running"
        return 3
    fi
    kb="$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")"
    echo "$(( (kb + 512) / 1024 ))"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    restart) cmd_stop; cmd_start ;;
    rss) cmd_rss ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
esac
