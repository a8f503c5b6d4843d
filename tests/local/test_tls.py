"""`aigw.tls`: the local CA and the localhost certificate it signs, their reuse, and real https against them."""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import ssl
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import certifi
import pytest
from aiohttp import web
from cryptography import x509

from aigw.tls import LocalTls, ensure_local_ca


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def tls(tmp_path: Path) -> LocalTls:
    return ensure_local_ca(tmp_path / "state")


def test_the_ca_signs_the_server_certificate(tls: LocalTls) -> None:
    ca, server = load(tls.ca_file), load(tls.cert_file)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    server.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    assert server.issuer == ca.subject
    ca_days = (ca.not_valid_after_utc - ca.not_valid_before_utc).days
    server_days = (server.not_valid_after_utc - server.not_valid_before_utc).days
    assert 3649 <= ca_days <= 3651 and 729 <= server_days <= 731


def test_the_server_certificate_names_localhost_and_127_0_0_1(tls: LocalTls) -> None:
    sans = load(tls.cert_file).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


def test_files_are_where_promised_and_keys_private(tls: LocalTls) -> None:
    names = {p.name for p in tls.directory.iterdir()}
    assert {"ca.pem", "ca.key", "server.pem", "server.key"} <= names
    for key in (tls.key_file, tls.ca_key_file):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert tls.ca_file.is_absolute()


def test_a_second_call_reuses_the_files(tls: LocalTls) -> None:
    files = (tls.ca_file, tls.ca_key_file, tls.cert_file, tls.key_file)
    before = {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in files}
    again = ensure_local_ca(tls.directory)
    assert again == tls
    assert {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in files} == before


def test_a_missing_server_certificate_is_reissued_by_the_same_ca(tls: LocalTls) -> None:
    ca_before, old_server = tls.ca_file.read_bytes(), load(tls.cert_file)
    tls.cert_file.unlink()
    ensure_local_ca(tls.directory)
    assert tls.ca_file.read_bytes() == ca_before  # a CA someone already trusts stays trusted
    new_server = load(tls.cert_file)
    assert new_server.serial_number != old_server.serial_number
    new_server.verify_directly_issued_by(load(tls.ca_file))


def test_a_server_key_not_matching_its_certificate_is_replaced(tls: LocalTls, tmp_path: Path) -> None:
    other = ensure_local_ca(tmp_path / "other")
    tls.key_file.write_bytes(other.key_file.read_bytes())
    ensure_local_ca(tls.directory)
    tls.server_ssl_context()  # load_cert_chain fails on a key/certificate mismatch


def test_a_broken_ca_replaces_everything(tls: LocalTls) -> None:
    old_ca = tls.ca_file.read_bytes()
    tls.ca_file.write_text("not a certificate")
    ensure_local_ca(tls.directory)
    assert tls.ca_file.read_bytes() != old_ca
    load(tls.cert_file).verify_directly_issued_by(load(tls.ca_file))


async def hello(_request: web.Request) -> web.Response:
    return web.Response(text="hello over tls")


@asynccontextmanager
async def https_server(tls: LocalTls) -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.server_ssl_context())
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def test_aiohttp_https_succeeds_with_the_ca_and_fails_without(tls: LocalTls) -> None:
    async def scenario() -> None:
        async with https_server(tls) as port, aiohttp.ClientSession() as session:
            for host in ("localhost", "127.0.0.1"):
                async with session.get(f"https://{host}:{port}/", ssl=tls.client_ssl_context()) as response:
                    assert response.status == 200 and await response.text() == "hello over tls"
            public_cas_only = ssl.create_default_context(cafile=certifi.where())
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with session.get(f"https://localhost:{port}/", ssl=public_cas_only):
                    pass

    asyncio.run(scenario())


def test_ssl_cert_file_with_the_trust_bundle_makes_the_default_context_trust_it(
    tls: LocalTls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `aigw dev --tls` relies on for the worker's publishes (http.client + `ssl.create_default_context()`)."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    bundle = tls.write_trust_bundle()
    bundle_text = bundle.read_text()
    assert tls.ca_file.read_text().strip() in bundle_text
    assert bundle_text.count("BEGIN CERTIFICATE") > 10  # the usual public CAs are kept

    def get(port: int) -> int:
        connection = http.client.HTTPSConnection("localhost", port, timeout=5, context=ssl.create_default_context())
        try:
            connection.request("GET", "/")
            return connection.getresponse().status
        finally:
            connection.close()

    async def scenario() -> None:
        async with https_server(tls) as port:
            with pytest.raises(ssl.SSLCertVerificationError):
                await asyncio.to_thread(get, port)
            monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
            assert await asyncio.to_thread(get, port) == 200

    asyncio.run(scenario())
    tls.write_trust_bundle()  # rewriting the bundle SSL_CERT_FILE names does not make it feed on itself
    assert bundle.read_text() == bundle_text
