#!/usr/bin/env bash
# Local standalone Apache Flink 1.19 session cluster for scale-out, with what a
# portable Beam Python pipeline needs to run on it:
#   - one JobManager (REST on FLINK_REST_PORT) and one TaskManager with
#     FLINK_SLOTS task slots, from PyPI's apache-flink wheel (bin/ scripts,
#     conf/) and apache-flink-libraries sdist (Flink's jars); no Docker, no
#     tarball, nothing installed into a Python environment;
#   - a Beam Python SDK worker pool (apache_beam.runners.worker.worker_pool_main),
#     the EXTERNAL environment the TaskManager starts SDK workers from;
#   - a second Beam Flink job server (flink-jobserver.sh) on its own ports,
#     submitting to this cluster.
# A pipeline then runs with
#   --runner=PortableRunner --job_endpoint=localhost:8199
#   --environment_type=EXTERNAL --environment_config=localhost:50000
#   --streaming --parallelism=2 --checkpointing_interval=5000
#
# Usage: deploy/local/flink-cluster.sh start|stop|status|restart|rss
#   start    fetch Flink (first time only), start whatever of the four
#            processes is not running, and wait until the REST API's
#            /overview shows FLINK_SLOTS slots, the worker pool accepts
#            connections and the job server answers; exits 0 at once when all
#            already run
#   stop     stop the job server, the TaskManager, the JobManager and the
#            worker pool (with its SDK workers): SIGTERM, then SIGKILL after
#            FLINK_STOP_TIMEOUT s
#   status   one line per process; exit 0 when all four answer, 3 otherwise
#   rss      resident memory in MB (VmRSS), one "name MB" line per process:
#            jobmanager, taskmanager, worker-pool (the pool plus its SDK
#            workers), jobserver; exit 3 when the JobManager or TaskManager
#            does not run
#
# Settings (environment variables):
#   APIM_LOCAL_DIR            state root (default: <repo>/.local)
#   FLINK_CLUSTER_DIR         this cluster's folder (default
#                             $APIM_LOCAL_DIR/flink-cluster): dist/ (downloads),
#                             flink-<version>/ (the assembled distribution),
#                             conf/ (rendered at every start), log/, pid files,
#                             checkpoints/, savepoints/, tmp/, jobserver/
#   FLINK_VERSION             apache-flink release from PyPI (default 1.19.3;
#                             keep it 1.19.x, the Beam 2.62 runner's Flink)
#   FLINK_HOST                address every Flink endpoint binds to and
#                             announces (default localhost)
#   FLINK_REST_PORT           REST API and web UI, the job server's flink master
#                             (default 8081)
#   FLINK_RPC_PORT            JobManager RPC (default 6123)
#   FLINK_BLOB_PORT           JobManager blob server (default 6124)
#   FLINK_TM_RPC_PORT         TaskManager RPC (default 6122)
#   FLINK_TM_DATA_PORT        TaskManager data exchange (default 6121)
#   FLINK_SLOTS               task slots of the TaskManager (default 2)
#   FLINK_PARALLELISM         parallelism.default (default 2)
#   FLINK_JM_MEMORY           jobmanager.memory.process.size (default 1024m)
#   FLINK_TM_MEMORY           taskmanager.memory.process.size (default 1536m)
#   WORKER_POOL_PORT          Beam worker pool port, the pipeline's
#                             --environment_config (default 50000)
#   FLINK_JOBSERVER_JOB_PORT / FLINK_JOBSERVER_ARTIFACT_PORT /
#   FLINK_JOBSERVER_EXPANSION_PORT
#                             the cluster's job server (default 8199 / 8198 /
#                             8197; the embedded one keeps 8099 / 8098 / 8097)
#   FLINK_JOBSERVER_HEAP      its -Xmx (default 512m)
#   FLINK_START_TIMEOUT       seconds to wait for each process (default 120)
#   FLINK_STOP_TIMEOUT        seconds to wait after SIGTERM before SIGKILL (default 30)
#   APIM_PYTHON               Python with apache-beam 2.62 for the worker pool and
#                             for pip download (default <repo>/.venv/bin/python)
#   JAVA, MVN                 the java and mvn commands (default: from PATH;
#                             mvn only for the job server's jars)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"

