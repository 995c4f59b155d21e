"""Optional signature verification of APIM-issued JWT access tokens.

The collector reads who called from the claims of the JWT in the
``Authorization`` header (collector.credentials). Without verification anyone
can mint a token naming any application and so skew, or bill to, another
tenant's analytics; with it, only tokens the API Manager signed are believed.
It is optional because the gateway in front has usually verified the token
already, and verifying again costs CPU per call.

Keys come from files, as the WSO2 Istio adapter configured them:

* a PEM X.509 certificate (the APIM server certificate, as WSO2's adapter
  used) or a PEM public key. Such a key is *the* issuer key: it is tried
  whatever ``kid`` the token names, because APIM derives its ``kid`` from
  keystore details the operator cannot map to a file;
* a JWKS file (RFC 7517), whose keys are chosen by the token header's
  ``kid``; a token without a ``kid`` uses the JWKS's key only if there is
  exactly one.

Only asymmetric algorithms are accepted (RS256/384/512, PS256, ES256/384), and
only those in the configured allow-list: ``none`` would accept unsigned
tokens, and ``HS*`` would need a shared secret the collector does not have
(accepting it is the classic attack of HMAC-signing with the public key).

The cryptography (JWK parsing, JWS signature formats) is PyJWT's. This module
keeps the policy: which keys a token may use, strict parsing (core.jose), the
failure classes, and ``exp``/``nbf`` judged at the request's own time, which
PyJWT cannot do (it only reads the wall clock).

A rejected token raises :class:`TokenInvalid`, whose message says why but
never quotes the token or any part of it (tokens are credentials): it names
the token by a short SHA-256 prefix, the same prefix as
``collector.credentials.credential_hash``, so operators can correlate.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from prometheus_client import Counter

from collector.errors import CollectorError
from core import jose
from core.errors import InputError

log = logging.getLogger(__name__)

JWT_KEY_RELOADS = Counter("apim_collector_jwt_key_reloads_total",
                          "JWT key file reloads, by result (failed: a file was unusable and its old keys kept)",
                          ["result"])

#: Longest token accepted, in characters. Envoy's default header limit is
#: 60 KiB, so a longer value cannot be a real header; the cap bounds the work an
#: attacker can make one token cost (base64 and JSON decoding).
MAX_TOKEN_CHARS = 65_536

#: RFC 7518 requires RSA keys of at least 2048 bits for RS*/PS*.
MIN_RSA_BITS = 2048


class Reason(StrEnum):
    """Why a token was rejected: a short, stable label, e.g. for a metric."""

    MALFORMED = "malformed"
    ALG_NOT_ALLOWED = "alg_not_allowed"
    UNKNOWN_KID = "unknown_kid"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    WRONG_ISSUER = "wrong_issuer"
    WRONG_AUDIENCE = "wrong_audience"


class TokenInvalid(CollectorError, ValueError):
    """A token that must not be believed, and why.

    Attributes:
        reason: The class of failure (:class:`Reason`), for counting.
        detail: A human-readable explanation. It never contains the token or
            any of its parts; at most a registered algorithm name or a
            configured value.
        token_id: ``"token "`` plus the first 12 hex digits of the token's
            SHA-256, enough to correlate log lines without exposing the
            credential.
    """

    def __init__(self, reason: Reason | str, detail: str = "", token_id: str = "token") -> None:
        self.reason = Reason(reason)
        self.detail = detail or self.reason.value.replace("_", " ")
        self.token_id = token_id
        super().__init__(f"{token_id} rejected: {self.reason.value.replace('_', ' ')}: {self.detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle as cls(*self.args); args is the message alone.
        return (type(self), (self.reason, self.detail, self.token_id))


class JwtConfigError(CollectorError, InputError, ValueError):
    """A key file or verifier setting that cannot be used; the message names it and why."""


def token_id(token: str) -> str:
    """A loggable name for a token: ``"token "`` and a 12-hex-digit SHA-256 prefix.

    Args:
        token: The raw token text.

    Returns:
        The identifier; it matches the start of ``credential_hash(token)``.
    """
    return "token " + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:12]


# --- algorithms -------------------------------------------------------------

# The key each alg needs: "RSA", or the cryptography name of the EC curve.
_KEY_FOR_ALG: dict[str, str] = {
    "RS256": "RSA", "RS384": "RSA", "RS512": "RSA", "PS256": "RSA", "ES256": "secp256r1", "ES384": "secp384r1",
}

#: Every alg this module can verify; an allow-list is a subset of these.
SUPPORTED_ALGORITHMS: frozenset[str] = frozenset(_KEY_FOR_ALG)

# Registered JWS names (RFC 7518 3.1, RFC 8037) that are safe to repeat in a
# message: anything else in a header is attacker text and is not quoted.
_REGISTERED_ALGS = frozenset({
    "none", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512",
    "PS256", "PS384", "PS512", "EdDSA", "ES256K",
})

# PyJWT's JWS layer with only our algs registered: HS* and none do not exist in it.
_JWS = jwt.PyJWS(algorithms=sorted(SUPPORTED_ALGORITHMS), options={"enforce_minimum_key_length": True})


def _alg_for_message(alg: object) -> str:
    if isinstance(alg, str) and alg in _REGISTERED_ALGS:
        return alg
    return "an unrecognised alg"


@dataclass(frozen=True)
class VerifierSettings:
    """What a valid token must satisfy besides its signature.

    Attributes:
        algorithms: Allowed JWS algs, a subset of :data:`SUPPORTED_ALGORITHMS`.
            The default covers what WSO2 API Manager issues (RS256) and the
            common modern choices; a token whose header names another alg is
            rejected before any key is touched, which blocks alg-downgrade.
        issuer: When set, the ``iss`` claim must equal it exactly (APIM's
            token endpoint URL, e.g. ``https://apim:9443/oauth2/token``).
        audience: When set, ``aud`` (a string or a list) must contain it.
        check_expiry: Check ``exp`` and ``nbf`` (when present). Turning it off
            only makes sense when replaying stored traffic.
        leeway_s: Clock skew tolerated for ``exp`` and ``nbf``, in seconds:
            the gateway's and the collector's clocks differ, and the call was
            made (and the token accepted by the gateway) a moment before the
            collector sees it.
    """

    algorithms: tuple[str, ...] = ("RS256", "ES256", "PS256")
    issuer: str | None = None
    audience: str | None = None
    check_expiry: bool = True
    leeway_s: float = 60.0

    def __post_init__(self) -> None:
        # Reject a bad allow-list at startup, not as a silent "every token
        # invalid" (or worse, "HS256 accepted") at run time.
        algs = (self.algorithms,) if isinstance(self.algorithms, str) else tuple(self.algorithms)
        if not algs:
            raise JwtConfigError("VerifierSettings.algorithms is empty: no token could ever verify")
        for alg in algs:
            if alg == "none":
                raise JwtConfigError("alg 'none' cannot be allowed: it accepts unsigned tokens")
            if isinstance(alg, str) and alg.startswith("HS"):
                raise JwtConfigError(f"alg {alg!r} cannot be allowed: it is symmetric and needs a shared "
                                     "secret; only the issuer's public key is available")
            if alg not in SUPPORTED_ALGORITHMS:
                raise JwtConfigError(f"alg {alg!r} is not supported; choose from {sorted(SUPPORTED_ALGORITHMS)}")
        object.__setattr__(self, "algorithms", algs)
        if not (isinstance(self.leeway_s, (int, float)) and math.isfinite(self.leeway_s) and self.leeway_s >= 0):
            raise JwtConfigError(f"VerifierSettings.leeway_s must be a finite number >= 0, not {self.leeway_s!r}")


# --- keys -------------------------------------------------------------------

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
SourceKind = Literal["jwks", "certificate", "public_key"]


@dataclass(frozen=True, slots=True)
class _Key:
    """One verification key and the constraints its source put on it."""

    public_key: PublicKey = field(compare=False)
    kid: str | None = None
    alg: str | None = None  # a JWK's "alg": the only alg it may verify
    der: bytes = b""  # SubjectPublicKeyInfo: what makes two keys the same, for reload

    def fits(self, alg: str) -> bool:
        """Whether this key may verify ``alg`` (key type, curve and JWK alg all agree)."""
        if self.alg is not None and self.alg != alg:
            return False
        need = _KEY_FOR_ALG[alg]
        if need == "RSA":
            return isinstance(self.public_key, rsa.RSAPublicKey)
        return isinstance(self.public_key, ec.EllipticCurvePublicKey) and self.public_key.curve.name == need


def _key(public_key: object, where: str, kid: str | None = None, alg: str | None = None) -> _Key:
    """A usable verification key, or JwtConfigError saying why not."""
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise JwtConfigError(f"{where}: RSA key of {public_key.key_size} bits; at least {MIN_RSA_BITS} "
                                 "are required")
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in ("secp256r1", "secp384r1"):
            raise JwtConfigError(f"{where}: EC curve {public_key.curve.name} is not supported (P-256 and P-384 are)")
    else:
        raise JwtConfigError(f"{where}: {type(public_key).__name__} keys are not supported (RSA and EC are)")
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return _Key(public_key, kid=kid, alg=alg, der=der)


# Only the public members go to PyJWT: a JWK that also carries "d" must still
# load as the public key it names.
_PUBLIC_MEMBERS = {"RSA": ("kty", "n", "e"), "EC": ("kty", "crv", "x", "y")}


def _jwk_to_key(jwk: object) -> _Key:
    """One JWKS entry as a verification key; raises JwtConfigError to skip it."""
    if not isinstance(jwk, dict):
        raise JwtConfigError("entry is not a JSON object")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise JwtConfigError("'kid' is not a string")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise JwtConfigError(f"'use' is {use!r}, not 'sig'")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise JwtConfigError("'key_ops' does not include 'verify'")
    alg = jwk.get("alg")
    if alg is not None and alg not in SUPPORTED_ALGORITHMS:
        raise JwtConfigError(f"'alg' {alg!r} is not a supported signature alg")
    kty = jwk.get("kty")
    if kty == "oct":
        raise JwtConfigError("symmetric ('oct') keys cannot be used: HS* algs are not accepted")
    if kty not in _PUBLIC_MEMBERS:
        raise JwtConfigError(f"'kty' {kty!r} is not supported (RSA and EC are)")
    if kty == "EC" and jwk.get("crv") not in ("P-256", "P-384"):
        raise JwtConfigError(f"'crv' {jwk.get('crv')!r} is not supported (P-256 and P-384 are)")
    try:
        public_key = jwt.PyJWK({k: jwk[k] for k in _PUBLIC_MEMBERS[kty] if k in jwk}).key
    except (jwt.PyJWTError, ValueError, TypeError, KeyError, OverflowError) as exc:  # off-curve point, bad n ...
        raise JwtConfigError(f"not a valid {kty} public key ({type(exc).__name__}: {exc})") from None
    return _key(public_key, "key", kid=kid, alg=alg)


def _load_jwks(path: Path) -> tuple[_Key, ...]:
    try:
        doc = jose.json_object(path.read_bytes(), "the file")
    except (OSError, jose.JoseError) as exc:
        raise JwtConfigError(f"JWKS {path}: cannot read it as a JSON object ({exc})") from None
    if not isinstance(doc.get("keys"), list):
        raise JwtConfigError(f"JWKS {path}: not a JWK set (an object with a 'keys' list)")
    keys: list[_Key] = []
    for i, jwk in enumerate(doc["keys"]):
        # One odd entry (an encryption key, a curve we lack) must not take the
        # whole set down: issuers publish mixed sets.
        try:
            keys.append(_jwk_to_key(jwk))
        except JwtConfigError as exc:
            kid = jwk.get("kid") if isinstance(jwk, dict) else None
            log.warning("JWKS %s: key %d (kid %r) skipped: %s", path, i, kid, exc)
    if not keys:
        raise JwtConfigError(f"JWKS {path}: no usable signature verification key")
    return tuple(keys)


def _load_certificate(path: Path) -> tuple[_Key, ...]:
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise JwtConfigError(f"certificate {path}: cannot read a PEM X.509 certificate ({exc})") from None
    keys = []
    for cert in certs:
        # An expired certificate still holds the right key: APIM keeps signing
        # with its keystore whatever the certificate's dates say, as the WSO2
        # adapter assumed. Say so, since it usually means rotation is due.
        if cert.not_valid_after_utc.timestamp() < time.time():
            log.warning("certificate %s (%s) expired on %s; its key is still used for JWT verification",
                        path, cert.subject.rfc4514_string(), cert.not_valid_after_utc.isoformat())
        try:
            public_key = cert.public_key()
        except ValueError as exc:
            raise JwtConfigError(f"certificate {path}: unusable public key ({exc})") from None
        keys.append(_key(public_key, f"certificate {path}"))
    return tuple(keys)


def _load_public_key(path: Path) -> tuple[_Key, ...]:
    try:
        public_key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise JwtConfigError(f"public key {path}: cannot read a PEM public key ({exc})") from None
    return (_key(public_key, f"public key {path}"),)


_LOADERS = {"jwks": _load_jwks, "certificate": _load_certificate, "public_key": _load_public_key}


@dataclass(frozen=True, slots=True)
class _KeySet:
    """An immutable snapshot of all keys; replaced whole on reload, so a
    concurrent ``verify`` sees either the old set or the new one."""

    by_kid: Mapping[str, tuple[_Key, ...]]
    jwks: tuple[_Key, ...]  # every JWKS key, with or without a kid
    fixed: tuple[_Key, ...]  # certificate and public-key keys: used whatever the kid

    @classmethod
    def build(cls, sources: Mapping[tuple[SourceKind, Path], tuple[_Key, ...]]) -> _KeySet:
        by_kid: dict[str, list[_Key]] = {}
        jwks: list[_Key] = []
        fixed: list[_Key] = []
        for (kind, _path), keys in sources.items():
            if kind != "jwks":
                fixed.extend(keys)
                continue
            jwks.extend(keys)
            for key in keys:
                if key.kid is not None:
                    by_kid.setdefault(key.kid, []).append(key)
        return cls({k: tuple(v) for k, v in by_kid.items()}, tuple(jwks), tuple(fixed))


class _Rejection(CollectorError):
    """Internal: raised inside verification, turned into TokenInvalid at the edge."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim, ``None`` when absent; rejects non-numbers (incl. null and bools)."""
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Rejection(Reason.MALFORMED, f"claim '{name}' is not a number")
    try:
        seconds = float(value)  # an int of 400 digits overflows; 1e999 parses as inf
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise _Rejection(Reason.MALFORMED, f"claim '{name}' is not a finite number")
    return seconds


class JwtVerifier:
    """Verifies JWT signatures and registered claims against keys read from files.

    Thread-safe: :meth:`verify` reads one immutable key snapshot, and
    :meth:`reload` swaps in a new one.
    """

    def __init__(self, sources: Mapping[tuple[SourceKind, Path], tuple[_Key, ...]],
                 settings: VerifierSettings = VerifierSettings()) -> None:
        """Use :meth:`from_files`; this takes keys already loaded, per source file."""
        self.settings = settings
        self._allowed = frozenset(settings.algorithms)
        self._sources: dict[tuple[SourceKind, Path], tuple[_Key, ...]] = dict(sources)
        self._keys = _KeySet.build(self._sources)
        self._reload_lock = threading.Lock()

    @classmethod
    def from_files(
        cls,
        *,
        jwks: str | Path | None = None,
        certificate: str | Path | None = None,
        public_key: str | Path | None = None,
        settings: VerifierSettings = VerifierSettings(),
    ) -> JwtVerifier:
        """Build a verifier from one or more key files.

        Any combination may be given; an empty string counts as not given, so
        an unset setting can be passed straight through.

        Args:
            jwks: A JWK set file (RFC 7517); keys are chosen by ``kid``.
            certificate: A PEM X.509 certificate (or several concatenated, to
                overlap a rotation), e.g. the APIM server certificate.
            public_key: A PEM ``SubjectPublicKeyInfo`` public key.
            settings: Allowed algs and claim checks.

        Returns:
            The verifier.

        Raises:
            JwtConfigError: (a ValueError) No file was given, or one cannot be
                read or holds no usable key. At startup a broken key file is a
                configuration error to fix, not something to run without.
        """
        given: list[tuple[SourceKind, Path]] = [
            (kind, Path(p)) for kind, p in (("jwks", jwks), ("certificate", certificate), ("public_key", public_key))  # type: ignore[misc]  # mypy widens the literal tuple's kinds to str
            if p is not None and str(p) != ""
        ]
        if not given:
            raise JwtConfigError("JwtVerifier needs at least one of jwks, certificate or public_key")
        sources = {(kind, path): _LOADERS[kind](path) for kind, path in given}
        verifier = cls(sources, settings)
        log.info("JWT verification keys loaded: %s", verifier._describe())
        return verifier

    @property
    def key_count(self) -> int:
        """How many verification keys are loaded, over all files."""
        return len(self._keys.jwks) + len(self._keys.fixed)

    def _describe(self) -> str:
        return ", ".join(f"{kind} {path}: {len(keys)} key(s)" for (kind, path), keys in self._sources.items())

    def reload(self) -> bool:
        """Re-read every key file, e.g. after the issuer rotated its keys.

        A file that is missing or broken keeps the keys it had: a half-written
        JWKS or a bad deploy must not make every token invalid. Nothing is
        raised; failures are logged and counted (``apim_collector_jwt_key_reloads_total``),
        so this can run from a timer or a SIGHUP handler.

        Returns:
            Whether the set of keys changed (so cached verdicts may be stale).
        """
        with self._reload_lock:
            updated = dict(self._sources)
            failed = False
            for kind, path in self._sources:
                try:
                    updated[(kind, path)] = _LOADERS[kind](path)
                except JwtConfigError as exc:
                    failed = True
                    kept = len(self._sources[(kind, path)])
                    log.error("JWT key reload: %s; keeping the %d key(s) loaded before", exc, kept,
                              extra={"key_source": kind, "path": str(path), "keys_kept": kept})
            JWT_KEY_RELOADS.labels("failed" if failed else "ok").inc()
            changed = updated != self._sources
            self._sources = updated
            self._keys = _KeySet.build(updated)
            if changed:
                log.info("JWT verification keys reloaded: %s", self._describe())
            return changed

    def verify(self, token: str, now: float | None = None) -> dict[str, Any]:
        """Check a token's signature and registered claims; return its claims.

        Args:
            token: The compact JWS (``header.payload.signature``), without
                the ``Bearer`` scheme.
            now: The time to check ``exp``/``nbf`` against, as a Unix
                timestamp; the current time by default.

        Returns:
            The claims (the decoded payload object).

        Raises:
            TokenInvalid: For any reason the token is not acceptable; nothing
                else is raised, whatever the input.
        """
        if not isinstance(token, str):
            raise TokenInvalid(Reason.MALFORMED, "the token is not a string")
        try:
            return self._verify(token, time.time() if now is None else now)
        except _Rejection as exc:
            rejection = exc
        # Raised outside the except block, so no chained exception (which could
        # carry decoded token bytes) is attached.
        raise TokenInvalid(rejection.reason, rejection.detail, token_id(token))

    def validity(self, claims: Mapping[str, Any]) -> tuple[float, float]:
        """The request times ``[start, end)`` at which verified ``claims`` pass the ``exp``/``nbf`` checks.

        Lets a cache of verified tokens judge each request at its own time.
        """
        if not self.settings.check_expiry:
            return -math.inf, math.inf
        exp = _numeric_date(claims, "exp")
        nbf = _numeric_date(claims, "nbf")
        leeway = self.settings.leeway_s
        return (-math.inf if nbf is None else nbf - leeway), (math.inf if exp is None else exp + leeway)

    def _verify(self, token: str, now: float) -> dict[str, Any]:
        if len(token) > MAX_TOKEN_CHARS:
            raise _Rejection(Reason.MALFORMED, f"longer than {MAX_TOKEN_CHARS} characters")
        try:
            header_b64, payload_b64, signature_b64 = jose.split_compact(token)
            header_raw = jose.b64url_decode(header_b64, "header")
            payload_raw = jose.b64url_decode(payload_b64, "payload")
            signature = jose.b64url_decode(signature_b64, "signature")
            header = jose.json_object(header_raw, "header")
        except jose.JoseError as exc:
            raise _Rejection(Reason.MALFORMED, str(exc)) from None

        alg = header.get("alg")
        if alg == "none":
            raise _Rejection(Reason.ALG_NOT_ALLOWED, "alg none (an unsigned token) is never accepted")
        if isinstance(alg, str) and alg.startswith("HS"):
            raise _Rejection(Reason.ALG_NOT_ALLOWED,
                             f"{_alg_for_message(alg)} is symmetric; only public-key algs are accepted")
        if not isinstance(alg, str) or alg not in self._allowed:
            raise _Rejection(Reason.ALG_NOT_ALLOWED,
                             f"{_alg_for_message(alg)} is not in the allowed algs {list(self.settings.algorithms)}")
        # RFC 7515 4.1.11: a critical extension we do not understand must fail.
        if "crit" in header:
            raise _Rejection(Reason.MALFORMED, "header has critical extensions ('crit'), which are not supported")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _Rejection(Reason.MALFORMED, "header 'kid' is not a string")
        if not signature:
            raise _Rejection(Reason.BAD_SIGNATURE, "the signature is empty")

        fitting = [k for k in self._candidates(self._keys, kid) if k.fits(alg)]
        if not fitting:
            raise _Rejection(Reason.BAD_SIGNATURE, f"no key selected for this token can verify {alg} "
                                                   "(key type, curve or the key's own alg differ)")
        if not any(self._signature_ok(token, k, alg) for k in fitting):
            raise _Rejection(Reason.BAD_SIGNATURE, "the signature does not verify with the selected key(s)")

        # Only now is the payload trusted enough to parse.
        try:
            claims = jose.json_object(payload_raw, "payload")
        except jose.JoseError as exc:
            raise _Rejection(Reason.MALFORMED, str(exc)) from None
        self._check_claims(claims, now)
        return claims

    @staticmethod
    def _candidates(keys: _KeySet, kid: str | None) -> tuple[_Key, ...]:
        """The keys a token may be verified with, by its ``kid`` (see the module doc)."""
        if kid is not None:
            named = keys.by_kid.get(kid)
            if named:
                return named
            if keys.fixed:
                return keys.fixed
            raise _Rejection(Reason.UNKNOWN_KID, "its kid names no key in the JWKS")
        if keys.fixed:
            return keys.fixed
        if len(keys.jwks) == 1:
            return keys.jwks
        raise _Rejection(Reason.UNKNOWN_KID,
                         f"it has no kid and the JWKS holds {len(keys.jwks)} keys, so none can be chosen")

    @staticmethod
    def _signature_ok(token: str, key: _Key, alg: str) -> bool:
        try:
            _JWS.decode_complete(token, key=key.public_key, algorithms=[alg])
        except jwt.InvalidSignatureError:
            return False
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            # Our parsing already accepted the token, so this is PyJWT being
            # stricter; its message may quote the token, so name only the type.
            raise _Rejection(Reason.MALFORMED, f"the JWS library refused it ({type(exc).__name__})") from None
        return True

    def _check_claims(self, claims: Mapping[str, Any], now: float) -> None:
        s = self.settings
        if s.check_expiry:
            start, end = self.validity(claims)
            if now >= end:
                raise _Rejection(Reason.EXPIRED,
                                 f"expired {now - (end - s.leeway_s):.0f} s ago (leeway {s.leeway_s:g} s)")
            if now < start:
                raise _Rejection(Reason.NOT_YET_VALID,
                                 f"not valid for another {start + s.leeway_s - now:.0f} s (leeway {s.leeway_s:g} s)")
        if s.issuer is not None and claims.get("iss") != s.issuer:
            raise _Rejection(Reason.WRONG_ISSUER, f"its issuer is not the configured {s.issuer!r}")
        if s.audience is not None:
            aud = claims.get("aud")
            audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            if s.audience not in audiences:
                raise _Rejection(Reason.WRONG_AUDIENCE, f"its audience does not include the configured {s.audience!r}")
