#!/usr/bin/env bash
# Local PostgreSQL cluster for development and tests: its own data directory,
# listening only on 127.0.0.1, with role apim (password apim) owning the
# databases apim and apim_test. Uses Debian's PostgreSQL packages (installs
# them with apt-get when missing); no Docker.
#
# Usage: deploy/local/postgres.sh start|stop|status|restart
#   start    install (if needed), initdb (first time), start, wait for
#            pg_isready, create role and databases (idempotent), print URLs;
#            exits 0 at once when already running
#   stop     pg_ctl stop -m fast (nothing to do when not running)
#   status   exit 0 when the server accepts connections, 3 when not
#
# Settings (environment variables):
#   APIM_LOCAL_DIR      state root (default: <repo>/.local)
#   APIM_PG_DIR         cluster root (default: $APIM_LOCAL_DIR/postgres), holding
#                       data/ (PGDATA), run/ (unix socket) and postgres.log.
#                       As root the server runs as the OS user `postgres`; if that
#                       user cannot reach the default place, the cluster goes to
#                       /var/tmp/apim-postgres-<hash of APIM_LOCAL_DIR> instead
#                       (the script says so).
#   APIM_PG_HOST        listen address (default 127.0.0.1)
#   APIM_PG_PORT        port (default 55432)
#   APIM_PG_USER        application role (default apim)
#   APIM_PG_PASSWORD    its password (default apim)
#   APIM_PG_DATABASES   databases owned by that role, space separated
#                       (default "apim apim_test")
#   APIM_PG_BIN         directory of initdb/pg_ctl/psql (default: the newest
#                       /usr/lib/postgresql/<version>/bin, or the one matching
#                       an existing cluster's PG_VERSION)
#   APIM_PG_OS_USER     OS user that runs the server when started as root
#                       (default postgres)
#   APIM_PG_START_TIMEOUT  seconds to wait for startup (default 60)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"

APIM_LOCAL_DIR="${APIM_LOCAL_DIR:-$REPO_ROOT/.local}"
PG_HOST="${APIM_PG_HOST:-127.0.0.1}"
PG_PORT="${APIM_PG_PORT:-55432}"
PG_APP_USER="${APIM_PG_USER:-apim}"
PG_APP_PASSWORD="${APIM_PG_PASSWORD:-apim}"
PG_DATABASES="${APIM_PG_DATABASES:-apim apim_test}"
PG_OS_USER="${APIM_PG_OS_USER:-postgres}"
PG_START_TIMEOUT="${APIM_PG_START_TIMEOUT:-60}"

say() { echo "postgres.sh: $*"; }
die() { echo "postgres.sh: ERROR: $*" >&2; exit 1; }

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

IS_ROOT=0
[[ "${EUID:-$(id -u)}" -eq 0 ]] && IS_ROOT=1

# ---------------------------------------------------------------- where

# Run a command as the OS user that owns the cluster.
as_pg() {
    if [[ $IS_ROOT -eq 1 ]]; then
        (cd / && runuser -u "$PG_OS_USER" -- "$@")
    else
        "$@"
    fi
}

# The nearest existing ancestor of $1 (or $1 itself).
existing_ancestor() {
    local p="$1"
    while [[ ! -e "$p" ]]; do p="$(dirname "$p")"; done
    echo "$p"
}

resolve_root() {
    local wanted="${APIM_PG_DIR:-$APIM_LOCAL_DIR/postgres}"
    PG_ROOT="$wanted"
    # As root the server runs as $PG_OS_USER, which must be able to reach the
    # cluster: access() on the nearest existing directory fails unless every
    # directory on the way is searchable by it. (We create what is missing as
    # root and chown it.)
    if [[ $IS_ROOT -eq 1 ]] && id -u "$PG_OS_USER" >/dev/null 2>&1 \
            && ! as_pg test -x "$(existing_ancestor "$wanted")"; then
        PG_ROOT="/var/tmp/apim-postgres-$(printf '%s' "$APIM_LOCAL_DIR" | sha256sum | cut -c1-12)"
        if [[ "${1:-}" != quiet ]]; then
            say "note: OS user $PG_OS_USER cannot reach $wanted (a parent directory is not searchable by it); using $PG_ROOT instead"
        fi
    fi
    PG_DATA="$PG_ROOT/data"
    PG_RUN="$PG_ROOT/run"
    PG_LOG="$PG_ROOT/postgres.log"
}

# ---------------------------------------------------------------- binaries

