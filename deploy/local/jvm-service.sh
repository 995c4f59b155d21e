# Shared by the scripts that run a JVM service (kafka.sh, flink-jobserver.sh,
# flink-cluster.sh). Sourced, not run: the caller defines say() and die() first.

port_open() {  # $1 host $2 port
    (exec 3<>"/dev/tcp/$1/$2") >/dev/null 2>&1
}

# Dies unless $JAVA is Java 17 or newer; $1 names what needs it.
need_java() {
    command -v "$JAVA" >/dev/null 2>&1 || die "java not found ($JAVA); install a JDK/JRE 17 or newer (apt-get install -y openjdk-17-jre-headless) or set JAVA"
    local ver major
    ver="$("$JAVA" -version 2>&1 | head -n1)"
    major="$(sed -E 's/.*version "([0-9]+)(\.[0-9]+)*.*/\1/' <<<"$ver")"
    if [[ "$major" == 1 ]]; then major=8; fi
    [[ "$major" =~ ^[0-9]+$ && "$major" -ge 17 ]] \
        || die "$1 needs Java 17 or newer, '$JAVA -version' says: $ver"
}

# Copy a pom's runtime jars from Maven Central into $2, unless $2 already matches the pom.
# $1 pom  $2 libs folder  $3 work folder (temp copy, mvn.log)  $4 jar glob that must arrive  $5 what
# Two services may share one libs folder (the embedded job server and the cluster's) and start side by
# side (`make test`): the check and the copy happen under a lock next to the folder.
fetch_jars() {
    local pom="$1" libs="$2" work="$3" marker="$4" what="$5"
    local stamp="$libs.sha256" want lockfd rc=0
    want="$(sha256sum "$pom" | cut -d' ' -f1)"
    mkdir -p "$(dirname "$libs")" "$work"
    exec {lockfd}>"$libs.lock"
    flock -w 900 "$lockfd" || die "another start holds $libs.lock for over 900 s"
    _fetch_jars_locked "$pom" "$libs" "$work" "$marker" "$what" "$stamp" "$want" || rc=$?
    exec {lockfd}>&-
    return "$rc"
}

_fetch_jars_locked() {
    local pom="$1" libs="$2" work="$3" marker="$4" what="$5" stamp="$6" want="$7"
    if [[ -d "$libs" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && compgen -G "$libs/$marker" >/dev/null; then
        return 0
    fi
    command -v "$MVN" >/dev/null 2>&1 || die "mvn not found ($MVN); install Maven (apt-get install -y maven) or set MVN"
    say "fetching $what jars from Maven Central ($pom) ..."
    local tmp="$work/libs.tmp.$$" t0=$SECONDS
    rm -rf "$tmp"
    if ! "$MVN" -B -q -f "$pom" dependency:copy-dependencies \
            -DoutputDirectory="$tmp" -DincludeScope=runtime >"$work/mvn.log" 2>&1; then
        tail -n 40 "$work/mvn.log" >&2 || true
        rm -rf "$tmp"
        die "mvn could not copy the $what jars (full output: $work/mvn.log)"
    fi
    compgen -G "$tmp/$marker" >/dev/null || die "mvn ran but no $marker arrived in $tmp"
    rm -rf "$libs"
    mv "$tmp" "$libs"
    echo "$want" >"$stamp"
    say "jars ready in $libs ($(ls "$libs" | wc -l) files, $(du -sm "$libs" | cut -f1) MB, $((SECONDS - t0)) s)"
}

# SIGTERM $1, wait up to $2 seconds, then SIGKILL; $3 names it in the messages.
terminate() {
    local pid="$1" timeout="$2" what="$3"
    say "stopping $what (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + timeout))
    while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "still alive after ${timeout}s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
}

# The `stop` command: under the state folder's lock, stop our process if it runs, and never touch a
# listener that is not ours. $1 state folder  $2 function printing our pid  $3 host  $4 port
# $5 SIGTERM timeout  $6 what  $7 seconds to wait for the lock
stop_service() {
    local dir="$1" pid_of="$2" host="$3" port="$4" timeout="$5" what="$6" lock_wait="$7" pid
    mkdir -p "$dir"
    exec 9>"$dir/.lock"
    flock -w "$lock_wait" 9 || die "another $(basename "$0") holds $dir/.lock"
    pid="$("$pid_of")"
    if [[ -z "$pid" ]]; then
        rm -f "$PIDFILE"
        if port_open "$host" "$port"; then
            say "not running from $dir, but something listens on $host:$port (not ours, left alone)"
        else
            say "not running"
        fi
        return 0
    fi
    terminate "$pid" "$timeout" "$what"
    rm -f "$PIDFILE"
    say "stopped"
}

# Our pid from $PIDFILE if that process is alive and its command line holds $1 (a recycled pid is
# someone else's); prints nothing otherwise.
pid_from_file() {
    local pid
    [[ -f "$PIDFILE" ]] || return 0
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$1"; then
        echo "$pid"
    fi
}

# Wait until "$2 SECONDS" succeeds (it may wait up to SECONDS itself) while pid $1 lives.
# $3 timeout  $4 what  $5 where it answers; dies with the log's tail on failure.
await_ready() {
    local pid="$1" check="$2" timeout="$3" what="$4" where="$5"
    local t0=$SECONDS deadline=$((SECONDS + timeout)) left
    while (( SECONDS < deadline )); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "---- last lines of $LOG ----" >&2
            tail -n 40 "$LOG" >&2 || true
            rm -f "$PIDFILE"
            die "the $what process (pid $pid) exited during startup; see $LOG"
        fi
        left=$(( deadline - SECONDS ))
        if "$check" "$(( left > 5 ? 5 : (left > 1 ? left : 1) ))"; then
            say "$what up (pid $pid) at $where after $((SECONDS - t0)) s"
            return 0
        fi
        sleep 0.2
    done
    echo "---- last lines of $LOG ----" >&2
    tail -n 40 "$LOG" >&2 || true
    die "the $what (pid $pid) did not answer at $where within ${timeout}s; it is left running, see $LOG ($(basename "$0") stop to end it)"
}

# Run the command in the remaining arguments in folder $1, detached (own session, so its own
# process group; no lock inherited), output to $LOG; sets LAUNCHED_PID and writes it to $PIDFILE.
launch_detached() {
    local dir="$1"
    shift
    (
        cd "$dir"
        exec 9>&-  # the service must not inherit (and so keep) the caller's lock
        exec setsid nohup "$@" </dev/null >"$LOG" 2>&1
    ) &
    LAUNCHED_PID=$!
    echo "$LAUNCHED_PID" >"$PIDFILE"
}

# launch_detached for "$JAVA" with the remaining arguments, in folder $1.
launch_jvm() {
    local dir="$1"
    shift
    launch_detached "$dir" "$JAVA" "$@"
}
