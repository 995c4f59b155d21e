"""JWT signature and claim verification (collector.jwt_verify), offline.

Keys are generated once per session; tokens are minted here with a tiny
signer so every alg, key source and failure mode is exercised end to end.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import pickle
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.jwt_verify import (
    SUPPORTED_ALGORITHMS,
    JwtVerifier,
    Reason,
    TokenInvalid,
    VerifierSettings,
    token_id,
)

NOW = 1_700_000_000.0
ISS = "https://apim.example.com:9443/oauth2/token"
ALL_ALGS = VerifierSettings(algorithms=tuple(sorted(SUPPORTED_ALGORITHMS)))
B64URL = string.ascii_letters + string.digits + "-_"
B64URL_ORDER = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
HASHES = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}


# --- minting ----------------------------------------------------------------


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign(key: Any, alg: str, data: bytes) -> bytes:
    h = HASHES[alg[2:]]
    if alg.startswith("RS"):
        return key.sign(data, padding.PKCS1v15(), h)
    if alg.startswith("PS"):
        return key.sign(data, padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size), h)
    if alg.startswith("ES"):
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(h)))
        n = (key.curve.key_size + 7) // 8
        return r.to_bytes(n, "big") + s.to_bytes(n, "big")
    raise AssertionError(alg)


def mint(key: Any, alg: str, claims: Any = None, *, kid: str | None = None,
         header: dict[str, Any] | None = None, payload: bytes | None = None) -> str:
    """header+claims -> signing input -> signature, as a compact JWS."""
    hdr = {"typ": "JWT", "alg": alg, **({"kid": kid} if kid is not None else {}), **(header or {})}
    body = payload if payload is not None else json.dumps(good_claims() if claims is None else claims).encode()
    signing_input = f"{b64u(json.dumps(hdr).encode())}.{b64u(body)}"
    return f"{signing_input}.{b64u(sign(key, alg, signing_input.encode()))}"


def good_claims(**over: Any) -> dict[str, Any]:
    claims = {
        "iss": ISS, "sub": "admin@carbon.super", "aud": "X9LbuWdq4dz8vXHJd2fN",
        "iat": NOW - 10, "nbf": NOW - 10, "exp": NOW + 3600, "keytype": "PRODUCTION",
        "application": {"id": 7, "name": "PizzaApp", "owner": "admin", "tier": "Unlimited"},
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def rejection(verifier: JwtVerifier, token: str, **kw: Any) -> TokenInvalid:
    with pytest.raises(TokenInvalid) as info:
        verifier.verify(token, now=kw.pop("now", NOW), **kw)
    exc = info.value
    # Wherever it came from: it names the token by digest only, and no chained
    # exception (which could hold decoded token bytes) rides along.
    assert exc.token_id == token_id(token) and str(exc).startswith(token_id(token))
    assert exc.__cause__ is None and exc.__context__ is None
    for part in token.split("."):
        assert len(part) < 8 or part not in str(exc)
    return exc


# --- keys and files ---------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    rsa: rsa.RSAPrivateKey
    rsa_other: rsa.RSAPrivateKey  # in no key file
    rsa_rotated: rsa.RSAPrivateKey  # only in the rotated JWKS
    ec256: ec.EllipticCurvePrivateKey
    ec384: ec.EllipticCurvePrivateKey
    dir: Path

    def for_alg(self, alg: str) -> tuple[Any, str]:
        if alg == "ES256":
            return self.ec256, "ec-256"
        if alg == "ES384":
            return self.ec384, "ec-384"
        return self.rsa, "rsa-1"


def jwk(key: Any, kid: str | None, **extra: Any) -> dict[str, Any]:
    pub = key.public_key()
    out: dict[str, Any]
    if isinstance(pub, rsa.RSAPublicKey):
        nums = pub.public_numbers()
        out = {"kty": "RSA", "n": b64u(nums.n.to_bytes((nums.n.bit_length() + 7) // 8, "big")),
               "e": b64u(nums.e.to_bytes(3, "big"))}
    else:
        nums = pub.public_numbers()
        size = (pub.curve.key_size + 7) // 8
        out = {"kty": "EC", "crv": {256: "P-256", 384: "P-384"}[pub.curve.key_size],
               "x": b64u(nums.x.to_bytes(size, "big")), "y": b64u(nums.y.to_bytes(size, "big"))}
    if kid is not None:
        out["kid"] = kid
    return {**out, "use": "sig", **extra}


def write_jwks(path: Path, *entries: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"keys": list(entries)}))
    return path


def self_signed(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "WSO2")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(dt.datetime(2023, 1, 1, tzinfo=dt.UTC))
            .not_valid_after(dt.datetime(2123, 1, 1, tzinfo=dt.UTC))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def pem_public(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("jwt-keys")
    k = Keys(rsa=rsa.generate_private_key(65537, 2048), rsa_other=rsa.generate_private_key(65537, 2048),
             rsa_rotated=rsa.generate_private_key(65537, 2048), ec256=ec.generate_private_key(ec.SECP256R1()),
             ec384=ec.generate_private_key(ec.SECP384R1()), dir=d)
    write_jwks(d / "jwks.json", jwk(k.rsa, "rsa-1"), jwk(k.ec256, "ec-256"), jwk(k.ec384, "ec-384"))
    (d / "apim.crt").write_bytes(self_signed(k.rsa))
    (d / "ec256.pem").write_bytes(pem_public(k.ec256))
    return k


@pytest.fixture(scope="session")
def jwks_verifier(keys: Keys) -> JwtVerifier:
    return JwtVerifier.from_files(jwks=keys.dir / "jwks.json", settings=ALL_ALGS)


@pytest.fixture(scope="session")
def default_verifier(keys: Keys) -> JwtVerifier:
    return JwtVerifier.from_files(jwks=keys.dir / "jwks.json")


# --- valid tokens -----------------------------------------------------------


@pytest.mark.parametrize("alg", sorted(SUPPORTED_ALGORITHMS))
def test_each_supported_alg_verifies(keys: Keys, jwks_verifier: JwtVerifier, alg: str) -> None:
    key, kid = keys.for_alg(alg)
    assert jwks_verifier.verify(mint(key, alg, kid=kid), now=NOW) == good_claims()


def test_certificate_key_verifies_whatever_the_kid(keys: Keys) -> None:
    # APIM's kid comes from its keystore; the configured certificate is the key regardless.
    verifier = JwtVerifier.from_files(certificate=keys.dir / "apim.crt")
    for kid in (None, "MTlhNjc5ZTNmNjQ5NWQyZjk3YjE0ZTJjZmI0NzA0YjM2ZDA3ZDkyMw_RS256"):
        assert verifier.verify(mint(keys.rsa, "RS256", kid=kid), now=NOW)["sub"] == "admin@carbon.super"
    assert rejection(verifier, mint(keys.rsa_other, "RS256")).reason is Reason.BAD_SIGNATURE


def test_pem_public_key_verifies(keys: Keys) -> None:
    verifier = JwtVerifier.from_files(public_key=keys.dir / "ec256.pem")
    assert verifier.verify(mint(keys.ec256, "ES256"), now=NOW)["iss"] == ISS
    # An RSA alg cannot be verified by an EC key: a type mismatch, not a crash.
    assert rejection(verifier, mint(keys.rsa, "RS256")).reason is Reason.BAD_SIGNATURE


def test_claims_with_url_safe_characters_decode(keys: Keys, jwks_verifier: JwtVerifier) -> None:
    # The WSO2 adapter decoded with the standard alphabet; '-' and '_' must work.
    for shift in range(3):  # some byte alignment yields both characters
        claims = good_claims(sub="a" * shift + "Zoë>?ÿ~»")
        payload = json.dumps(claims, ensure_ascii=False).encode()
        if {"-", "_"} <= set(b64u(payload)):
            break
    assert {"-", "_"} <= set(b64u(payload))
    assert jwks_verifier.verify(mint(keys.rsa, "RS256", kid="rsa-1", payload=payload), now=NOW) == claims


def test_no_kid_uses_the_only_key(keys: Keys, tmp_path: Path) -> None:
    verifier = JwtVerifier.from_files(jwks=write_jwks(tmp_path / "one.json", jwk(keys.ec256, None)))
    assert verifier.verify(mint(keys.ec256, "ES256"), now=NOW)["exp"] == NOW + 3600


def test_no_kid_with_several_keys_is_ambiguous(keys: Keys, jwks_verifier: JwtVerifier) -> None:
    exc = rejection(jwks_verifier, mint(keys.rsa, "RS256"))
    assert exc.reason is Reason.UNKNOWN_KID and "3 keys" in str(exc)


# --- bad signatures and keys ------------------------------------------------


def test_wrong_key_is_a_bad_signature(keys: Keys, jwks_verifier: JwtVerifier) -> None:
    exc = rejection(jwks_verifier, mint(keys.rsa_other, "RS256", kid="rsa-1"))
    assert exc.reason is Reason.BAD_SIGNATURE and "does not verify" in exc.detail


def test_ec_key_of_the_other_curve_is_a_bad_signature(keys: Keys, jwks_verifier: JwtVerifier) -> None:
    assert rejection(jwks_verifier, mint(keys.ec256, "ES256", kid="ec-384")).reason is Reason.BAD_SIGNATURE


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_tampered_payload_is_a_bad_signature(keys: Keys, jwks_verifier: JwtVerifier, alg: str) -> None:
    key, kid = keys.for_alg(alg)
    h, _, s = mint(key, alg, kid=kid).split(".")
    forged = b64u(json.dumps(good_claims(application={"id": 1, "name": "Victim"})).encode())
    assert rejection(jwks_verifier, f"{h}.{forged}.{s}").reason is Reason.BAD_SIGNATURE


def test_ecdsa_signature_in_der_or_wrong_length_is_bad(keys: Keys, jwks_verifier: JwtVerifier) -> None:
    h, p, s = mint(keys.ec256, "ES256", kid="ec-256").split(".")
    der = keys.ec256.sign(f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256()))
    for sig in (der, base64.urlsafe_b64decode(s + "==")[:-1], bytes(64)):
        assert rejection(jwks_verifier, f"{h}.{p}.{b64u(sig)}").reason is Reason.BAD_SIGNATURE


def test_empty_signature_is_bad(keys: Keys, jwks_verifier: JwtVerifier) -> None:
    h, p, _ = mint(keys.rsa, "RS256", kid="rsa-1").split(".")
    assert rejection(jwks_verifier, f"{h}.{p}.").reason is Reason.BAD_SIGNATURE


def test_unknown_kid(keys: Keys, jwks_verifier: JwtVerifier) -> None:
    exc = rejection(jwks_verifier, mint(keys.rsa, "RS256", kid="not-in-the-jwks"))
    assert exc.reason is Reason.UNKNOWN_KID and "not-in-the-jwks" not in str(exc)


def test_jwk_alg_restricts_the_key(keys: Keys, tmp_path: Path) -> None:
    path = write_jwks(tmp_path / "jwks.json", jwk(keys.rsa, "k", alg="RS256"))
    verifier = JwtVerifier.from_files(jwks=path, settings=ALL_ALGS)
    assert verifier.verify(mint(keys.rsa, "RS256", kid="k"), now=NOW)
    assert rejection(verifier, mint(keys.rsa, "PS256", kid="k")).reason is Reason.BAD_SIGNATURE


# --- algs -------------------------------------------------------------------


def test_alg_none_is_rejected(keys: Keys, jwks_verifier: JwtVerifier) -> None:
    body = b64u(json.dumps(good_claims()).encode())
    for kid in (None, "rsa-1"):
        hdr = b64u(json.dumps({"alg": "none", **({"kid": kid} if kid else {})}).encode())
        for sig in ("", b64u(b"x" * 32)):
            exc = rejection(jwks_verifier, f"{hdr}.{body}.{sig}")
            assert exc.reason is Reason.ALG_NOT_ALLOWED and "none" in str(exc)


def test_hs256_signed_with_the_public_key_is_rejected(keys: Keys) -> None:
    # The classic confusion attack: HMAC keyed with the (public) PEM.
    verifier = JwtVerifier.from_files(certificate=keys.dir / "apim.crt")
    hdr = b64u(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64u(json.dumps(good_claims()).encode())
    mac = hmac.new(pem_public(keys.rsa), f"{hdr}.{body}".encode(), hashlib.sha256).digest()
    exc = rejection(verifier, f"{hdr}.{body}.{b64u(mac)}")
    assert exc.reason is Reason.ALG_NOT_ALLOWED and "symmetric" in str(exc)


def test_alg_outside_the_allow_list(keys: Keys, default_verifier: JwtVerifier) -> None:
    assert default_verifier.settings.algorithms == ("RS256", "ES256", "PS256")
    for alg in ("RS384", "RS512", "ES384"):
        key, kid = keys.for_alg(alg)
        exc = rejection(default_verifier, mint(key, alg, kid=kid))
        assert exc.reason is Reason.ALG_NOT_ALLOWED and alg in str(exc)
    exc = rejection(default_verifier, mint(keys.rsa, "RS256", kid="rsa-1", header={"alg": "X" * 40}))
    assert exc.reason is Reason.ALG_NOT_ALLOWED and "X" * 40 not in str(exc)


@pytest.mark.parametrize("algs", [(), ("none",), ("HS256",), ("RS256", "HS512"), ("EdDSA",), ("rs256",)])
def test_settings_refuse_unsafe_or_unknown_algs(algs: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        VerifierSettings(algorithms=algs)


def test_settings_validate_leeway_and_accept_a_list() -> None:
    with pytest.raises(ValueError):
        VerifierSettings(leeway_s=-1)
    assert VerifierSettings(algorithms=["RS256"]).algorithms == ("RS256",)


def test_crit_header_is_rejected(keys: Keys, jwks_verifier: JwtVerifier) -> None:
    token = mint(keys.rsa, "RS256", kid="rsa-1", header={"crit": ["exp"], "exp": 1})
    assert rejection(jwks_verifier, token).reason is Reason.MALFORMED


# --- registered claims ------------------------------------------------------


def test_expiry_with_leeway(keys: Keys, jwks_verifier: JwtVerifier, tmp_path: Path) -> None:
    token = mint(keys.ec256, "ES256", good_claims(exp=NOW - 30), kid="ec-256")
    assert jwks_verifier.verify(token, now=NOW)  # 30 s late, within the 60 s leeway
    exc = rejection(jwks_verifier, token, now=NOW + 31)
    assert exc.reason is Reason.EXPIRED and "expired 61 s ago" in str(exc)
    strict = JwtVerifier.from_files(jwks=keys.dir / "jwks.json", settings=VerifierSettings(leeway_s=0))
    assert rejection(strict, token).reason is Reason.EXPIRED
    lax = JwtVerifier.from_files(jwks=keys.dir / "jwks.json", settings=VerifierSettings(check_expiry=False))
    assert lax.verify(token, now=NOW + 10**6)


def test_not_yet_valid(keys: Keys, jwks_verifier: JwtVerifier) -> None:
    assert jwks_verifier.verify(mint(keys.ec256, "ES256", good_claims(nbf=NOW + 30), kid="ec-256"), now=NOW)
    exc = rejection(jwks_verifier, mint(keys.ec256, "ES256", good_claims(nbf=NOW + 120), kid="ec-256"))
    assert exc.reason is Reason.NOT_YET_VALID


def test_default_now_is_the_clock(keys: Keys, jwks_verifier: JwtVerifier) -> None:
    # NOW is in 2023: a token expiring an hour after it is long expired today.
    with pytest.raises(TokenInvalid) as info:
        jwks_verifier.verify(mint(keys.ec256, "ES256", kid="ec-256"))
    assert info.value.reason is Reason.EXPIRED


@pytest.mark.parametrize("value", ['"soon"', "null", "true", "[1]", "Infinity", "NaN", "1e999", "9" * 400])
def test_non_numeric_exp_is_malformed(keys: Keys, jwks_verifier: JwtVerifier, value: str) -> None:
    payload = json.dumps(good_claims(exp=None))[:-1].encode() + b', "exp": ' + value.encode() + b"}"
    exc = rejection(jwks_verifier, mint(keys.ec256, "ES256", kid="ec-256", payload=payload))
    assert exc.reason is Reason.MALFORMED


def test_issuer(keys: Keys) -> None:
    verifier = JwtVerifier.from_files(jwks=keys.dir / "jwks.json", settings=VerifierSettings(issuer=ISS))
    assert verifier.verify(mint(keys.ec256, "ES256", kid="ec-256"), now=NOW)["iss"] == ISS
    for iss in ("https://evil.example.com/oauth2/token", None, ["x"]):
        token = mint(keys.ec256, "ES256", good_claims(iss=iss), kid="ec-256")
        assert rejection(verifier, token).reason is Reason.WRONG_ISSUER


def test_audience(keys: Keys) -> None:
    verifier = JwtVerifier.from_files(jwks=keys.dir / "jwks.json", settings=VerifierSettings(audience="ck-1"))
    for aud in ("ck-1", ["other", "ck-1"]):
        assert verifier.verify(mint(keys.ec256, "ES256", good_claims(aud=aud), kid="ec-256"), now=NOW)
    for aud in ("ck-2", ["other"], None, {"ck-1": 1}, "ck-1x"):
        token = mint(keys.ec256, "ES256", good_claims(aud=aud), kid="ec-256")
        assert rejection(verifier, token).reason is Reason.WRONG_AUDIENCE


# --- malformed tokens -------------------------------------------------------


def _valid_parts(keys: Keys) -> tuple[str, str, str]:
    h, p, s = mint(keys.rsa, "RS256", kid="rsa-1").split(".")
    return h, p, s


@pytest.mark.parametrize("case", [
    "empty", "one_part", "two_parts", "four_parts", "bad_char", "std_alphabet_plus", "std_alphabet_slash",
    "padded", "bad_length", "non_canonical_signature", "header_not_json", "header_not_utf8", "header_not_object",
    "header_deeply_nested", "no_alg", "kid_not_string", "too_long",
])
def test_malformed_tokens(keys: Keys, jwks_verifier: JwtVerifier, case: str) -> None:
    h, p, s = _valid_parts(keys)
    last = B64URL_ORDER.index(s[-1])  # 256 bytes = 342 chars: the last char's low 4 bits are unused
    tokens = {
        "empty": "",
        "one_part": h,
        "two_parts": f"{h}.{p}",
        "four_parts": f"{h}.{p}.{s}.{s}",
        "bad_char": f"{h}.{p[:-1]}@.{s}",
        "std_alphabet_plus": f"{h}.{p[:-4]}ab+c.{s}",
        "std_alphabet_slash": f"{h}.{p}.{s[:-4]}ab/c",
        "padded": f"{h}.{p}.{s}==",
        "bad_length": f"{h}.{p}.{s}" + "A" * ((1 - len(s)) % 4),
        "non_canonical_signature": f"{h}.{p}.{s[:-1]}{B64URL_ORDER[last | 1]}",
        "header_not_json": b64u(b"{alg: RS256}") + f".{p}.{s}",
        "header_not_utf8": b64u(b"\xff\xfe{}") + f".{p}.{s}",
        "header_not_object": b64u(b'["RS256"]') + f".{p}.{s}",
        "header_deeply_nested": b64u(b"[" * 30000) + f".{p}.{s}",
        "no_alg": b64u(json.dumps({"kid": "rsa-1"}).encode()) + f".{p}.{s}",
        "kid_not_string": mint(keys.rsa, "RS256", kid="rsa-1", header={"kid": 5}),
        "too_long": f"{h}.{p}{'A' * 70000}.{s}",
    }
    assert len(s) % 4 == 2 and last & 0x0F == 0
    token = tokens[case]
    exc = rejection(jwks_verifier, token)
    expected = Reason.ALG_NOT_ALLOWED if case == "no_alg" else Reason.MALFORMED
    assert exc.reason is expected and exc.detail


@pytest.mark.parametrize("payload", [b"not json", b"\xff\xfe", b"[1, 2]", b'"a string"', b"{\"a\": 1"])
def test_signed_payload_that_is_not_a_json_object(keys: Keys, jwks_verifier: JwtVerifier, payload: bytes) -> None:
    exc = rejection(jwks_verifier, mint(keys.rsa, "RS256", kid="rsa-1", payload=payload))
    assert exc.reason is Reason.MALFORMED and "payload" in exc.detail


def test_non_string_token(jwks_verifier: JwtVerifier) -> None:
    with pytest.raises(TokenInvalid) as info:
        jwks_verifier.verify(b"a.b.c")
    assert info.value.reason is Reason.MALFORMED


def test_token_invalid_pickles_and_is_a_value_error() -> None:
    exc = TokenInvalid(Reason.EXPIRED, "expired 5 s ago", "token 0123456789ab")
    back = pickle.loads(pickle.dumps(exc))
    assert isinstance(back, ValueError) and back.reason is Reason.EXPIRED and str(back) == str(exc)


# --- property: only TokenInvalid, and never the token in the message --------

SEGMENT = st.text(alphabet=B64URL + "+/=.@ ", max_size=80) | st.text(max_size=40)
HEADERS = st.fixed_dictionaries(
    {"alg": st.sampled_from([*sorted(SUPPORTED_ALGORITHMS), "none", "HS256", "ES512", "RS1"])
     | st.integers() | st.none() | st.lists(st.text(max_size=3), max_size=2)},
    optional={"kid": st.sampled_from(["rsa-1", "ec-256", "ec-384", "zz"]) | st.integers(),
              "crit": st.just(["b64"])},
)
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                        max_size=3), max_leaves=6)
CLAIM_TIMES = (st.integers(min_value=-10**20, max_value=10**20) | st.floats() | st.just(10**400)
               | st.sampled_from([NOW - 3600, NOW, NOW + 3600]) | JSON_VALUES)
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _only_token_invalid(verifier: JwtVerifier, token: str) -> None:
    try:
        claims = verifier.verify(token, now=NOW)
    except TokenInvalid as exc:
        assert exc.reason in set(Reason) and str(exc).startswith(token_id(token) + " rejected: ")
        assert exc.__context__ is None
        if token.count(".") == 2:  # messages hold no "x.y.z": a 3-part token can never appear in one
            assert token not in str(exc)
    else:
        assert isinstance(claims, dict)


@PROPERTY
@given(st.text(max_size=300))
def test_random_strings_only_raise_token_invalid(jwks_verifier: JwtVerifier, token: str) -> None:
    _only_token_invalid(jwks_verifier, token)


@PROPERTY
@given(SEGMENT, SEGMENT, SEGMENT)
def test_random_three_part_strings_only_raise_token_invalid(jwks_verifier: JwtVerifier, h: str, p: str,
                                                            s: str) -> None:
    _only_token_invalid(jwks_verifier, f"{h}.{p}.{s}")


@PROPERTY
@given(HEADERS, st.binary(max_size=64) | JSON_VALUES.map(lambda v: json.dumps(v).encode()),
       st.binary(max_size=300) | st.sampled_from([64, 96, 256]).map(bytes))
def test_fuzzed_headers_and_signatures_only_raise_token_invalid(jwks_verifier: JwtVerifier, header: dict[str, Any],
                                                                payload: bytes, signature: bytes) -> None:
    _only_token_invalid(jwks_verifier, f"{b64u(json.dumps(header).encode())}.{b64u(payload)}.{b64u(signature)}")


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["ES256", "RS256"]), CLAIM_TIMES, CLAIM_TIMES, JSON_VALUES)
def test_fuzzed_claims_of_validly_signed_tokens(keys: Keys, jwks_verifier: JwtVerifier, alg: str, exp: Any,
                                                nbf: Any, extra: Any) -> None:
    key, kid = keys.for_alg(alg)
    payload = json.dumps({"exp": exp, "nbf": nbf, "x": extra}).encode()
    _only_token_invalid(jwks_verifier, mint(key, alg, kid=kid, payload=payload))


# --- key files and reload ---------------------------------------------------


def test_from_files_needs_a_usable_key(keys: Keys, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one"):
        JwtVerifier.from_files()
    with pytest.raises(ValueError, match="at least one"):
        JwtVerifier.from_files(jwks="", certificate="")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "not.pem").write_text("hello")
    with pytest.raises(ValueError, match="JWKS"):
        JwtVerifier.from_files(jwks=tmp_path / "bad.json")
    with pytest.raises(ValueError, match="certificate"):
        JwtVerifier.from_files(certificate=tmp_path / "not.pem")
    with pytest.raises(ValueError, match="public key"):
        JwtVerifier.from_files(public_key=tmp_path / "missing.pem")
    only_unusable = write_jwks(tmp_path / "enc.json", jwk(keys.rsa, "e", use="enc"),
                               {"kty": "oct", "k": b64u(b"secret"), "kid": "h"})
    with pytest.raises(ValueError, match="no usable"):
        JwtVerifier.from_files(jwks=only_unusable)


def test_jwks_skips_unusable_entries(keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    small = rsa.generate_private_key(65537, 1024)
    path = write_jwks(tmp_path / "mixed.json", jwk(keys.rsa, "enc-key", use="enc"), jwk(small, "weak"),
                      {"kty": "OKP", "crv": "Ed25519", "x": "AA", "kid": "ed"},
                      {"kty": "EC", "crv": "P-256", "x": b64u(bytes(32)), "y": b64u(bytes(32)), "kid": "off-curve"},
                      {"kty": "RSA", "n": "!!", "e": "AQAB", "kid": "bad-n"}, "not an object",
                      jwk(keys.ec256, "ec-256"))
    with caplog.at_level(logging.WARNING, logger="collector.jwt_verify"):
        verifier = JwtVerifier.from_files(jwks=path)
    assert verifier.key_count == 1
    assert len([r for r in caplog.records if "skipped" in r.getMessage()]) == 6
    assert rejection(verifier, mint(small, "RS256", kid="weak")).reason is Reason.UNKNOWN_KID
    assert verifier.verify(mint(keys.ec256, "ES256", kid="ec-256"), now=NOW)


def test_reload_picks_up_a_rotated_jwks_and_survives_a_broken_one(
        keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_jwks(tmp_path / "jwks.json", jwk(keys.rsa, "rsa-1"))
    verifier = JwtVerifier.from_files(jwks=path)
    old = mint(keys.rsa, "RS256", kid="rsa-1")
    new = mint(keys.rsa_rotated, "RS256", kid="rsa-2")
    assert rejection(verifier, new).reason is Reason.UNKNOWN_KID

    write_jwks(path, jwk(keys.rsa_rotated, "rsa-2"))
    verifier.reload()
    assert verifier.verify(new, now=NOW)["sub"] == "admin@carbon.super"
    assert rejection(verifier, old).reason is Reason.UNKNOWN_KID  # the retired key is gone

    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="collector.jwt_verify"):
        path.write_text('{"keys": [')  # half-written
        verifier.reload()
        path.unlink()
        verifier.reload()
    assert verifier.verify(new, now=NOW)  # the last good keys are kept
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2 and all("keeping the 1 key(s)" in m for m in errors)


def test_reload_of_several_sources_keeps_only_the_broken_ones(keys: Keys, tmp_path: Path) -> None:
    jwks = write_jwks(tmp_path / "jwks.json", jwk(keys.ec256, "ec-256"))
    cert = tmp_path / "apim.crt"
    cert.write_bytes(self_signed(keys.rsa))
    verifier = JwtVerifier.from_files(jwks=jwks, certificate=cert, settings=ALL_ALGS)
    assert verifier.key_count == 2
    cert.write_text("garbage")
    write_jwks(jwks, jwk(keys.ec256, "ec-256"), jwk(keys.ec384, "ec-384"))
    verifier.reload()
    assert verifier.key_count == 3
    assert verifier.verify(mint(keys.rsa, "RS256", kid="apim"), now=NOW)  # cert key kept
    assert verifier.verify(mint(keys.ec384, "ES384", kid="ec-384"), now=NOW)  # new JWKS key used


def test_certificate_bundle_and_expired_certificate(keys: Keys, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")])
    expired = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(keys.rsa_rotated.public_key()).serial_number(1)
               .not_valid_before(dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
               .not_valid_after(dt.datetime(2001, 1, 1, tzinfo=dt.UTC))
               .sign(keys.rsa_rotated, hashes.SHA256()))
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes(self_signed(keys.rsa) + expired.public_bytes(serialization.Encoding.PEM))
    with caplog.at_level(logging.WARNING, logger="collector.jwt_verify"):
        verifier = JwtVerifier.from_files(certificate=bundle)
    assert any("expired" in r.getMessage() for r in caplog.records)
    for key in (keys.rsa, keys.rsa_rotated):
        assert verifier.verify(mint(key, "RS256"), now=NOW)