find_bin() {
    if [[ -n "${APIM_PG_BIN:-}" ]]; then
        [[ -x "$APIM_PG_BIN/pg_ctl" ]] || die "APIM_PG_BIN=$APIM_PG_BIN has no pg_ctl"
        PG_BIN="$APIM_PG_BIN"
        return 0
    fi
    PG_BIN=""
    if [[ -f "${PG_DATA:-/nonexistent}/PG_VERSION" ]]; then
        local v
        v="$(cat "$PG_DATA/PG_VERSION")"
        if [[ -x "/usr/lib/postgresql/$v/bin/pg_ctl" ]]; then
            PG_BIN="/usr/lib/postgresql/$v/bin"
            return 0
        fi
        die "the cluster in $PG_DATA was made by PostgreSQL $v, whose binaries (/usr/lib/postgresql/$v/bin) are missing; install postgresql-$v or delete $PG_DATA to start afresh"
    fi
    local d
    d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
    if [[ -n "$d" && -x "$d/initdb" && -x "$d/pg_ctl" ]]; then
        PG_BIN="$d"
    fi
}

install_postgres() {
    if [[ -n "${APIM_PG_BIN:-}" ]] || compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null; then
        return 0
    fi
    say "PostgreSQL server binaries not found under /usr/lib/postgresql; installing the Debian package 'postgresql'"
    local sudo=()
    if [[ $IS_ROOT -ne 1 ]]; then
        command -v sudo >/dev/null 2>&1 || die "PostgreSQL is not installed and we are not root (and have no sudo): run 'apt-get install -y postgresql' as root, or set APIM_PG_BIN"
        sudo=(sudo)
    fi
    command -v apt-get >/dev/null 2>&1 || die "PostgreSQL is not installed and apt-get is not available; install PostgreSQL server binaries and set APIM_PG_BIN"
    "${sudo[@]}" apt-get update || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y postgresql || die "apt-get install -y postgresql failed"
    compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null \
        || die "installed 'postgresql' but still found no /usr/lib/postgresql/*/bin/pg_ctl"
}

# ---------------------------------------------------------------- cluster

port_open() {  # $1 host $2 port
    (exec 3<>"/dev/tcp/$1/$2") >/dev/null 2>&1
}

running() {  # our postmaster is alive
    [[ -f "$PG_DATA/postmaster.pid" ]] || return 1
    [[ -n "${PG_BIN:-}" ]] || return 1
    as_pg "$PG_BIN/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1
}

superuser_name() {
    if [[ $IS_ROOT -eq 1 ]]; then echo "$PG_OS_USER"; else id -un; fi
}

prepare_dirs() {
    mkdir -p "$PG_ROOT" "$PG_RUN"
    if [[ $IS_ROOT -eq 1 ]]; then
        chown "$PG_OS_USER:" "$PG_ROOT" "$PG_RUN"
        [[ -d "$PG_DATA" ]] && chown -R "$PG_OS_USER:" "$PG_DATA"
        [[ -f "$PG_LOG" ]] && chown "$PG_OS_USER:" "$PG_LOG"
        as_pg test -w "$PG_ROOT" \
            || die "OS user $PG_OS_USER cannot write $PG_ROOT even after chown (a parent directory not searchable? set APIM_PG_DIR)"
    fi
    chmod 0755 "$PG_RUN"
}

init_cluster() {
    if [[ -f "$PG_DATA/PG_VERSION" ]]; then
        return 0
    fi
    if [[ -d "$PG_DATA" ]] && [[ -n "$(ls -A "$PG_DATA" 2>/dev/null)" ]]; then
        die "$PG_DATA exists and is not empty but holds no cluster (no PG_VERSION); move it away or delete it"
    fi
    say "initdb into $PG_DATA ($("$PG_BIN/postgres" --version))"
    if ! as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U "$(superuser_name)" -E UTF8 --no-locale \
            --auth-local=peer --auth-host=scram-sha-256 >"$PG_ROOT/initdb.log" 2>&1; then
        cat "$PG_ROOT/initdb.log" >&2
        die "initdb into $PG_DATA failed"
    fi
    echo "include_if_exists = 'apim_local.conf'	# written by deploy/local/postgres.sh" \
        >>"$PG_DATA/postgresql.conf"
}

write_settings() {
    local f="$PG_DATA/apim_local.conf"
    cat >"$f" <<EOF
# Written by deploy/local/postgres.sh at every start; edit the script, not this.
listen_addresses = '$PG_HOST'
port = $PG_PORT
unix_socket_directories = '$PG_RUN'
max_connections = 100
shared_buffers = 128MB
fsync = on
timezone = 'UTC'
log_timezone = 'UTC'
logging_collector = off
log_min_messages = warning
log_line_prefix = '%m [%p] %q%u@%d '
EOF
    [[ $IS_ROOT -eq 1 ]] && chown "$PG_OS_USER:" "$f"
    return 0
}

ensure_roles() {
    local su
    su="$(superuser_name)"
    if ! as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_RUN" -p "$PG_PORT" -U "$su" -d postgres \
            -v app_user="$PG_APP_USER" -v app_pw="$PG_APP_PASSWORD" -v dbs="$PG_DATABASES" >/dev/null <<'SQL'
SELECT format('CREATE ROLE %I LOGIN CREATEDB PASSWORD %L', :'app_user', :'app_pw')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'app_user') \gexec
SELECT format('ALTER ROLE %I LOGIN CREATEDB PASSWORD %L', :'app_user', :'app_pw') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', d, :'app_user')
  FROM unnest(string_to_array(trim(:'dbs'), ' ')) AS d
 WHERE d <> '' AND NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = d) \gexec
