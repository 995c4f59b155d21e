#!/usr/bin/env python3
"""Wait until a Kafka broker answers a metadata request.

Used by deploy/local/kafka.sh (start and status); usable on its own:

    python deploy/local/wait_kafka.py [--bootstrap 127.0.0.1:9092] [--timeout 90]

Exit codes: 0 the broker answered (its cluster id and broker count are
printed), 1 no answer within --timeout seconds, 2 kafka-python (3.x) is not
installed in this interpreter.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

# This file sits next to deploy/local/kafka/ (the broker's pom), which Python
# would otherwise import as a namespace package named "kafka", shadowing
# kafka-python. Drop this script's directory from the import path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


def _probe(bootstrap: str, request_timeout_ms: int) -> str:
    """One metadata round trip; returns a one-line description of the cluster."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="apim-wait-kafka",
        request_timeout_ms=request_timeout_ms,
        bootstrap_timeout_ms=request_timeout_ms,
        reconnect_backoff_ms=100,
        reconnect_backoff_max_ms=500,
    )
    try:
        cluster = admin.describe_cluster()
        topics = admin.list_topics()
    finally:
        admin.close()
    brokers = cluster.get("brokers") or []
    return (
        f"cluster_id={cluster.get('cluster_id')} brokers={len(brokers)} "
        f"controller={cluster.get('controller_id')} topics={len(topics)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP")
        or f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}",
        help="host:port of the broker (default: $KAFKA_BOOTSTRAP or 127.0.0.1:$KAFKA_PORT)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=90.0,
        help="give up after this many seconds (default 90)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=0.5,
        help="seconds between attempts (default 0.5)",
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    args = parser.parse_args(argv)

    # kafka-python logs every refused connection at ERROR/WARNING; while the
    # broker is still starting those are expected, so keep them out of the way.
    logging.basicConfig(level=logging.CRITICAL)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)

    try:
        from kafka import KafkaAdminClient  # noqa: F401
    except ImportError:
        print(
            f"wait_kafka: kafka-python is not installed for {sys.executable}; "
            "install it (pip install 'kafka-python>=3.0,<4') or point APIM_PYTHON "
            "at an interpreter that has it",
            file=sys.stderr,
        )
        return 2

    # Hard wall-clock limit: a peer that accepts connections but never answers
    # (not a Kafka broker) can keep kafka-python blocked past its own timeouts.
    def _give_up(signum, frame):  # the signal handler signature; neither is used
        print(
            f"wait_kafka: no metadata answer from {args.bootstrap} within "
            f"{args.timeout:g}s (attempt still blocked; is this a Kafka broker?)",
            file=sys.stderr,
        )
        sys.stderr.flush()
        os._exit(1)

    signal.signal(signal.SIGALRM, _give_up)
    signal.setitimer(signal.ITIMER_REAL, max(args.timeout, 1.0) + 1.0)

    deadline = time.monotonic() + max(args.timeout, 0.0)
    last_error: Exception | None = None
    while True:
        remaining = deadline - time.monotonic()
        # Each attempt may take at most what is left (but at least 1 s, so a
        # tiny timeout still gets one real try).
        request_timeout_ms = int(max(1.0, min(10.0, remaining)) * 1000)
        try:
            info = _probe(args.bootstrap, request_timeout_ms)
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last_error = exc
        else:
            if not args.quiet:
                print(f"kafka at {args.bootstrap} answers: {info}")
            return 0
        if time.monotonic() + args.interval >= deadline:
            break
        time.sleep(args.interval)

    print(
        f"wait_kafka: no metadata answer from {args.bootstrap} within "
        f"{args.timeout:g}s (last error: {type(last_error).__name__}: {last_error})",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
