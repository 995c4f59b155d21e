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
#   JOBSERVER_HOST            address of the job, artifact and expansion
#                             services (default 127.0.0.1)
#   JOBSERVER_JOB_PORT        job service port, the Python SDK's --job_endpoint
#                             (default 8099)
#   JOBSERVER_ARTIFACT_PORT   artifact staging port (default 8098)
#   JOBSERVER_EXPANSION_PORT  cross-language expansion port (default 8097)
#   FLINK_MASTER              [local] for an embedded Flink mini-cluster, or
#                             HOST:PORT of a standalone Flink 1.19 JobManager
#                             (default [local])
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
JOBSERVER_START_TIMEOUT="${JOBSERVER_START_TIMEOUT:-120}"
JOBSERVER_STOP_TIMEOUT="${JOBSERVER_STOP_TIMEOUT:-30}"
JAVA="${JAVA:-java}"
MVN="${MVN:-mvn}"

POM="$SCRIPT_DIR/flink-jobserver/pom.xml"
MAIN_CLASS="org.apache.beam.runners.flink.FlinkJobServerDriver"

JDIR="$APIM_LOCAL_DIR/flink-jobserver"
LIBS="${JOBSERVER_LIBS:-$JDIR/libs}"
STAMP="$LIBS.sha256"
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

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

# ---------------------------------------------------------------- helpers

port_open() {  # $1 host $2 port
    (exec 3<>"/dev/tcp/$1/$2") >/dev/null 2>&1
}

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
    local pid
    [[ -f "$PIDFILE" ]] || return 0
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    # Guard against a recycled pid: it must be our driver on our job port.
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null \
            | grep -qF -- "$MAIN_CLASS --job-host $JOBSERVER_HOST --job-port $JOBSERVER_JOB_PORT "; then
        echo "$pid"
    fi
}

# Ours answers: the job port accepts connections and the log says it listens.
ready() {
    port_open "$JOBSERVER_HOST" "$JOBSERVER_JOB_PORT" && grep -qF "$READY_LINE" "$LOG" 2>/dev/null
}

need_java() {
    command -v "$JAVA" >/dev/null 2>&1 || die "java not found ($JAVA); install a JDK/JRE 17 or newer (apt-get install -y openjdk-17-jre-headless) or set JAVA"
    local ver major
    ver="$("$JAVA" -version 2>&1 | head -n1)"
    major="$(sed -E 's/.*version "([0-9]+)(\.[0-9]+)*.*/\1/' <<<"$ver")"
    if [[ "$major" == 1 ]]; then major=8; fi
    [[ "$major" =~ ^[0-9]+$ && "$major" -ge 17 ]] \
        || die "this script runs the job server on Java 17 or newer, '$JAVA -version' says: $ver"
}

# Copy the job server's jars from Maven Central unless libs/ already matches the pom.
fetch_libs() {
    local want
    want="$(sha256sum "$POM" | cut -d' ' -f1)"
    if [[ -d "$LIBS" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] \
        && compgen -G "$LIBS/beam-runners-flink-*.jar" >/dev/null; then
        return 0
    fi
    command -v "$MVN" >/dev/null 2>&1 || die "mvn not found ($MVN); install Maven (apt-get install -y maven) or set MVN"
    say "fetching Beam Flink job server jars from Maven Central ($POM); the first time takes minutes ..."
    local tmp="$JDIR/libs.tmp.$$" t0=$SECONDS
    rm -rf "$tmp"
    if ! "$MVN" -B -q -f "$POM" dependency:copy-dependencies \
            -DoutputDirectory="$tmp" -DincludeScope=runtime >"$JDIR/mvn.log" 2>&1; then
        tail -n 40 "$JDIR/mvn.log" >&2 || true
        rm -rf "$tmp"
        die "mvn could not copy the job server jars (full output: $JDIR/mvn.log)"
    fi
    compgen -G "$tmp/beam-runners-flink-*.jar" >/dev/null || die "mvn ran but no beam-runners-flink jar arrived in $tmp"
    rm -rf "$LIBS"
    mv "$tmp" "$LIBS"
    echo "$want" >"$STAMP"
    say "jars ready in $LIBS ($(ls "$LIBS" | wc -l) files, $(du -sm "$LIBS" | cut -f1) MB, $((SECONDS - t0)) s)"
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

        need_java
        fetch_libs

        local opens=() o
        for o in "${ADD_OPENS[@]}"; do opens+=("--add-opens=$o=ALL-UNNAMED"); done

        mkdir -p "$JDIR/tmp"
        [[ -f "$LOG" ]] && mv -f "$LOG" "$LOG.1"
        say "starting job server on $ENDPOINT (artifact :$JOBSERVER_ARTIFACT_PORT, expansion :$JOBSERVER_EXPANSION_PORT, flink master $FLINK_MASTER, heap $JOBSERVER_HEAP, log $LOG)"
        (
            cd "$JDIR"
            exec 9>&-  # the job server must not inherit (and so keep) our lock
            exec setsid nohup "$JAVA" -Xmx"$JOBSERVER_HEAP" \
                "${opens[@]}" \
                -Djava.awt.headless=true \
                -Djava.io.tmpdir="$JDIR/tmp" \
                -cp "$LIBS/*" "$MAIN_CLASS" \
                --job-host "$JOBSERVER_HOST" \
                --job-port "$JOBSERVER_JOB_PORT" \
                --artifact-port "$JOBSERVER_ARTIFACT_PORT" \
                --expansion-port "$JOBSERVER_EXPANSION_PORT" \
                --flink-master "$FLINK_MASTER" </dev/null >"$LOG" 2>&1
        ) &
        pid=$!
        echo "$pid" >"$PIDFILE"
    fi

    local t0=$SECONDS deadline=$((SECONDS + JOBSERVER_START_TIMEOUT))
    while (( SECONDS < deadline )); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "---- last lines of $LOG ----" >&2
            tail -n 40 "$LOG" >&2 || true
            rm -f "$PIDFILE"
            die "the job server process (pid $pid) exited during startup; see $LOG"
        fi
        if ready; then
            say "job server up (pid $pid) at $ENDPOINT after $((SECONDS - t0)) s"
            return 0
        fi
        sleep 0.2
    done
    echo "---- last lines of $LOG ----" >&2
    tail -n 40 "$LOG" >&2 || true
    die "the job server (pid $pid) did not listen at $ENDPOINT within ${JOBSERVER_START_TIMEOUT}s; it is left running, see $LOG (flink-jobserver.sh stop to end it)"
}

cmd_stop() {
    mkdir -p "$JDIR"
    exec 9>"$JDIR/.lock"
    flock -w 600 9 || die "another flink-jobserver.sh holds $JDIR/.lock"

    local pid
    pid="$(jobserver_pid)"
    if [[ -z "$pid" ]]; then
        rm -f "$PIDFILE"
        if port_open "$JOBSERVER_HOST" "$JOBSERVER_JOB_PORT"; then
            say "not running from $JDIR, but something listens on $ENDPOINT (not ours, left alone)"
        else
            say "not running"
        fi
        return 0
    fi
    say "stopping job server (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + JOBSERVER_STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "still alive after ${JOBSERVER_STOP_TIMEOUT}s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    rm -f "$PIDFILE"
    say "stopped"
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