SELECT format('ALTER DATABASE %I OWNER TO %I', d, :'app_user')
  FROM unnest(string_to_array(trim(:'dbs'), ' ')) AS d WHERE d <> '' \gexec
SQL
    then
        die "could not create role $PG_APP_USER / databases ($PG_DATABASES) through $PG_RUN"
    fi
}

print_urls() {
    local d
    for d in $PG_DATABASES; do
        echo "  postgresql+psycopg://$PG_APP_USER:$PG_APP_PASSWORD@$PG_HOST:$PG_PORT/$d"
    done
}

# ---------------------------------------------------------------- commands

cmd_start() {
    install_postgres
    if [[ $IS_ROOT -eq 1 ]] && ! id -u "$PG_OS_USER" >/dev/null 2>&1; then
        die "OS user $PG_OS_USER does not exist (the postgresql package creates it); create it or set APIM_PG_OS_USER"
    fi
    resolve_root
    mkdir -p "$PG_ROOT"
    exec 9>>"$PG_ROOT/.lock"
    flock -w 120 9 || die "another postgres.sh holds $PG_ROOT/.lock"
    find_bin
    [[ -n "$PG_BIN" ]] || die "no PostgreSQL binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin; set APIM_PG_BIN"

    if running; then
        if "$PG_BIN/pg_isready" -q -h "$PG_HOST" -p "$PG_PORT" -t 10; then
            ensure_roles
            say "already running (data $PG_DATA), accepting connections on $PG_HOST:$PG_PORT"
            print_urls
            return 0
        fi
        say "a postmaster for $PG_DATA is running but not accepting connections on $PG_HOST:$PG_PORT; waiting"
    else
        if port_open "$PG_HOST" "$PG_PORT"; then
            die "port $PG_HOST:$PG_PORT is already taken by another process; stop it or set APIM_PG_PORT"
        fi
        prepare_dirs
        init_cluster
        write_settings
        say "starting PostgreSQL $(cat "$PG_DATA/PG_VERSION") on $PG_HOST:$PG_PORT (data $PG_DATA, log $PG_LOG)"
        # 9>&-: the postmaster must not inherit (and so keep) our lock.
        if ! as_pg "$PG_BIN/pg_ctl" start -D "$PG_DATA" -l "$PG_LOG" -w -t "$PG_START_TIMEOUT" -s 9>&-; then
            echo "---- last lines of $PG_LOG ----" >&2
            tail -n 30 "$PG_LOG" >&2 || true
            die "PostgreSQL did not start; see $PG_LOG"
        fi
    fi

    local deadline=$((SECONDS + PG_START_TIMEOUT))
    until "$PG_BIN/pg_isready" -q -h "$PG_HOST" -p "$PG_PORT" -t 2; do
        if (( SECONDS >= deadline )); then
            tail -n 30 "$PG_LOG" >&2 || true
            die "PostgreSQL is not accepting connections on $PG_HOST:$PG_PORT after ${PG_START_TIMEOUT}s; see $PG_LOG"
        fi
        sleep 0.5
    done
    ensure_roles
    say "ready on $PG_HOST:$PG_PORT; SQLAlchemy URLs:"
    print_urls
}

cmd_stop() {
    resolve_root quiet
    find_bin
    if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
        say "no cluster in $PG_DATA; nothing to stop"
        return 0
    fi
    [[ -n "$PG_BIN" ]] || die "no PostgreSQL binaries found to stop $PG_DATA (set APIM_PG_BIN)"
    if ! running; then
        say "not running (data $PG_DATA)"
        return 0
    fi
    say "stopping (fast mode, data $PG_DATA)"
    as_pg "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m fast -w -t 60 -s \
        || die "pg_ctl stop failed for $PG_DATA; see $PG_LOG"
    say "stopped"
}

cmd_status() {
    resolve_root quiet
    find_bin
    local isready=pg_isready
    [[ -n "${PG_BIN:-}" ]] && isready="$PG_BIN/pg_isready"
    if command -v "$isready" >/dev/null 2>&1 && "$isready" -q -h "$PG_HOST" -p "$PG_PORT" -t 3; then
        if running; then
            say "running (data $PG_DATA), accepting connections on $PG_HOST:$PG_PORT"
        else
            say "something accepts PostgreSQL connections on $PG_HOST:$PG_PORT, but not the cluster in $PG_DATA"
        fi
        return 0
    fi
    if running; then
        say "postmaster for $PG_DATA is up but not accepting connections on $PG_HOST:$PG_PORT"
    else
        say "not running ($PG_HOST:$PG_PORT)"
    fi
    return 3
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    restart) cmd_stop; cmd_start ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
esac
