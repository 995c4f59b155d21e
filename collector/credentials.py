"""Who called: the application, key type and subscription tier behind a credential.

An APIM-issued JWT names them in its claims (``application{id,name,owner,tier}``,
``subscribedAPIs[].subscriptionTier``, ``keytype``, ``consumerKey``/``aud``,
``sub``), so it resolves locally. An opaque token or API key resolves through
the subscription catalog, keyed by the SHA-256 of the credential: the raw
token never leaves this module (not in events, logs or the store).

Resolutions are cached per (credential, API) with a TTL, as the original
adapter did, because one client reuses one token for many calls. A cached JWT
carries its validity window, so each request is still judged at its own time.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from prometheus_client import Counter

from collector.errors import CatalogError
from core import jose
from core.settings import syntax_problem

if TYPE_CHECKING:
    from collector.jwt_verify import JwtVerifier

JWT_REJECTED = Counter("apim_collector_jwt_rejected_total",
                       "JWTs that failed signature or claim verification, by reason", ["reason"])

log = logging.getLogger(__name__)

ANONYMOUS_APPLICATION = "anonymous"
UNAUTHENTICATED_TIER = "Unauthenticated"


@dataclass(frozen=True, slots=True)
class Caller:
    """The resolved caller of one request, as the usage event records it."""

    credential_kind: str  # NONE, JWT, OPAQUE_TOKEN, API_KEY, UNRESOLVED
    credential_hash: str = ""
    application_id: str = ANONYMOUS_APPLICATION
    application_name: str = ""
    application_owner: str = ""
    application_tier: str = ""
    consumer_key: str = ""
    key_type: str = ""  # PRODUCTION / SANDBOX
    subscription_tier: str = UNAUTHENTICATED_TIER
    user_name: str = ""
    user_tenant_domain: str = ""
    api_creator: str = ""
    api_creator_tenant_domain: str = ""


ANONYMOUS = Caller(credential_kind="NONE")
#: Prefix of a credential that is the JSON claims of a JWT Envoy has already verified (its jwt_authn
#: filter's dynamic metadata in an ALS entry). It starts with NUL, which no HTTP header value can hold,
#: so a caller cannot forge it through the Authorization header.
VERIFIED_CLAIMS = "\x00jwt-claims:"


def credential_hash(raw: str) -> str:
    """Stable, non-reversible identity of a credential (first 32 hex chars of SHA-256)."""
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _text(value: Any, limit: int = 1024) -> str:
    """A claim as text fit for a protobuf string: strings and numbers only, valid UTF-8, bounded."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return ""
    return str(value)[:limit].encode("utf-8", "replace").decode("utf-8")


def _tenant_of(user: str) -> str:
    return user.rsplit("@", 1)[1] if "@" in user else "carbon.super"


@dataclass(frozen=True, slots=True)
class SubscriptionEntry:
    """One opaque token or API key in the subscription catalog."""

    application_id: str
    application_name: str
    application_owner: str
    application_tier: str
    consumer_key: str
    key_type: str
    user_name: str
    credential_kind: str  # OPAQUE_TOKEN or API_KEY
    # (api_name, api_version) -> subscription tier
    subscriptions: dict[tuple[str, str], str]