APIM_LOCAL_DIR="${APIM_LOCAL_DIR:-$REPO_ROOT/.local}"
FDIR="${FLINK_CLUSTER_DIR:-$APIM_LOCAL_DIR/flink-cluster}"
FLINK_VERSION="${FLINK_VERSION:-1.19.3}"
FLINK_HOST="${FLINK_HOST:-localhost}"
FLINK_REST_PORT="${FLINK_REST_PORT:-8081}"
FLINK_RPC_PORT="${FLINK_RPC_PORT:-6123}"
FLINK_BLOB_PORT="${FLINK_BLOB_PORT:-6124}"
FLINK_TM_RPC_PORT="${FLINK_TM_RPC_PORT:-6122}"
FLINK_TM_DATA_PORT="${FLINK_TM_DATA_PORT:-6121}"
FLINK_SLOTS="${FLINK_SLOTS:-2}"
FLINK_PARALLELISM="${FLINK_PARALLELISM:-2}"
FLINK_JM_MEMORY="${FLINK_JM_MEMORY:-1024m}"
FLINK_TM_MEMORY="${FLINK_TM_MEMORY:-1536m}"
WORKER_POOL_PORT="${WORKER_POOL_PORT:-50000}"
FLINK_JOBSERVER_JOB_PORT="${FLINK_JOBSERVER_JOB_PORT:-8199}"
FLINK_JOBSERVER_ARTIFACT_PORT="${FLINK_JOBSERVER_ARTIFACT_PORT:-8198}"
FLINK_JOBSERVER_EXPANSION_PORT="${FLINK_JOBSERVER_EXPANSION_PORT:-8197}"
FLINK_JOBSERVER_HEAP="${FLINK_JOBSERVER_HEAP:-512m}"
FLINK_START_TIMEOUT="${FLINK_START_TIMEOUT:-120}"
FLINK_STOP_TIMEOUT="${FLINK_STOP_TIMEOUT:-30}"
APIM_PYTHON="${APIM_PYTHON:-$REPO_ROOT/.venv/bin/python}"
JAVA="${JAVA:-java}"

FLINK_HOME="$FDIR/flink-$FLINK_VERSION"
CONF="$FDIR/conf"
LOGDIR="$FDIR/log"
REST="http://$FLINK_HOST:$FLINK_REST_PORT"
# Each process's own pid file and console output; set_service points PIDFILE
# and LOG (what jvm-service.sh's helpers use) at one of them.
PIDFILE=""
LOG=""

say() { echo "flink-cluster.sh: $*"; }
die() { echo "flink-cluster.sh: ERROR: $*" >&2; exit 1; }
# shellcheck source=deploy/local/jvm-service.sh
source "$SCRIPT_DIR/jvm-service.sh"

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

set_service() {  # $1 jobmanager|taskmanager|worker-pool
    PIDFILE="$FDIR/$1.pid"
    LOG="$LOGDIR/$1.out"
}

# ---------------------------------------------------------------- the cluster's job server

# flink-jobserver.sh with this cluster's ports, folder and master; the jars stay shared with the
# embedded job server (JOBSERVER_LIBS keeps its default).
jobserver() {  # $1 command
    JOBSERVER_DIR="$FDIR/jobserver" \
    JOBSERVER_JOB_PORT="$FLINK_JOBSERVER_JOB_PORT" \
    JOBSERVER_ARTIFACT_PORT="$FLINK_JOBSERVER_ARTIFACT_PORT" \
    JOBSERVER_EXPANSION_PORT="$FLINK_JOBSERVER_EXPANSION_PORT" \
    JOBSERVER_HEAP="$FLINK_JOBSERVER_HEAP" \
    JOBSERVER_START_TIMEOUT="$FLINK_START_TIMEOUT" \
    JOBSERVER_STOP_TIMEOUT="$FLINK_STOP_TIMEOUT" \
    FLINK_MASTER="$FLINK_HOST:$FLINK_REST_PORT" \
    APIM_LOCAL_DIR="$APIM_LOCAL_DIR" \
        "$SCRIPT_DIR/flink-jobserver.sh" "$1"
}

