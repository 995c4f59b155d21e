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

A rejected token raises :class:`TokenInvalid`, whose message says why but
never quotes the token or any part of it (tokens are credentials): it names
the token by a short SHA-256 prefix, the same prefix as
``collector.credentials.credential_hash``, so operators can correlate.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

log = logging.getLogger(__name__)

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


class TokenInvalid(ValueError):
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
        # ValueError pickles as cls(*self.args); args is the message alone.
        return (type(self), (self.reason, self.detail, self.token_id))


def token_id(token: str) -> str:
    """A loggable name for a token: ``"token "`` and a 12-hex-digit SHA-256 prefix.

    Args:
        token: The raw token text.

    Returns:
        The identifier; it matches the start of ``credential_hash(token)``.
    """
    return "token " + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:12]


# --- algorithms -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Alg:
    """How one JWS ``alg`` verifies: key family, hash, padding or curve."""

    name: str
    family: Literal["RSA", "EC"]
    hash: hashes.HashAlgorithm
    pss: bool = False
    curve: str = ""  # cryptography's curve name, for EC
    coordinate_bytes: int = 0  # size of r and of s in the raw JWS signature, for EC


_ALGS: dict[str, _Alg] = {
    "RS256": _Alg("RS256", "RSA", hashes.SHA256()),
    "RS384": _Alg("RS384", "RSA", hashes.SHA384()),
    "RS512": _Alg("RS512", "RSA", hashes.SHA512()),
    "PS256": _Alg("PS256", "RSA", hashes.SHA256(), pss=True),
    "ES256": _Alg("ES256", "EC", hashes.SHA256(), curve="secp256r1", coordinate_bytes=32),
    "ES384": _Alg("ES384", "EC", hashes.SHA384(), curve="secp384r1", coordinate_bytes=48),
}

#: Every alg this module can verify; an allow-list is a subset of these.
SUPPORTED_ALGORITHMS: frozenset[str] = frozenset(_ALGS)

# Registered JWS names (RFC 7518 3.1, RFC 8037) that are safe to repeat in a
# message: anything else in a header is attacker text and is not quoted.
_REGISTERED_ALGS = frozenset({
    "none", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512",
    "PS256", "PS384", "PS512", "EdDSA", "ES256K",
})

# PSS salt length is the hash's output size (RFC 7518 3.5); built once per alg.
_PSS = {a.name: padding.PSS(mgf=padding.MGF1(a.hash), salt_length=a.hash.digest_size)
        for a in _ALGS.values() if a.pss}
_PKCS1 = padding.PKCS1v15()
_ECDSA = {a.name: ec.ECDSA(a.hash) for a in _ALGS.values() if a.family == "EC"}

# JWK curve names and their cryptography curves.
_JWK_CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}


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
            raise ValueError("VerifierSettings.algorithms is empty: no token could ever verify")
        for alg in algs:
            if alg == "none":
                raise ValueError("alg 'none' cannot be allowed: it accepts unsigned tokens")
            if isinstance(alg, str) and alg.startswith("HS"):
                raise ValueError(f"alg {alg!r} cannot be allowed: it is symmetric and needs a shared "
                                 "secret; only the issuer's public key is available")
            if alg not in SUPPORTED_ALGORITHMS:
                raise ValueError(f"alg {alg!r} is not supported; choose from {sorted(SUPPORTED_ALGORITHMS)}")
        object.__setattr__(self, "algorithms", algs)
        if not (isinstance(self.leeway_s, (int, float)) and math.isfinite(self.leeway_s) and self.leeway_s >= 0):
            raise ValueError(f"VerifierSettings.leeway_s must be a finite number >= 0, not {self.leeway_s!r}")


# --- base64url and JSON -----------------------------------------------------

_B64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")
_URL_TO_STD = bytes.maketrans(b"-_", b"+/")


