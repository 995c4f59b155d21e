"""Credentials the simulated clients present: APIM JWT access tokens and opaque tokens.

JWT applications get RS256 tokens shaped like the ones API Manager 2.6 issues
(the claims the istio-apim adapter read: ``application``, ``subscribedAPIs``,
``tierInfo``, ``keytype``, ...). The signing key is real (RSA-2048 via
``cryptography``, signed with PyJWT like the collector verifies) and its public
half can be written as PEM or JWKS, so a collector can verify signatures. OPAQUE applications get 36-character
UUID-shaped tokens; :func:`subscription_catalog_rows` tells a collector who
holds each one, keyed by the token's SHA-256 (the raw token is never listed).

Clients reuse one token per (application, user) for the whole run, as real
OAuth clients do until expiry. Token contents are deterministic given the
catalog and the simulated start time; only the signature depends on the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from core import jose
from simulator.catalog import CREDENTIAL_OPAQUE, Application, Catalog
from simulator.config import DEFAULT_PROFILE, SimulationProfile

RSA_KEY_BITS = 2048
RSA_PUBLIC_EXPONENT = 65537
#: ``credential_kind`` the collector's subscription catalog expects for opaque tokens.
OPAQUE_TOKEN_KIND = "OPAQUE_TOKEN"


def _int_b64url(n: int) -> str:
    return jose.b64url_encode(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def _compact_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class SigningKey:
    """An RSA key that signs the simulated APIM's tokens (the APIM ``wso2carbon`` key's stand-in).

    ``kid`` is the RFC 7638 JWK thumbprint, so it is stable for a given key.
    """

    private_key: rsa.RSAPrivateKey
    kid: str

    @classmethod
    def from_private_key(cls, key: rsa.RSAPrivateKey) -> SigningKey:
        """Wrap an existing key, deriving its ``kid``."""
        pub = key.public_key().public_numbers()
        canonical = _compact_json({"e": _int_b64url(pub.e), "kty": "RSA", "n": _int_b64url(pub.n)})
        return cls(private_key=key, kid=jose.b64url_encode(hashlib.sha256(canonical).digest()))

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh RSA-2048 key from the OS RNG."""
        return cls.from_private_key(rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT,
                                                             key_size=RSA_KEY_BITS))

    @classmethod
    def from_pem(cls, data: bytes) -> SigningKey:
        """Load an unencrypted PEM private key.

        Raises:
            ValueError: the data is not an RSA private key.
        """
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("signing key must be an RSA private key")
        return cls.from_private_key(key)

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> SigningKey:
        """Reuse the key at ``path``, or create it there (mode 0600).

        Lets repeated runs sign with the key a long-running collector already trusts.
        """
        p = Path(path)
        if p.exists():
            return cls.from_pem(p.read_bytes())
        key = cls.generate()
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.private_pem())
        return key

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM."""
        return self.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())

    def public_pem(self) -> bytes:
        """The public key as SubjectPublicKeyInfo PEM."""
        return self.private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo)

    def jwks(self) -> dict[str, Any]:
        """The public key as a JWK Set with one RS256 signing key."""
        pub = self.private_key.public_key().public_numbers()
        return {"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
                          "n": _int_b64url(pub.n), "e": _int_b64url(pub.e)}]}

    def write_public_pem(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`public_pem` to ``path``."""
        Path(path).write_bytes(self.public_pem())

    def write_jwks(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`jwks` to ``path`` as JSON."""
        Path(path).write_text(json.dumps(self.jwks(), indent=2) + "\n")


def mint_jwt(key: SigningKey, claims: dict[str, Any]) -> str:
    """Sign ``claims`` as an RS256 compact JWS (header ``alg/kid/typ``).

    Deterministic for given claims and key: RSASSA-PKCS1-v1_5 has no randomness.
    """
    return jwt.encode(claims, key.private_key, algorithm="RS256", headers={"kid": key.kid})


def _deterministic_uuid(*parts: str) -> str:
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def opaque_token(app: Application, user: str) -> str:
    """The 36-character opaque access token ``user`` holds for ``app``.

    Derived from the application's consumer secret, so it is reproducible from
    the catalog yet not guessable from public fields.
    """
    return _deterministic_uuid("opaque", app.consumer_secret, user)


def jwt_claims(catalog: Catalog, app: Application, user: str, *, issued_at_s: int, expires_at_s: int,
               issuer: str) -> dict[str, Any]:
    """The APIM access-token claims for ``user`` of ``app``.

    ``subscriberTenantDomain`` is the application's tenant and ``publisher``
    the API creator; ``tierInfo`` has one entry per distinct subscription tier.
    """
    subscribed: list[dict[str, Any]] = []
    tier_info: dict[str, dict[str, Any]] = {}
    for (name, version), tier in app.subscriptions.items():
        api = catalog.api(name, version)
        subscribed.append({"name": name, "version": version, "context": api.context, "publisher": api.creator,
                           "subscriberTenantDomain": app.tenant_domain, "subscriptionTier": tier})
        tier_info.setdefault(tier, {"tierQuotaType": "requestCount", "stopOnQuotaReach": True,
                                    "spikeArrestLimit": 0, "spikeArrestUnit": None})
    return {
        "iss": issuer,
        "sub": user,
        "aud": app.consumer_key,
        "azp": app.consumer_key,
        "consumerKey": app.consumer_key,
        "keytype": app.key_type,
        "application": {"id": app.id, "uuid": app.id, "name": app.name, "owner": app.owner, "tier": app.tier},
        "subscribedAPIs": subscribed,
        "tierInfo": tier_info,
        "iat": issued_at_s,
        "exp": expires_at_s,
        "jti": _deterministic_uuid("jti", app.id, user, str(issued_at_s)),
    }


class Credentials:
    """Issues and remembers each (application, user)'s token for one simulated run.

    JWTs are minted lazily, on a client's first request, because signing costs
    about a millisecond and many (application, user) pairs never call.
    ``iat`` is ``token_issued_before_start_s`` before the first request and
    ``exp`` is at least ``token_validity_s`` later and covers the whole run.
    """

    def __init__(self, catalog: Catalog, key: SigningKey, *, start_ms: int, duration_s: float,
                 profile: SimulationProfile = DEFAULT_PROFILE) -> None:
        self.catalog = catalog
        self.key = key
        self.issuer = profile.token_issuer
        self.issued_at_s = start_ms // 1000 - profile.token_issued_before_start_s
        end_s = -(-(start_ms + int(duration_s * 1000)) // 1000)
        self.expires_at_s = max(self.issued_at_s + profile.token_validity_s, end_s + profile.token_expiry_margin_s)
        self._headers: dict[tuple[str, str], str] = {}

    def token(self, app: Application, user: str) -> str:
        """The raw access token ``user`` presents for ``app``."""
        if app.credential == CREDENTIAL_OPAQUE:
            return opaque_token(app, user)
        return mint_jwt(self.key, jwt_claims(self.catalog, app, user, issued_at_s=self.issued_at_s,
                                             expires_at_s=self.expires_at_s, issuer=self.issuer))

    def auth_header(self, app: Application, user: str) -> str:
        """``Bearer <token>``, minted once per (application, user) and then reused."""
        k = (app.id, user)
        header = self._headers.get(k)
        if header is None:
            header = self._headers[k] = "Bearer " + self.token(app, user)
        return header


_SHARED_KEY: list[SigningKey] = []


def shared_signing_key() -> SigningKey:
    """One key per process, for callers that do not manage keys (tests, quick runs).

    Traffic generated in one process is then identical for identical inputs.
    """
    if not _SHARED_KEY:
        _SHARED_KEY.append(SigningKey.generate())
    return _SHARED_KEY[0]


def subscription_catalog_rows(catalog: Catalog) -> list[dict[str, Any]]:
    """One row per opaque token: who holds it and what it may call.

    Rows follow the collector's subscription-catalog format (JSON lines):
    ``credential_sha256`` (hex SHA-256 of the raw token), ``credential_kind``
    (``OPAQUE_TOKEN``), the application fields, ``user_name``,
    ``user_tenant_domain`` and ``subscriptions``: a list of ``{api_name,
    api_version, api_context, publisher, tier}``.
    """
    return list(_subscription_rows(catalog))


def _subscription_rows(catalog: Catalog) -> Iterator[dict[str, Any]]:
    for app in catalog.applications:
        if app.credential != CREDENTIAL_OPAQUE:
            continue
        subscriptions = [{"api_name": name, "api_version": version,
                          "api_context": catalog.api(name, version).context,
                          "publisher": catalog.api(name, version).creator, "tier": tier}
                         for (name, version), tier in app.subscriptions.items()]
        for user in app.users:
            yield {
                "credential_sha256": hashlib.sha256(opaque_token(app, user).encode("utf-8")).hexdigest(),
                "credential_kind": OPAQUE_TOKEN_KIND,
                "application_id": app.id,
                "application_name": app.name,
                "application_owner": app.owner,
                "application_tier": app.tier,
                "consumer_key": app.consumer_key,
                "key_type": app.key_type,
                "subscriber_tenant_domain": app.tenant_domain,
                "user_name": user,
                "user_tenant_domain": catalog.user(user).tenant_domain,
                "subscriptions": subscriptions,
            }


def write_subscription_catalog(path: str | os.PathLike[str], catalog: Catalog) -> int:
    """Write :func:`subscription_catalog_rows` as JSON lines; returns the row count."""
    rows = subscription_catalog_rows(catalog)
    Path(path).write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))
    return len(rows)
