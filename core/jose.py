"""Base64url and compact-JWS parsing shared by the collector and the simulator.

One strict implementation, because a lenient one makes a token's meaning
depend on who reads it: the WSO2 adapter decoded with the standard alphabet,
so ``-``/``_`` broke it and ``+``/``/`` passed. Signatures are not checked
here (collector.jwt_verify does that with PyJWT). Error messages name the
segment and the problem, never its content: tokens are credentials.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from core.errors import InputError

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")
_URL_TO_STD = bytes.maketrans(b"-_", b"+/")


class JoseError(InputError, ValueError):
    """A token or segment that is not well-formed JOSE; the message says which part and why."""


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str, what: str = "segment", *, allow_padding: bool = False) -> bytes:
    """Decode unpadded base64url strictly: URL-safe alphabet only, and canonical.

    Canonical means the unused low bits of the last character are zero, so one
    value has one spelling. ``allow_padding`` tolerates trailing ``=`` (some
    JWKS tools pad; tokens must not).

    Raises:
        JoseError: ``segment`` is not unpadded base64url.
    """
    if allow_padding:
        segment = segment.rstrip("=")
    rem = len(segment) % 4
    if rem == 1 or not _B64URL_RE.fullmatch(segment):
        raise JoseError(f"{what} is not unpadded base64url")
    if rem and _ALPHABET.index(segment[-1]) & (0x0F if rem == 2 else 0x03):
        raise JoseError(f"{what} is not canonical base64url")
    return binascii.a2b_base64((segment + "=" * (-rem % 4)).encode("ascii").translate(_URL_TO_STD))


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity, which are not JSON; "exp": Infinity
    # would be a token that never expires.
    raise ValueError("non-finite number")


_JSON = json.JSONDecoder(parse_constant=_reject_constant)  # built once, not per call


def json_object(raw: bytes, what: str = "value") -> dict[str, Any]:
    """Parse a JOSE header or claims set: UTF-8 JSON, an object, no NaN/Infinity.

    Raises:
        JoseError: it is not such an object.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise JoseError(f"{what} is not UTF-8") from None
    try:
        value = _JSON.decode(text)
    except (ValueError, RecursionError):  # JSONDecodeError, huge ints, NaN; deep nesting
        raise JoseError(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise JoseError(f"{what} is JSON but not an object")
    return value


def split_compact(token: str) -> tuple[str, str, str]:
    """The three base64url segments of a compact JWS ``header.payload.signature``.

    Raises:
        JoseError: not exactly three dot-separated segments.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise JoseError(f"expected 3 dot-separated segments, found {len(parts)}")
    return parts[0], parts[1], parts[2]


def unverified_header_and_claims(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a compact JWS, *without* checking its signature.

    Raises:
        JoseError: not three segments, or header/payload not base64url JSON objects.
    """
    header_b64, payload_b64, _signature = split_compact(token)
    return (json_object(b64url_decode(header_b64, "header"), "header"),
            json_object(b64url_decode(payload_b64, "payload"), "payload"))
