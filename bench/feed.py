"""Simulated usage records for the pipeline, without the gRPC hop.

Pipeline tests and benchmarks need millions of realistic records fast. This
runs the simulator's traffic through the collector's own code path in
process (Mixer request bytes -> compiled decoder -> mapping with credential
resolution -> columnar records per partition), so the records are exactly
what a collector would publish, and returns the ground truth with them.

It lives in bench/, the top layer, because it imports both the simulator and
the collector's internals (the simulator must not import the collector);
the pipeline tests import it from here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from collector.columns import BatchRecord, partitioned_records
from collector.credentials import CredentialResolver, SubscriptionCatalog
from collector.decode import decode_call
from collector.mapping import InstanceMapper
from simulator.catalog import build_catalog
from simulator.ground_truth import GroundTruth
from simulator.mixer import build_requests
from simulator.tokens import Credentials, shared_signing_key, subscription_catalog_rows
from simulator.traffic import SimRequest, generate


@dataclass
class Feed:
    """A stream of (call id, records) plus the ground truth of every event in it."""

    truth: GroundTruth
    calls: int = 0
    events: int = 0


def simulated_events(*, seed: int, rate: float, duration_s: float, start_ms: int, batch_size: int = 100,
                     feed: Feed | None = None,
                     requests: list[SimRequest] | None = None) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Yield (call id, the call's mapped events) for simulated traffic; ``feed`` collects the ground truth."""
    catalog = build_catalog(seed=seed)
    credentials = Credentials(catalog, shared_signing_key(), start_ms=start_ms, duration_s=duration_s)
    if requests is None:
        requests = list(generate(catalog, rate=rate, duration_s=duration_s, start_ms=start_ms, seed=seed,
                                 credentials=credentials))
    if feed is not None:
        feed.truth.add_all(requests)
    resolver = CredentialResolver(SubscriptionCatalog.from_rows(subscription_catalog_rows(catalog), "simulator"))
    mapper = InstanceMapper(resolver, clock=lambda: start_ms / 1000 + duration_s)
    for req in build_requests(requests, batch_size=batch_size, instance_name="wso2-metrics.instance.istio-system"):
        raw = req.SerializeToString()
        call_id = hashlib.blake2b(raw, digest_size=16).hexdigest()
        mapped = mapper.map_call(decode_call(raw), call_id)
        if mapped.rejected:
            raise RuntimeError(f"simulated call {call_id} had rejected instances: {mapped.rejected[0].reason}")
        if feed is not None:
            feed.calls += 1
            feed.events += len(mapped.events)
        yield call_id, mapped.events


def simulated_calls(*, seed: int, rate: float, duration_s: float, start_ms: int, partitions: int,
                    batch_size: int = 100, feed: Feed | None = None,
                    requests: list[SimRequest] | None = None) -> Iterator[tuple[str, list[BatchRecord]]]:
    """Yield (call id, the call's records, as the collector publishes them) for simulated traffic."""
    for call_id, events in simulated_events(seed=seed, rate=rate, duration_s=duration_s, start_ms=start_ms,
                                            batch_size=batch_size, feed=feed, requests=requests):
        yield call_id, partitioned_records(events, partitions=partitions, call_id=call_id,
                                           producer_id="simulator-feed")
