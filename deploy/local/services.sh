#!/usr/bin/env bash
# Start, stop or check every local service the project needs: PostgreSQL
# (deploy/local/postgres.sh), Kafka (deploy/local/kafka.sh) and the Beam Flink
# job server with its embedded Flink mini-cluster, which runs
# `pipeline run --streaming` (deploy/local/flink-jobserver.sh).
#
# Usage: deploy/local/services.sh start|stop|status
#   start   start all three (each is a no-op when already running); fails when
#           any fails
#   stop    stop all three (the job server, then Kafka, then PostgreSQL)
#   status  exit 0 when all answer, 3 when any does not
#
# Settings: every variable of postgres.sh, kafka.sh and flink-jobserver.sh applies (APIM_LOCAL_DIR,
# APIM_PG_PORT, KAFKA_PORT, APIM_PYTHON, ...); see deploy/local/README.md.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() { echo "services.sh: ERROR: $*" >&2; exit 1; }

case "${1:-}" in
    start)
        "$SCRIPT_DIR/postgres.sh" start || die "PostgreSQL did not start (see above)"
        "$SCRIPT_DIR/kafka.sh" start || die "Kafka did not start (see above)"
        "$SCRIPT_DIR/flink-jobserver.sh" start || die "the Beam Flink job server did not start (see above)"
        echo "services.sh: PostgreSQL, Kafka and the Flink job server are up"
        ;;
    stop)
        rc=0
        "$SCRIPT_DIR/flink-jobserver.sh" stop || { echo "services.sh: flink-jobserver.sh stop failed" >&2; rc=1; }
        "$SCRIPT_DIR/kafka.sh" stop || { echo "services.sh: kafka.sh stop failed" >&2; rc=1; }
        "$SCRIPT_DIR/postgres.sh" stop || { echo "services.sh: postgres.sh stop failed" >&2; rc=1; }
        exit "$rc"
        ;;
    status)
        rc=0
        "$SCRIPT_DIR/postgres.sh" status || rc=3
        "$SCRIPT_DIR/kafka.sh" status || rc=3
        "$SCRIPT_DIR/flink-jobserver.sh" status || rc=3
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