# ---------------------------------------------------------------- helpers

# Our processes, recognised by their command line (a recycled pid is someone else's): Flink's
# bin/ scripts (bash) and then the JVM they `exec` both name files under $FLINK_HOME.
jobmanager_pid() { set_service jobmanager; pid_from_file "$FLINK_HOME/"; }
taskmanager_pid() { set_service taskmanager; pid_from_file "$FLINK_HOME/"; }
pool_pid() { set_service worker-pool; pid_from_file "worker_pool_main --service_port=$WORKER_POOL_PORT"; }

overview() {  # $1 max seconds; the REST API's /overview JSON
    curl -sf --max-time "${1:-3}" "$REST/overview" 2>/dev/null
}

# The value of a numeric field in a flat JSON object.
json_number() {  # $1 json $2 key
    sed -nE "s/.*\"$2\":([0-9]+).*/\1/p" <<<"$1"
}

jobmanager_ready() { overview "${1:-3}" >/dev/null; }

taskmanager_ready() {
    local o
    o="$(overview "${1:-3}")" || return 1
    [[ "$(json_number "$o" slots-total)" == "$FLINK_SLOTS" ]]
}

pool_ready() { port_open "$FLINK_HOST" "$WORKER_POOL_PORT"; }

rss_mb() {  # $@ pids; their summed VmRSS in MB
    local kb=0 pid k
    for pid in "$@"; do
        k="$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)"
        kb=$((kb + ${k:-0}))
    done
    echo "$(( (kb + 512) / 1024 ))"
}

# Flink from PyPI: the apache-flink wheel has bin/ and conf/ (under pyflink/), the
# apache-flink-libraries sdist has the jars (deps/lib, deps/bin/bash-java-utils.jar, deps/plugins).
# Assembled once into $FLINK_HOME; re-assembled only when it is incomplete.
fetch_flink() {
    if [[ -f "$FLINK_HOME/.complete" ]]; then
        return 0
    fi
    [[ -x "$APIM_PYTHON" ]] || die "$APIM_PYTHON not found; create the venv or set APIM_PYTHON"
    local dist="$FDIR/dist" t0=$SECONDS tmp="$FDIR/flink.tmp.$$"
    mkdir -p "$dist"
    say "fetching apache-flink $FLINK_VERSION from PyPI (wheel: scripts; apache-flink-libraries: jars, about 230 MB) ..."
    if ! "$APIM_PYTHON" -m pip download --no-deps --only-binary=:all: --dest "$dist" \
            "apache-flink==$FLINK_VERSION" >"$FDIR/pip.log" 2>&1 \
        || ! "$APIM_PYTHON" -m pip download --no-deps --dest "$dist" \
            "apache-flink-libraries==$FLINK_VERSION" >>"$FDIR/pip.log" 2>&1; then
        tail -n 20 "$FDIR/pip.log" >&2 || true
        die "pip could not download apache-flink $FLINK_VERSION (full output: $FDIR/pip.log)"
    fi
    local wheel sdist
    wheel="$(compgen -G "$dist/apache_flink-$FLINK_VERSION-*.whl" | head -n1)" || true
    sdist="$dist/apache-flink-libraries-$FLINK_VERSION.tar.gz"
    [[ -f "$wheel" && -f "$sdist" ]] || die "pip ran but $dist lacks the apache-flink $FLINK_VERSION wheel or sdist"
    rm -rf "$tmp"
    mkdir -p "$tmp/src"
    "$APIM_PYTHON" -m zipfile -e "$wheel" "$tmp/src/wheel"
    tar -xzf "$sdist" -C "$tmp/src"
    local libs="$tmp/src/apache-flink-libraries-$FLINK_VERSION/deps"
    mkdir -p "$tmp/home"
    cp -r "$tmp/src/wheel/pyflink/bin" "$tmp/src/wheel/pyflink/conf" "$libs/lib" "$libs/plugins" "$tmp/home/"
    cp "$libs/bin/bash-java-utils.jar" "$tmp/home/bin/"
    chmod +x "$tmp/home/bin/"*.sh "$tmp/home/bin/flink"
    compgen -G "$tmp/home/lib/flink-dist-*.jar" >/dev/null || die "no flink-dist jar in $sdist"
    rm -rf "$FLINK_HOME"
    mv "$tmp/home" "$FLINK_HOME"
    rm -rf "$tmp"
    touch "$FLINK_HOME/.complete"
    say "Flink $FLINK_VERSION ready in $FLINK_HOME ($(du -sm "$FLINK_HOME" | cut -f1) MB, $((SECONDS - t0)) s)"
}