class SubscriptionCatalog:
    """Opaque tokens and API keys by credential hash, loadable from JSON lines or CSV."""

    def __init__(self, entries: dict[str, SubscriptionEntry] | None = None) -> None:
        self._entries = dict(entries or {})

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, cred_hash: str) -> SubscriptionEntry | None:
        return self._entries.get(cred_hash)

    @classmethod
    def load(cls, path: str | Path) -> SubscriptionCatalog:
        """Read a catalog file: ``.jsonl``/``.json`` (one object per line or a list) or ``.csv``.

        Each entry has ``credential_sha256`` (full hex digest or its first 32
        chars), the application fields, and ``subscriptions``: a list of
        ``{api_name, api_version, tier}`` (CSV: one row per subscription).

        Raises:
            CatalogError: the file is missing, unreadable, not valid YAML/JSON/CSV, or an entry is malformed.
        """
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise CatalogError(f"subscription catalog {p} does not exist") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise CatalogError(f"subscription catalog {p} cannot be read: {exc}") from exc
        rows: list[dict[str, Any]]
        try:
            if p.suffix in (".yaml", ".yml"):
                doc = yaml.safe_load(text) or []
                rows = doc.get("subscriptions", []) if isinstance(doc, dict) else doc
            elif p.suffix == ".csv":
                rows = []
                for r in csv.DictReader(text.splitlines()):
                    r = dict(r)
                    r["subscriptions"] = [{"api_name": r.pop("api_name", ""),
                                           "api_version": r.pop("api_version", ""), "tier": r.pop("tier", "")}]
                    rows.append(r)
            elif text.lstrip().startswith("["):
                rows = json.loads(text)
            else:
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        except (yaml.YAMLError, json.JSONDecodeError, csv.Error) as exc:
            kind = p.suffix.lstrip(".").upper().replace("YML", "YAML").replace("JSONL", "JSON") or "JSON"
            raise CatalogError(f"subscription catalog {p} is not valid {kind}{syntax_problem(exc)}") from exc
        if not isinstance(rows, list):
            raise CatalogError(f"subscription catalog {p}: expected a list of entries or a 'subscriptions' list")
        return cls.from_rows(rows, str(p))

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]], origin: str = "catalog") -> SubscriptionCatalog:
        """Entries from row dicts; one credential may span several rows (one per subscription)."""
        p = origin
        entries: dict[str, SubscriptionEntry] = {}
        for i, r in enumerate(rows):
            if not isinstance(r, dict):
                raise CatalogError(f"{p}: entry {i} is not a mapping")
            digest = str(r.get("credential_sha256", ""))[:32]
            if len(digest) != 32:
                raise CatalogError(f"{p}: entry {i} has no credential_sha256")
            listed = r.get("subscriptions")
            if listed is None and r.get("api_name"):  # a flat row: one subscription (CSV, the store table)
                listed = [{"api_name": r["api_name"], "api_version": r.get("api_version", ""),
                           "tier": r.get("tier", "")}]
            try:
                subs = {(str(s["api_name"]), str(s["api_version"])): str(s["tier"]) for s in listed or []}
            except (KeyError, TypeError) as exc:
                raise CatalogError(f"{p}: entry {i}: each subscription needs api_name, api_version and tier") from exc
            prev = entries.get(digest)
            if prev is not None:  # CSV: one row per subscription of the same credential
                prev.subscriptions.update(subs)
                continue
            entries[digest] = SubscriptionEntry(
                application_id=str(r.get("application_id", "")),
                application_name=str(r.get("application_name", "")),
                application_owner=str(r.get("application_owner", "")),
                application_tier=str(r.get("application_tier", "")),
                consumer_key=str(r.get("consumer_key", "")),
                key_type=str(r.get("key_type", "PRODUCTION")),
                user_name=str(r.get("user_name", "")),
                credential_kind=str(r.get("credential_kind", "OPAQUE_TOKEN")),
                subscriptions=subs,
            )
        return cls(entries)

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per (credential, subscription): the store table's shape."""
        out = []
        for digest, e in sorted(self._entries.items()):
            for (api, version), tier in sorted(e.subscriptions.items()) or [(("", ""), "")]:
                out.append({"credential_sha256": digest, "application_id": e.application_id,
                            "application_name": e.application_name, "application_owner": e.application_owner,
                            "application_tier": e.application_tier, "consumer_key": e.consumer_key,
                            "key_type": e.key_type, "user_name": e.user_name, "credential_kind": e.credential_kind,
                            "api_name": api, "api_version": version, "tier": tier})
        return out


# Request times at which a cached resolution holds: always, unless it came from a JWT's exp/nbf.
_ALWAYS = (-math.inf, math.inf)


