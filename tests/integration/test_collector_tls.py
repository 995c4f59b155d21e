"""The collector serving TLS and mutual TLS, over real gRPC, against the real Kafka broker.

Certificates are made here with ``cryptography``: a CA, a server certificate
for 127.0.0.1 and localhost (subject alternative names), a client certificate,
and for the negative cases a second, untrusted CA with its own client
certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from collector.settings import CollectorSettings
from core.settings import SettingsError
from schemas.mixer.template.metric import template_handler_service_pb2 as m
from tests.integration.test_collector_grpc import TIMEOUT, good_wso2, running_collector, send
from tests.integration.test_spine import RunningCollector

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


# -- certificates -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Issued:
    key_pem: bytes
    cert_pem: bytes
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "apim-analytics tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(cn: str, issuer: Issued | None, *, ca: bool = False, server: bool = False) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(cn))
               .issuer_name(issuer.cert.subject if issuer else _name(cn))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        assert issuer is not None
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return Issued(key_pem, cert.public_bytes(serialization.Encoding.PEM), key, cert)


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Issued
    server: Issued
    client: Issued
    other_ca: Issued
    other_client: Issued

    def path(self, name: str) -> Path:
        return self.dir / name


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = _issue("test CA", None, ca=True)
    server = _issue("collector", ca, server=True)
    client = _issue("mixer", ca)
    other_ca = _issue("another CA", None, ca=True)
    other_client = _issue("stranger", other_ca)
    for name, data in (("ca.pem", ca.cert_pem), ("server.pem", server.cert_pem), ("server.key", server.key_pem),
                       ("client.pem", client.cert_pem), ("client.key", client.key_pem)):
        (d / name).write_bytes(data)
    return Pki(d, ca, server, client, other_ca, other_client)


# -- collectors -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_collector(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCollector]:
    with running_collector(tmp_path_factory.mktemp("tls") / "spool", tls_cert=str(pki.path("server.pem")),
                           tls_key=str(pki.path("server.key"))) as (running, _usage, _dead):
        yield running


@pytest.fixture(scope="module")
def mtls_collector(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCollector]:
    with running_collector(tmp_path_factory.mktemp("mtls") / "spool", tls_cert=str(pki.path("server.pem")),
                           tls_key=str(pki.path("server.key")), tls_client_ca=str(pki.path("ca.pem"))) \
            as (running, _usage, _dead):
        yield running


def _call(channel: grpc.Channel) -> grpc.StatusCode:
    raw = m.HandleMetricRequest(dedup_id="tls", instances=[good_wso2()]).SerializeToString()
    return send(channel, raw)[0]


def _health(channel: grpc.Channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT).status


def _secure(target: str, root: bytes, client: Issued | None = None,
            options: list[tuple[str, str]] | None = None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=root, private_key=client.key_pem if client else None,
                                         certificate_chain=client.cert_pem if client else None)
    return grpc.secure_channel(target, creds, options=options or [])


def _refused(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _health(channel)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
    assert _call(channel) == grpc.StatusCode.UNAVAILABLE


# -- TLS ------------------------------------------------------------------------------------------------

def test_tls_client_is_served(tls_collector: RunningCollector, pki: Pki) -> None:
    with _secure(tls_collector.target, pki.ca.cert_pem) as channel:
        assert _call(channel) == grpc.StatusCode.OK
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING


def test_server_certificate_names_localhost_too(tls_collector: RunningCollector, pki: Pki) -> None:
    # connect to 127.0.0.1 but verify the certificate for the DNS name "localhost"
    with _secure(tls_collector.target, pki.ca.cert_pem,
                 options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
    # ... and a name the certificate does not carry is refused
    with _secure(tls_collector.target, pki.ca.cert_pem,
                 options=[("grpc.ssl_target_name_override", "collector.example.com")]) as channel:
        _refused(channel)


def test_plaintext_client_fails_against_tls(tls_collector: RunningCollector) -> None:
    with grpc.insecure_channel(tls_collector.target) as channel:
        _refused(channel)


def test_client_not_trusting_the_server_ca_fails(tls_collector: RunningCollector, pki: Pki) -> None:
    with _secure(tls_collector.target, pki.other_ca.cert_pem) as channel:
        _refused(channel)


# -- mutual TLS ------------------------------------------------------------------------------------------

def test_mutual_tls_client_with_certificate_is_served(mtls_collector: RunningCollector, pki: Pki) -> None:
    with _secure(mtls_collector.target, pki.ca.cert_pem, pki.client) as channel:
        assert _call(channel) == grpc.StatusCode.OK
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING


def test_mutual_tls_client_without_certificate_fails(mtls_collector: RunningCollector, pki: Pki) -> None:
    with _secure(mtls_collector.target, pki.ca.cert_pem) as channel:
        _refused(channel)


def test_mutual_tls_client_certificate_from_another_ca_fails(mtls_collector: RunningCollector, pki: Pki) -> None:
    with _secure(mtls_collector.target, pki.ca.cert_pem, pki.other_client) as channel:
        _refused(channel)


def test_mutual_tls_plaintext_client_fails(mtls_collector: RunningCollector) -> None:
    with grpc.insecure_channel(mtls_collector.target) as channel:
        _refused(channel)


# -- settings ------------------------------------------------------------------------------------------------

def test_settings_reject_incomplete_tls(tmp_path: Path) -> None:
    base = {"spool_dir": str(tmp_path / "spool"), "metrics_listen": ""}
    with pytest.raises(SettingsError, match="--tls-cert and --tls-key"):
        CollectorSettings(tls_cert="server.pem", **base).validate()
    with pytest.raises(SettingsError, match="--tls-cert and --tls-key"):
        CollectorSettings(tls_key="server.key", **base).validate()
    with pytest.raises(SettingsError, match="--tls-client-ca"):
        CollectorSettings(tls_client_ca="ca.pem", **base).validate()
    CollectorSettings(tls_cert="server.pem", tls_key="server.key", **base).validate()
    CollectorSettings(tls_cert="server.pem", tls_key="server.key", tls_client_ca="ca.pem", **base).validate()