def _b64url_decode(segment: str) -> bytes | None:
    """Decode unpadded base64url (RFC 7515 2), strictly; ``None`` if it is not.

    Strict means the URL-safe alphabet only (the WSO2 adapter decoded with the
    standard one, so ``-``/``_`` broke it and ``+``/``/`` passed), no ``=``
    padding, and canonical: the unused low bits of the last character must be
    zero, so one signature has one spelling.
    """
    rem = len(segment) % 4
    if rem == 1 or not _B64URL_RE.fullmatch(segment):
        return None
    if rem:
        unused_mask = 0x0F if rem == 2 else 0x03
        if _B64URL_ALPHABET.index(segment[-1]) & unused_mask:
            return None
    return binascii.a2b_base64((segment + "=" * (-len(segment) % 4)).encode("ascii").translate(_URL_TO_STD))


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity, which are not JSON; "exp": Infinity
    # would be a token that never expires.
    raise ValueError("non-finite number")


# One decoder, built once: json.loads(..., parse_constant=...) builds a new one per call.
_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def _json_object(raw: bytes) -> dict[str, Any] | str:
    """Parse a JOSE header or claims set; the object, or a reason it is not one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "is not UTF-8"
    try:
        value = _JSON.decode(text)
    except (ValueError, RecursionError):  # JSONDecodeError, huge ints, NaN; deep nesting
        return "is not valid JSON"
    if not isinstance(value, dict):
        return "is JSON but not an object"
    return value


# --- keys -------------------------------------------------------------------

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
SourceKind = Literal["jwks", "certificate", "public_key"]


@dataclass(frozen=True, slots=True)
class _Key:
    """One verification key and the constraints its source put on it."""

    public_key: PublicKey
    kid: str | None = None
    alg: str | None = None  # a JWK's "alg": the only alg it may verify

    def fits(self, alg: _Alg) -> bool:
        """Whether this key may verify ``alg`` (key type, curve and JWK alg all agree)."""
        if self.alg is not None and self.alg != alg.name:
            return False
        if alg.family == "RSA":
            return isinstance(self.public_key, rsa.RSAPublicKey)
        return isinstance(self.public_key, ec.EllipticCurvePublicKey) and self.public_key.curve.name == alg.curve


class _KeyFileError(ValueError):
    """A key file that cannot be used; the message names the file and why."""


def _check_public_key(key: object, where: str) -> PublicKey:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise _KeyFileError(f"{where}: RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} are required")
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise _KeyFileError(f"{where}: EC curve {key.curve.name} is not supported (P-256 and P-384 are)")
        return key
    raise _KeyFileError(f"{where}: {type(key).__name__} keys are not supported (RSA and EC are)")


def _jwk_int(jwk: Mapping[str, Any], member: str) -> int:
    value = jwk.get(member)
    # Tolerate '=' padding here (unlike in tokens): the JWKS is the operator's
    # own configuration, and some tools pad.
    raw = _b64url_decode(value.rstrip("=")) if isinstance(value, str) else None
    if not raw:
        raise _KeyFileError(f"member {member!r} is missing or not base64url")
    return int.from_bytes(raw, "big")


def _jwk_to_key(jwk: object) -> _Key:
    """One JWKS entry as a verification key; raises _KeyFileError to skip it."""
    if not isinstance(jwk, dict):
        raise _KeyFileError("entry is not a JSON object")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise _KeyFileError("'kid' is not a string")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise _KeyFileError(f"'use' is {use!r}, not 'sig'")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise _KeyFileError("'key_ops' does not include 'verify'")
    alg = jwk.get("alg")
    if alg is not None and alg not in SUPPORTED_ALGORITHMS:
        raise _KeyFileError(f"'alg' {alg!r} is not a supported signature alg")
    kty = jwk.get("kty")
    key: object
    try:
        if kty == "RSA":
            key = rsa.RSAPublicNumbers(_jwk_int(jwk, "e"), _jwk_int(jwk, "n")).public_key()
        elif kty == "EC":
            crv = jwk.get("crv")
            curve = _JWK_CURVES.get(crv) if isinstance(crv, str) else None
            if curve is None:
                raise _KeyFileError(f"'crv' {crv!r} is not supported (P-256 and P-384 are)")
            key = ec.EllipticCurvePublicNumbers(_jwk_int(jwk, "x"), _jwk_int(jwk, "y"), curve).public_key()
        elif kty == "oct":
            raise _KeyFileError("symmetric ('oct') keys cannot be used: HS* algs are not accepted")
        else:
            raise _KeyFileError(f"'kty' {kty!r} is not supported (RSA and EC are)")
    except (ValueError, TypeError, OverflowError) as exc:  # off-curve point, bad exponent ...
        if isinstance(exc, _KeyFileError):
            raise
        raise _KeyFileError(f"not a valid {kty} public key ({exc})") from None
    return _Key(_check_public_key(key, "key"), kid=kid, alg=alg)


def _load_jwks(path: Path) -> tuple[_Key, ...]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _KeyFileError(f"JWKS {path}: cannot read it as JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise _KeyFileError(f"JWKS {path}: not a JWK set (an object with a 'keys' list)")
    keys: list[_Key] = []
    for i, jwk in enumerate(doc["keys"]):
        # One odd entry (an encryption key, a curve we lack) must not take the
        # whole set down: issuers publish mixed sets.
        try:
            keys.append(_jwk_to_key(jwk))
        except _KeyFileError as exc:
            kid = jwk.get("kid") if isinstance(jwk, dict) else None
            log.warning("JWKS %s: key %d (kid %r) skipped: %s", path, i, kid, exc)
    if not keys:
        raise _KeyFileError(f"JWKS {path}: no usable signature verification key")
    return tuple(keys)


def _load_certificate(path: Path) -> tuple[_Key, ...]:
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise _KeyFileError(f"certificate {path}: cannot read a PEM X.509 certificate ({exc})") from None
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
            raise _KeyFileError(f"certificate {path}: unusable public key ({exc})") from None
        keys.append(_Key(_check_public_key(public_key, f"certificate {path}")))
    return tuple(keys)


def _load_public_key(path: Path) -> tuple[_Key, ...]:
    try:
        public_key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise _KeyFileError(f"public key {path}: cannot read a PEM public key ({exc})") from None
    return (_Key(_check_public_key(public_key, f"public key {path}")),)


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


class _Rejection(Exception):
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
            ValueError: No file was given, or one cannot be read or holds no
                usable key. At startup a broken key file is a configuration
                error to fix, not something to run without.
        """
        given: list[tuple[SourceKind, Path]] = [
            (kind, Path(p)) for kind, p in (("jwks", jwks), ("certificate", certificate), ("public_key", public_key))
            if p is not None and str(p) != ""
        ]
        if not given:
            raise ValueError("JwtVerifier needs at least one of jwks, certificate or public_key")
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

    def reload(self) -> None:
        """Re-read every key file, e.g. after the issuer rotated its keys.

        A file that is missing or broken keeps the keys it had: a half-written
        JWKS or a bad deploy must not make every token invalid. Nothing is
        raised; failures are logged, so this can run from a timer or a
        SIGHUP handler.
        """
        with self._reload_lock:
            updated = dict(self._sources)
            for kind, path in self._sources:
                try:
                    updated[(kind, path)] = _LOADERS[kind](path)
                except _KeyFileError as exc:
                    log.error("JWT key reload: %s; keeping the %d key(s) loaded before",
                              exc, len(self._sources[(kind, path)]))
            self._sources = updated
            self._keys = _KeySet.build(updated)
            log.info("JWT verification keys reloaded: %s", self._describe())

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

    def _verify(self, token: str, now: float) -> dict[str, Any]:
        if len(token) > MAX_TOKEN_CHARS:
            raise _Rejection(Reason.MALFORMED, f"longer than {MAX_TOKEN_CHARS} characters")
        parts = token.split(".")
        if len(parts) != 3:
            raise _Rejection(Reason.MALFORMED, f"expected 3 dot-separated segments, found {len(parts)}")
        header_b64, payload_b64, signature_b64 = parts
        decoded = []
        for name, segment in (("header", header_b64), ("payload", payload_b64), ("signature", signature_b64)):
            raw = _b64url_decode(segment)
            if raw is None:
                raise _Rejection(Reason.MALFORMED, f"{name} is not unpadded base64url")
            decoded.append(raw)
        header_raw, payload_raw, signature = decoded

        header = _json_object(header_raw)
        if isinstance(header, str):
            raise _Rejection(Reason.MALFORMED, f"header {header}")
        alg_name = header.get("alg")
        if alg_name == "none":
            raise _Rejection(Reason.ALG_NOT_ALLOWED, "alg none (an unsigned token) is never accepted")
        if isinstance(alg_name, str) and alg_name.startswith("HS"):
            raise _Rejection(Reason.ALG_NOT_ALLOWED,
                             f"{_alg_for_message(alg_name)} is symmetric; only public-key algs are accepted")
        if not isinstance(alg_name, str) or alg_name not in self._allowed:
            raise _Rejection(Reason.ALG_NOT_ALLOWED,
                             f"{_alg_for_message(alg_name)} is not in the allowed algs {list(self.settings.algorithms)}")
        # RFC 7515 4.1.11: a critical extension we do not understand must fail.
        if "crit" in header:
            raise _Rejection(Reason.MALFORMED, "header has critical extensions ('crit'), which are not supported")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _Rejection(Reason.MALFORMED, "header 'kid' is not a string")
        if not signature:
            raise _Rejection(Reason.BAD_SIGNATURE, "the signature is empty")

        alg = _ALGS[alg_name]
        keys = self._keys
        candidates = self._candidates(keys, kid)
        fitting = [k for k in candidates if k.fits(alg)]
        if not fitting:
            raise _Rejection(Reason.BAD_SIGNATURE, f"no key selected for this token can verify {alg.name} "
                                                   "(key type, curve or the key's own alg differ)")
        signing_input = token[: len(header_b64) + 1 + len(payload_b64)].encode("ascii")
        if not any(self._signature_ok(k.public_key, alg, signature, signing_input) for k in fitting):
            raise _Rejection(Reason.BAD_SIGNATURE, "the signature does not verify with the selected key(s)")

        # Only now is the payload trusted enough to parse.
        claims = _json_object(payload_raw)
        if isinstance(claims, str):
            raise _Rejection(Reason.MALFORMED, f"payload {claims}")
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
    def _signature_ok(key: PublicKey, alg: _Alg, signature: bytes, signing_input: bytes) -> bool:
        try:
            if isinstance(key, rsa.RSAPublicKey):
                pad = _PSS[alg.name] if alg.pss else _PKCS1
                key.verify(signature, signing_input, pad, alg.hash)
            else:
                # JWS carries ECDSA as fixed-width r || s (RFC 7518 3.4);
                # cryptography wants DER.
                n = alg.coordinate_bytes
                if len(signature) != 2 * n:
                    return False
                der = encode_dss_signature(int.from_bytes(signature[:n], "big"), int.from_bytes(signature[n:], "big"))
                key.verify(der, signing_input, _ECDSA[alg.name])
        except InvalidSignature:
            return False
        return True

    def _check_claims(self, claims: Mapping[str, Any], now: float) -> None:
        s = self.settings
        if s.check_expiry:
            exp = _numeric_date(claims, "exp")
            if exp is not None and now >= exp + s.leeway_s:
                raise _Rejection(Reason.EXPIRED, f"expired {now - exp:.0f} s ago (leeway {s.leeway_s:g} s)")
            nbf = _numeric_date(claims, "nbf")
            if nbf is not None and now + s.leeway_s < nbf:
                raise _Rejection(Reason.NOT_YET_VALID,
                                 f"not valid for another {nbf - now:.0f} s (leeway {s.leeway_s:g} s)")
        if s.issuer is not None and claims.get("iss") != s.issuer:
            raise _Rejection(Reason.WRONG_ISSUER, f"its issuer is not the configured {s.issuer!r}")
        if s.audience is not None:
            aud = claims.get("aud")
            audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            if s.audience not in audiences:
                raise _Rejection(Reason.WRONG_AUDIENCE, f"its audience does not include the configured {s.audience!r}")