class CredentialResolver:
    """Resolve an ``Authorization`` header value to a :class:`Caller`, with a TTL cache."""

    def __init__(
        self,
        catalog: SubscriptionCatalog | None = None,
        *,
        verifier: JwtVerifier | None = None,
        cache_size: int = 100_000,
        cache_ttl_s: float = 300.0,
        clock: Any = time.monotonic,
    ) -> None:
        self.catalog = catalog or SubscriptionCatalog()
        self.verifier = verifier
        # key -> (TTL deadline on `clock`, caller, valid from, valid until: request times in epoch seconds)
        self._cache: OrderedDict[tuple[str, str, str], tuple[float, Caller, float, float]] = OrderedDict()
        self._cache_size = cache_size
        self._ttl = cache_ttl_s
        self._clock = clock
        self.hits = 0
        self.misses = 0

    def replace_catalog(self, catalog: SubscriptionCatalog) -> None:
        """Swap in a re-read catalog; cached opaque-token resolutions are dropped."""
        self.catalog = catalog
        self._cache.clear()

    async def reload_keys(self) -> bool:
        """Re-read the JWT key files (off the event loop); cached verdicts go if the keys changed.

        Returns:
            Whether the keys changed. A broken file keeps its old keys (logged, counted).
        """
        if self.verifier is None:
            return False
        changed = await asyncio.get_running_loop().run_in_executor(None, self.verifier.reload)
        if changed:  # cleared here, on the loop thread that resolves: a token of a retired key must not stay cached
            self._cache.clear()
        return changed

    async def reload_keys_every(self, interval_s: float) -> None:
        """:meth:`reload_keys` every ``interval_s`` seconds, until cancelled: key rotation without a restart."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.reload_keys()
            except Exception:
                log.exception("JWT key reload failed; keeping the keys loaded before")

    def resolve(self, auth_header: str, api_name: str, api_version: str, at_s: float | None = None) -> Caller:
        """The caller for one request to (api_name, api_version) made at ``at_s`` (epoch seconds).

        JWT expiry is judged at the request's own time, so replayed or late
        traffic is not rejected for the time it spent in transit.
        """
        auth_header = auth_header.strip()
        if not auth_header:
            return ANONYMOUS
        key = (auth_header, api_name, api_version)
        now = self._clock()
        at = time.time() if at_s is None else at_s
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now and hit[2] <= at < hit[3]:
            self.hits += 1
            self._cache.move_to_end(key)
            return hit[1]
        self.misses += 1
        caller, valid = self._resolve_uncached(auth_header, api_name, api_version, at)
        if valid is not None:
            self._cache[key] = (now + self._ttl, caller, *valid)
            self._cache.move_to_end(key)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return caller

    def _resolve_uncached(self, auth_header: str, api_name: str, api_version: str,
                          at_s: float) -> tuple[Caller, tuple[float, float] | None]:
        """The caller, and the request times it holds for (``None``: it holds for this one only, do not cache)."""
        if auth_header.startswith(VERIFIED_CLAIMS):  # claims Envoy's jwt_authn filter verified and logged
            try:
                verified = json.loads(auth_header[len(VERIFIED_CLAIMS):])
            except ValueError:
                verified = None
            if isinstance(verified, dict):
                digest = credential_hash(auth_header)
                return self._from_claims(verified, digest, api_name, api_version), _ALWAYS
        scheme, _, token = auth_header.partition(" ")
        if not token:  # a bare token or API key with no scheme
            token, scheme = scheme, ""
        token = token.strip()
        digest = credential_hash(token)
        if token.count(".") == 2:
            claims: dict[str, Any] | None = None
            valid = _ALWAYS
            if self.verifier is not None:
                from collector.jwt_verify import Reason, TokenInvalid

                try:
                    claims = self.verifier.verify(token, now=at_s)
                    valid = self.verifier.validity(claims)
                except TokenInvalid as exc:
                    JWT_REJECTED.labels(str(exc.reason)).inc()
                    # Expired or not yet valid at this request's time is no verdict on other requests' times.
                    timed = exc.reason in (Reason.EXPIRED, Reason.NOT_YET_VALID)
                    return (Caller(credential_kind="UNRESOLVED", credential_hash=digest, application_id="unknown",
                                   subscription_tier=""), None if timed else _ALWAYS)
            else:
                try:
                    claims = jose.unverified_header_and_claims(token)[1]
                except jose.JoseError:
                    claims = None
            if claims is not None:
                return self._from_claims(claims, digest, api_name, api_version), valid
        entry = self.catalog.get(digest)
        if entry is None:
            return Caller(credential_kind="UNRESOLVED", credential_hash=digest, application_id="unknown",
                          subscription_tier=""), _ALWAYS
        return Caller(
            credential_kind=entry.credential_kind,
            credential_hash=digest,
            application_id=entry.application_id,
            application_name=entry.application_name,
            application_owner=entry.application_owner,
            application_tier=entry.application_tier,
            consumer_key=entry.consumer_key,
            key_type=entry.key_type,
            subscription_tier=entry.subscriptions.get((api_name, api_version), ""),
            user_name=entry.user_name,
            user_tenant_domain=_tenant_of(entry.user_name) if entry.user_name else "",
        ), _ALWAYS

    @staticmethod
    def _from_claims(claims: dict[str, Any], digest: str, api_name: str, api_version: str) -> Caller:
        """The caller named by APIM JWT claims. Claims are untrusted input: any shape is
        accepted, non-text values are ignored, and text is made valid UTF-8 (a JSON
        string may hold a lone surrogate, which protobuf strings cannot carry)."""
        app = claims.get("application")
        app = app if isinstance(app, dict) else {}
        tier = creator = creator_tenant = ""
        subscribed = claims.get("subscribedAPIs")
        for sub in subscribed if isinstance(subscribed, list) else []:
            if isinstance(sub, dict) and sub.get("name") == api_name and sub.get("version") == api_version:
                tier = _text(sub.get("subscriptionTier"))
                creator = _text(sub.get("publisher"))
                # The creator's tenant is the publisher's, not subscriberTenantDomain
                # (the original adapter mixed them up; docs/wso2-analytics.md section 1).
                creator_tenant = _tenant_of(creator) if creator else ""
                break
        user = _text(claims.get("sub"))
        aud = claims.get("aud")
        return Caller(
            credential_kind="JWT",
            credential_hash=digest,
            application_id=_text(app.get("id")) or _text(app.get("uuid")) or "unknown",
            application_name=_text(app.get("name")),
            application_owner=_text(app.get("owner")),
            application_tier=_text(app.get("tier")),
            consumer_key=_text(claims.get("consumerKey")) or _text(claims.get("azp"))
            or (_text(aud) if not isinstance(aud, list) else ""),
            key_type=_text(claims.get("keytype")).upper(),
            subscription_tier=tier,
            user_name=user,
            user_tenant_domain=_tenant_of(user) if user else "",
            api_creator=creator,
            api_creator_tenant_domain=creator_tenant,
        )
