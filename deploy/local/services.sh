#!/usr/bin/env bash
# Start, stop or check every local service the project needs: PostgreSQL
# (deploy/local/postgres.sh) and Kafka (deploy/local/kafka.sh).
#
# Usage: deploy/local/services.sh start|stop|status
#   start   start both (each is a no-op when already running); fails when
#           either fails
#   stop    stop both (Kafka first)
#   status  exit 0 when both answer, 3 when either does not
#
# Settings: every variable of postgres.sh and kafka.sh applies (APIM_LOCAL_DIR,
# APIM_PG_PORT, KAFKA_PORT, APIM_PYTHON, ...); see deploy/local/README.md.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() { echo "services.sh: ERROR: $*" >&2; exit 1; }

case "${1:-}" in
    start)
        "$SCRIPT_DIR/postgres.sh" start || die "PostgreSQL did not start (see above)"
        "$SCRIPT_DIR/kafka.sh" start || die "Kafka did not start (see above)"
        echo "services.sh: PostgreSQL and Kafka are up"
        ;;
    stop)
        rc=0
        "$SCRIPT_DIR/kafka.sh" stop || { echo "services.sh: kafka.sh stop failed" >&2; rc=1; }
        "$SCRIPT_DIR/postgres.sh" stop || { echo "services.sh: postgres.sh stop failed" >&2; rc=1; }
        exit "$rc"
        ;;
    status)
        rc=0
        "$SCRIPT_DIR/postgres.sh" status || rc=3
        "$SCRIPT_DIR/kafka.sh" status || rc=3
        exit "$rc"
        ;;
    -h|--help|help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        ;;
    *)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
        exit 2
        ;;
esac
