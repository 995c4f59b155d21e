"""One simulation run end to end: catalog -> traffic -> Mixer calls -> collector, with ground truth.

:func:`simulate` is the library entry point the CLI, the demo, the tests and
the benchmarks share. It streams: requests are generated, batched, built and
sent lazily, so memory stays flat however long the run. The returned ground
truth counts only batches the collector acknowledged (with ``dry_run``: every
batch built), so it is exactly what the store should end up holding.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from core.settings import SettingsError
from simulator.catalog import Catalog, build_catalog
from simulator.config import SimulationConfig
from simulator.ground_truth import GroundTruth
from simulator.mixer import MetricRequestBuilder, batched
from simulator.openapi import write_openapi
from simulator.sender import SendReport, SendSettings, send
from simulator.tokens import Credentials, SigningKey, write_subscription_catalog
from simulator.traffic import SimRequest, TrafficModel

MINUTE_MS = 60_000


def resolve_start_ms(start: int | str | None, *, now_ms: int | None = None) -> int:
    """The first simulated request time, in epoch ms.

    Args:
        start: epoch ms (int or digit string), an ISO-8601 time (UTC unless it
            carries an offset; ``Z`` accepted), or None for now floored to the minute.
        now_ms: the clock for the None case (tests pass their own).

    Raises:
        SettingsError: ``start`` is neither.
    """
    if start is None or start == "":
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return now - now % MINUTE_MS
    if isinstance(start, int):
        return start
    text = start.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise SettingsError(f"setting start: expected ISO-8601 UTC or epoch ms, got {start!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def signing_key_for(config: SimulationConfig) -> SigningKey:
    """The run's token signing key: the given object, the key file, or a fresh key."""
    if config.key is not None:
        return config.key
    if config.signing_key:
        return SigningKey.load_or_create(config.signing_key)
    return SigningKey.generate()


def simulate(config: SimulationConfig, *, catalog: Catalog | None = None,
             on_delivered: Callable[[int], None] | None = None,
             unconfirmed: GroundTruth | None = None) -> tuple[SendReport, GroundTruth]:
    """Generate, build and send one run of traffic.

    Steps, in order:

    1. build the catalog from ``seed`` (or use ``catalog``), pick the signing
       key, write the JWKS and subscription catalog if asked;
    2. generate ``int(rate * duration)`` requests starting at ``start``;
    3. batch them ``batch_size`` per ``HandleMetricRequest`` with ``dedup_id``
       ``dedup_base``, ``dedup_base + 1``, ...;
    4. send them (unless ``dry_run``), adding each acknowledged batch to the
       ground truth;
    5. write the ground truth CSV if ``ground_truth`` is set.

    Args:
        config: the run.
        catalog: a prebuilt catalog (must match ``seed`` for the subscription
            file a collector loaded to agree).
        on_delivered: told the number of requests of each call the collector
            acknowledged, as it happens (harnesses measure freshness and
            recovery from it).
        unconfirmed: if given, counts the requests whose delivery was not confirmed
            (a call that finally failed; the messages of an ALS stream that broke):
            some of them may have been stored all the same.

    Returns:
        (send report, ground truth of delivered requests).

    Raises:
        SettingsError: an unusable setting (non-positive rate, unparsable start, ...).
    """
    config.validate()
    profile = config.profile
    start_ms = resolve_start_ms(config.start)
    if catalog is None:
        catalog = build_catalog(config.seed, config.apis, config.applications, config.users, profile=profile)
    key = signing_key_for(config)
    if config.jwks_out:
        key.write_jwks(config.jwks_out)
    if config.subscriptions_out:
        write_subscription_catalog(config.subscriptions_out, catalog)
    credentials = Credentials(catalog, key, start_ms=start_ms, duration_s=config.duration, profile=profile)
    requests = TrafficModel(catalog, credentials, profile).requests(
        rate=config.rate, duration_s=config.duration, start_ms=start_ms, seed=config.seed)
    if config.openapi_out:
        write_openapi(config.openapi_out, catalog.apis)
    truth = GroundTruth()
    if config.protocol != "mixer":
        report = _simulate_access_logs(config, requests, truth, start_ms, on_delivered, unconfirmed)
        if config.ground_truth:
            truth.write_csv(config.ground_truth)
        return report, truth
    builder = MetricRequestBuilder(instance_name=config.instance_name, profile=profile)

    in_flight: dict[str, list[SimRequest]] = {}

    def messages():
        for n, batch in enumerate(batched(requests, config.batch_size)):
            dedup_id = str(config.dedup_base + n)
            in_flight[dedup_id] = batch
            yield builder.build(batch, dedup_id)

    def on_done(msg, delivered: bool) -> None:
        batch = in_flight.pop(msg.dedup_id)
        if delivered:
            truth.add_all(batch)
            if on_delivered is not None:
                on_delivered(len(batch))
        elif unconfirmed is not None:
            unconfirmed.add_all(batch)

    if config.dry_run:
        report = SendReport(target=config.target, dry_run=True)
        began = time.monotonic()
        for msg in messages():
            report.calls += 1
            report.delivered_calls += 1
            report.instances += len(msg.instances)
            on_done(msg, True)
        report.elapsed_s = time.monotonic() - began
    else:
        report = send(messages(), SendSettings.from_config(config, start_ms), on_done=on_done)
    if config.ground_truth:
        truth.write_csv(config.ground_truth)
    return report, truth


def _simulate_access_logs(config: SimulationConfig, requests: Iterator[SimRequest], truth: GroundTruth,
                          start_ms: int, on_delivered: Callable[[int], None] | None,
                          unconfirmed: GroundTruth | None) -> SendReport:
    """Istio 1.8+: the requests as sidecar flushes, sent as ALS messages or OTLP exports."""
    from simulator.envoy import flushes, otlp_export

    batches = flushes(requests, flush_interval_ms=config.flush_interval_ms, buffer_bytes=config.buffer_bytes,
                      profile=config.profile)

    def delivered(batch: list[SimRequest], ok: bool) -> None:
        if ok:
            truth.add_all(batch)
            if on_delivered is not None:
                on_delivered(len(batch))
        elif unconfirmed is not None:
            unconfirmed.add_all(batch)

    settings = SendSettings.from_config(config, start_ms)
    if config.dry_run:
        report = SendReport(target=config.target, dry_run=True)
        began = time.monotonic()
        for flush in batches:
            report.calls += 1
            report.delivered_calls += 1
            report.instances += len(flush.requests)
            delivered(flush.requests, True)
        report.elapsed_s = time.monotonic() - began
        return report
    if config.protocol == "als":
        from simulator.als_sender import send_streams

        return send_streams(batches, settings, stream_messages=config.stream_messages, on_done=delivered)
    in_flight: dict[int, list[SimRequest]] = {}

    def exports() -> Iterator[Any]:
        for flush in batches:
            export = otlp_export(flush, config.profile)
            in_flight[id(export)] = flush.requests
            yield export

    return send(exports(), settings, protocol="otel",
                on_done=lambda export, ok: delivered(in_flight.pop(id(export)), ok))
