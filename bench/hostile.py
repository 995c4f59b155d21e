"""Malformed and hostile HandleMetric calls, each of a kind the collector must refuse.

Every kind here is refused as a whole (the call gets a gRPC error) or has every instance refused
(dead-lettered with a reason, the call answered OK), so none of it can become usage: a fault
scenario mixing these into real traffic still compares the store with the real traffic's ground
truth exactly. Seeded, so a run can be repeated.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc

from schemas.mixer.template.metric import template_handler_service_pb2 as m
from schemas.policy.v1beta1 import type_pb2 as t

HANDLE_METRIC = "/metric.HandleMetricService/HandleMetric"
INSTANCE = "wso2-metrics.instance.istio-system"


def _instance(rng: random.Random, *, now_ms: int) -> m.InstanceMsg:
    """A WSO2 metric instance that would be valid; callers then break it."""
    s = lambda v: t.Value(string_value=v)  # noqa: E731
    ts = lambda ms: t.Value(timestamp_value=t.TimeStamp(value={"seconds": ms // 1000,  # noqa: E731
                                                                "nanos": (ms % 1000) * 1_000_000}))
    inst = m.InstanceMsg(name=INSTANCE, value=t.Value(int64_value=1))
    dims = {"api_context": s("/hostile/1.0.0"), "api_name": s("HostileAPI"), "api_version": s("1.0.0"),
            "resource_path": s("/x"), "resource_path_template": s("/x"), "request_method": s("GET"),
            "request_timestamp": ts(now_ms - 500), "response_timestamp": ts(now_ms - 480),
            "response_code": t.Value(int64_value=200), "response_size": t.Value(int64_value=10),
            "destination": s("hostile.default.svc"), "auth_header_value": s(""), "user_agent": s("fuzz"),
            "api_protocol": s("https"), "request_host": s("h"), "user_ip": s(f"10.0.0.{rng.randrange(256)}")}
    for k, v in dims.items():
        inst.dimensions[k].CopyFrom(v)
    return inst


def _with_invalid_utf8(raw: bytes) -> bytes:
    """Replace the bytes of one known string with an invalid UTF-8 sequence of the same length."""
    return raw.replace(b"HostileAPI", b"Hostile\xff\xfeI", 1)


def build(kind: str, rng: random.Random, *, dedup: int) -> bytes:
    """One hostile call of ``kind`` (see ``KINDS``)."""
    now_ms = int(time.time() * 1000)
    good = m.HandleMetricRequest(dedup_id=f"hostile-{dedup}", instances=[_instance(rng, now_ms=now_ms)])
    if kind == "random_bytes":
        # wire type 7 does not exist: the first tag is invalid whatever follows
        return bytes([0x07]) + rng.randbytes(rng.randrange(0, 2000))
    if kind == "truncated":
        raw = good.SerializeToString()
        return raw[:-1]  # the last field is length-delimited: one byte short cannot parse
    if kind == "invalid_utf8":
        return _with_invalid_utf8(good.SerializeToString())
    if kind == "wrong_types":  # response code as a string, timestamps as ints: every instance refused
        inst = good.instances[0]
        inst.dimensions["response_code"].CopyFrom(t.Value(string_value="two hundred"))
        inst.dimensions["request_timestamp"].CopyFrom(t.Value(int64_value=now_ms))
        return good.SerializeToString()
    if kind == "missing_api":  # no API name: the instance cannot be attributed, so it is refused
        del good.instances[0].dimensions["api_name"]
        return good.SerializeToString()
    if kind == "too_many_instances":  # one more than the collector's default limit (20,000)
        one = m.HandleMetricRequest(instances=[good.instances[0]]).SerializeToString()
        return m.HandleMetricRequest(dedup_id=good.dedup_id).SerializeToString() + one * 20_001
    if kind == "oversize":
        good.instances[0].dimensions["user_agent"].CopyFrom(t.Value(string_value="x" * (17 << 20)))
        return good.SerializeToString()
    raise ValueError(f"unknown hostile kind {kind!r}; known: {', '.join(KINDS)}")


KINDS = ("random_bytes", "truncated", "invalid_utf8", "wrong_types", "missing_api", "too_many_instances", "oversize")
"""Refused as a call: random_bytes, truncated, invalid_utf8, too_many_instances (INVALID_ARGUMENT) and
oversize (RESOURCE_EXHAUSTED, by gRPC before the handler). Answered OK with every instance
dead-lettered: wrong_types, missing_api."""


@dataclass
class FloodReport:
    sent: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    instances_refused_expected: int = 0


def flood(target: str, calls: int, *, seed: int = 1, pause_s: float = 0.0) -> FloodReport:
    """Send ``calls`` hostile calls, cycling through the kinds; what the collector answered."""
    rng = random.Random(seed)
    report = FloodReport()
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        call = channel.unary_unary(HANDLE_METRIC, request_serializer=None, response_deserializer=None)
        for n in range(calls):
            kind = KINDS[n % len(KINDS)]
            raw = build(kind, rng, dedup=n)
            try:
                call(raw, timeout=30)
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
            report.sent += 1
            report.by_kind[kind] += 1
            report.statuses[code.name] += 1
            if kind in ("wrong_types", "missing_api") and code is grpc.StatusCode.OK:
                report.instances_refused_expected += 1
            if pause_s:
                time.sleep(pause_s)
    return report
