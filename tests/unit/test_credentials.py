"""CredentialResolver with JWT verification: the cache judges each request at its
own time, and rotated keys apply after a timed reload (collector.credentials)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import REGISTRY

from collector.credentials import CredentialResolver
from collector.jwt_verify import JwtVerifier, VerifierSettings
from tests.unit.test_jwt_verify import NOW, good_claims, jwk, mint, write_jwks

KEY = rsa.generate_private_key(65537, 2048)
ROTATED = rsa.generate_private_key(65537, 2048)
LEEWAY = 60.0


def rejected(reason: str) -> float:
    return REGISTRY.get_sample_value("apim_collector_jwt_rejected_total", {"reason": reason}) or 0.0


def resolver_for(jwks: Path, **kw: float) -> CredentialResolver:
    verifier = JwtVerifier.from_files(jwks=jwks, settings=VerifierSettings(leeway_s=LEEWAY))
    return CredentialResolver(verifier=verifier, **kw)


def test_cached_token_is_judged_at_each_requests_time(tmp_path: Path) -> None:
    resolver = resolver_for(write_jwks(tmp_path / "jwks.json", jwk(KEY, "k1")))
    exp = NOW + 3600
    header = "Bearer " + mint(KEY, "RS256", good_claims(exp=exp, nbf=NOW - 10), kid="k1")

    assert resolver.resolve(header, "PizzaAPI", "1.0.0", at_s=NOW).application_id == "7"
    assert resolver.resolve(header, "PizzaAPI", "1.0.0", at_s=exp + LEEWAY - 1).application_id == "7"
    assert (resolver.misses, resolver.hits) == (1, 1)

    # Past exp + leeway: rejected although the token is cached as valid, and counted.
    expired_before = rejected("expired")
    late = resolver.resolve(header, "PizzaAPI", "1.0.0", at_s=exp + LEEWAY)
    assert (late.credential_kind, late.application_id) == ("UNRESOLVED", "unknown")
    assert rejected("expired") == expired_before + 1
    # Before nbf - leeway: also rejected.
    early = resolver.resolve(header, "PizzaAPI", "1.0.0", at_s=NOW - 10 - LEEWAY - 1)
    assert early.credential_kind == "UNRESOLVED"
    # An earlier request time is accepted again, from the cache: the rejection replaced nothing.
    hits = resolver.hits
    assert resolver.resolve(header, "PizzaAPI", "1.0.0", at_s=NOW + 5).application_id == "7"
    assert resolver.hits == hits + 1


def test_expired_rejection_first_does_not_block_a_valid_request_time(tmp_path: Path) -> None:
    resolver = resolver_for(write_jwks(tmp_path / "jwks.json", jwk(KEY, "k1")))
    header = "Bearer " + mint(KEY, "RS256", good_claims(exp=NOW + 100), kid="k1")
    assert resolver.resolve(header, "PizzaAPI", "1.0.0", at_s=NOW + 1000).credential_kind == "UNRESOLVED"
    assert resolver.resolve(header, "PizzaAPI", "1.0.0", at_s=NOW).credential_kind == "JWT"


def test_rotated_jwks_is_accepted_after_a_timed_reload(tmp_path: Path) -> None:
    path = write_jwks(tmp_path / "jwks.json", jwk(KEY, "k1"))
    resolver = resolver_for(path)
    old = "Bearer " + mint(KEY, "RS256", kid="k1")
    new = "Bearer " + mint(ROTATED, "RS256", kid="k2")

    async def scenario() -> None:
        assert resolver.resolve(new, "PizzaAPI", "1.0.0", at_s=NOW).credential_kind == "UNRESOLVED"  # cached
        timer = asyncio.get_running_loop().create_task(resolver.reload_keys_every(0.05))
        try:
            path.write_text(json.dumps({"keys": [jwk(ROTATED, "k2")]}))
            for _ in range(200):  # up to 10 s, though one interval (0.05 s) is enough
                await asyncio.sleep(0.05)
                caller = resolver.resolve(new, "PizzaAPI", "1.0.0", at_s=NOW)
                if caller.credential_kind == "JWT":
                    break
            assert caller.credential_kind == "JWT" and caller.application_id == "7"
            assert resolver.resolve(old, "PizzaAPI", "1.0.0", at_s=NOW).credential_kind == "UNRESOLVED"

            # A broken file on a later tick keeps the rotated key, and the failure is counted.
            failed = REGISTRY.get_sample_value("apim_collector_jwt_key_reloads_total", {"result": "failed"}) or 0
            path.write_text('{"keys": [')
            for _ in range(200):
                await asyncio.sleep(0.05)
                if (REGISTRY.get_sample_value("apim_collector_jwt_key_reloads_total",
                                              {"result": "failed"}) or 0) > failed:
                    break
            assert (REGISTRY.get_sample_value("apim_collector_jwt_key_reloads_total",
                                              {"result": "failed"}) or 0) > failed
            assert resolver.resolve(new, "PizzaAPI", "1.0.0", at_s=NOW).credential_kind == "JWT"
        finally:
            timer.cancel()

    asyncio.run(scenario())