# conf/config.yaml (Flink 1.19's standard YAML, flat keys) from the settings above, written at
# every start; log4j from the distribution.
render_conf() {
    mkdir -p "$CONF" "$LOGDIR" "$FDIR/tmp" "$FDIR/checkpoints" "$FDIR/savepoints" "$FDIR/run"
    cp "$FLINK_HOME/conf/log4j-console.properties" "$CONF/"
    cat >"$CONF/config.yaml" <<EOF
# Rendered by deploy/local/flink-cluster.sh at every start; edit the script's settings instead.
jobmanager.rpc.address: $FLINK_HOST
jobmanager.rpc.port: $FLINK_RPC_PORT
jobmanager.bind-host: $FLINK_HOST
jobmanager.memory.process.size: $FLINK_JM_MEMORY
jobmanager.execution.failover-strategy: region
blob.server.port: $FLINK_BLOB_PORT
rest.address: $FLINK_HOST
rest.bind-address: $FLINK_HOST
rest.port: $FLINK_REST_PORT
taskmanager.host: $FLINK_HOST
taskmanager.bind-host: $FLINK_HOST
taskmanager.rpc.port: $FLINK_TM_RPC_PORT
taskmanager.data.port: $FLINK_TM_DATA_PORT
taskmanager.numberOfTaskSlots: $FLINK_SLOTS
taskmanager.memory.process.size: $FLINK_TM_MEMORY
# Beam keeps its state on the heap (hashmap backend) and runs user code in the
# Python SDK workers, outside this JVM: a small managed share leaves more heap.
taskmanager.memory.managed.fraction: 0.2
parallelism.default: $FLINK_PARALLELISM
state.backend.type: hashmap
state.checkpoints.dir: file://$FDIR/checkpoints
state.savepoints.dir: file://$FDIR/savepoints
state.checkpoints.num-retained: 3
execution.checkpointing.externalized-checkpoint-retention: RETAIN_ON_CANCELLATION
execution.checkpointing.timeout: 10 min
execution.checkpointing.min-pause: 1 s
restart-strategy.type: exponential-delay
# Beam's runner keeps references to the job's class loader after the job ends.
classloader.check-leaked-classloader: false
io.tmp.dirs: $FDIR/tmp
web.tmpdir: $FDIR/tmp/web
blob.storage.directory: $FDIR/tmp/blobs
EOF
}

flink_env() {  # the environment Flink's bin/ scripts read
    # FLINK_CONF_DIR also reaches the job server (started from here): its Flink client reads the
    # cluster's config.yaml (checkpoint and savepoint folders) instead of Flink's defaults.
    export FLINK_CONF_DIR="$CONF" FLINK_LOG_DIR="$LOGDIR" FLINK_PID_DIR="$FDIR/run"
    export FLINK_IDENT_STRING="${USER:-$(id -un)}"  # names Flink's log files
    # Full logs go to Flink's own file in $LOGDIR; the console (the .out file) gets warnings only.
    export FLINK_ENV_JAVA_OPTS="-Dconsole.log.level=WARN"
    if [[ "$JAVA" == */* ]]; then
        JAVA_HOME="$(dirname "$(dirname "$(readlink -f "$JAVA")")")"
        export JAVA_HOME
    fi
}

# Launch a Flink process (jobmanager|taskmanager) unless it runs; dies when its port is taken.
launch_flink() {  # $1 service $2 port it binds $3 its bin/ script
    local pid
    pid="$("${1}_pid")"
    if [[ -n "$pid" ]]; then
        say "$1 already running (pid $pid)"
        return 0
    fi
    set_service "$1"
    rm -f "$PIDFILE"
    port_open "$FLINK_HOST" "$2" && die "port $FLINK_HOST:$2 for the $1 is taken by a process not started from $FDIR; free it or change the port settings"
    [[ -f "$LOG" ]] && mv -f "$LOG" "$LOG.1"
    rm -f "$FDIR/run/"flink-*"$( [[ $1 == jobmanager ]] && echo standalonesession || echo taskexecutor )".pid
    say "starting $1 (log $LOGDIR)"
    launch_detached "$FDIR" "$FLINK_HOME/bin/$3" start-foreground
}

launch_pool() {
    local pid
    pid="$(pool_pid)"
    if [[ -n "$pid" ]]; then
        say "worker pool already running (pid $pid)"
        return 0
    fi
    set_service worker-pool
    rm -f "$PIDFILE"
    port_open "$FLINK_HOST" "$WORKER_POOL_PORT" && die "port $FLINK_HOST:$WORKER_POOL_PORT is taken by a process not started from $FDIR; free it or set WORKER_POOL_PORT"
    [[ -x "$APIM_PYTHON" ]] || die "$APIM_PYTHON not found; create the venv or set APIM_PYTHON"
    "$APIM_PYTHON" -c 'import apache_beam' 2>/dev/null || die "$APIM_PYTHON cannot import apache_beam"
    [[ -f "$LOG" ]] && mv -f "$LOG" "$LOG.1"
    say "starting Beam worker pool on :$WORKER_POOL_PORT (log $LOG)"
    # Beam 2.62's pool starts each SDK worker as `python -c ...` from PATH, not as its own
    # interpreter: the venv's bin/ goes first.
    launch_detached "$FDIR" env PATH="$(dirname "$APIM_PYTHON"):$PATH" \
        "$APIM_PYTHON" -m apache_beam.runners.worker.worker_pool_main \
        --service_port="$WORKER_POOL_PORT"
}

# ---------------------------------------------------------------- commands

cmd_start() {
    mkdir -p "$FDIR"
    exec 9>"$FDIR/.lock"
    flock -w 600 9 || die "another flink-cluster.sh holds $FDIR/.lock"

    need_java "Flink"
    fetch_flink
    [[ -n "$(jobmanager_pid)" ]] || render_conf
    flink_env

    # All three at once: the TaskManager retries until the JobManager is up.
    launch_flink jobmanager "$FLINK_REST_PORT" jobmanager.sh
    launch_flink taskmanager "$FLINK_TM_RPC_PORT" taskmanager.sh
    launch_pool

    set_service jobmanager
    await_ready "$(jobmanager_pid)" jobmanager_ready "$FLINK_START_TIMEOUT" jobmanager "$REST"
    set_service taskmanager
    await_ready "$(taskmanager_pid)" taskmanager_ready "$FLINK_START_TIMEOUT" \
        "taskmanager ($FLINK_SLOTS slots registered)" "$REST/overview"
    set_service worker-pool
    await_ready "$(pool_pid)" pool_ready "$FLINK_START_TIMEOUT" "worker pool" \
        "$FLINK_HOST:$WORKER_POOL_PORT"
    exec 9>&-  # flink-jobserver.sh takes its own lock; it must not keep ours
    jobserver start
    say "ready: --runner=PortableRunner --job_endpoint=localhost:$FLINK_JOBSERVER_JOB_PORT --environment_type=EXTERNAL --environment_config=localhost:$WORKER_POOL_PORT (web UI $REST)"
}

cmd_stop() {
    jobserver stop
    local pool
    pool="$(pool_pid)"
    # set_service first: stop_service removes $PIDFILE.
    set_service taskmanager
    stop_service "$FDIR" taskmanager_pid "$FLINK_HOST" "$FLINK_TM_RPC_PORT" "$FLINK_STOP_TIMEOUT" taskmanager 600
    set_service jobmanager
    stop_service "$FDIR" jobmanager_pid "$FLINK_HOST" "$FLINK_REST_PORT" "$FLINK_STOP_TIMEOUT" jobmanager 600
    set_service worker-pool
    stop_service "$FDIR" pool_pid "$FLINK_HOST" "$WORKER_POOL_PORT" "$FLINK_STOP_TIMEOUT" "worker pool" 600
    # SDK workers the pool started are in its process group (launch_detached's own session).
    if [[ -n "$pool" ]] && kill -0 -- "-$pool" 2>/dev/null; then
        say "stopping the worker pool's remaining SDK workers (process group $pool)"
        kill -TERM -- "-$pool" 2>/dev/null || true
        sleep 1
        kill -KILL -- "-$pool" 2>/dev/null || true
    fi
}

cmd_status() {
    local rc=0 pid o
    pid="$(jobmanager_pid)"
    if [[ -n "$pid" ]] && o="$(overview 3)"; then
        say "jobmanager running (pid $pid), REST $REST, flink $(sed -nE 's/.*"flink-version":"([^"]+)".*/\1/p' <<<"$o"), jobs running $(json_number "$o" jobs-running)"
    elif [[ -n "$pid" ]]; then
        say "jobmanager pid $pid is alive but $REST/overview does not answer (starting?)"; rc=3
    elif port_open "$FLINK_HOST" "$FLINK_REST_PORT"; then
        say "jobmanager not running from $FDIR, but something listens on $FLINK_HOST:$FLINK_REST_PORT"; rc=3
    else
        say "jobmanager not running"; rc=3
    fi
    pid="$(taskmanager_pid)"
    if [[ -n "$pid" ]] && taskmanager_ready 3; then
        o="$(overview 3)"
        say "taskmanager running (pid $pid), slots $(json_number "$o" slots-available) free of $(json_number "$o" slots-total)"
    elif [[ -n "$pid" ]]; then
        say "taskmanager pid $pid is alive but its $FLINK_SLOTS slots are not registered"; rc=3
    else
        say "taskmanager not running"; rc=3
    fi
    pid="$(pool_pid)"
    if [[ -n "$pid" ]] && pool_ready; then
        say "worker pool running (pid $pid) at $FLINK_HOST:$WORKER_POOL_PORT"
    elif [[ -n "$pid" ]]; then
        say "worker pool pid $pid is alive but $FLINK_HOST:$WORKER_POOL_PORT is closed"; rc=3
    else
        say "worker pool not running"; rc=3
    fi
    jobserver status || rc=3
    return "$rc"
}

cmd_rss() {
    local jm tm pool js
    jm="$(jobmanager_pid)"
    tm="$(taskmanager_pid)"
    if [[ -z "$jm" || -z "$tm" ]]; then
        say "the jobmanager or taskmanager is not running"
        return 3
    fi
    echo "jobmanager $(rss_mb "$jm")"
    echo "taskmanager $(rss_mb "$tm")"
    pool="$(pool_pid)"
    if [[ -n "$pool" ]]; then
        # shellcheck disable=SC2046
        echo "worker-pool $(rss_mb $(pgrep -g "$pool" || echo "$pool"))"
    fi
    js="$(jobserver rss 2>/dev/null)" && echo "jobserver $js"
    return 0
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
