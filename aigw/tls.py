"""A local certificate authority for `aigw dev --tls`: https/wss on this machine with a certificate clients can trust.

`ensure_local_ca(directory)` makes (once) and afterwards reuses, in ``directory`` (``.aigw`` by default):

- ``ca.pem`` / ``ca.key``: a CA certificate (10 years, ``BasicConstraints(ca=True, path_length=0)``, may only sign
  certificates) and its key;
- ``server.pem`` / ``server.key``: a server certificate for ``localhost`` and ``127.0.0.1`` (SANs, 2 years,
  ``serverAuth``) signed by that CA.

Keys are ECDSA P-256 and written 0600. Files are reused while they parse, belong together (the CA signed the
server certificate, each key matches its certificate), name the required hosts and stay valid for at least
`RENEW_BEFORE`; otherwise what is wrong is replaced: the server certificate alone when the CA is still good
(so a CA someone already trusts keeps working), everything when the CA itself is not.

Trusting the CA: Node via ``NODE_EXTRA_CA_CERTS=<ca.pem>``; Python's `ssl.create_default_context()` (hence
``http.client``, ``urllib`` and a *later-started* aiohttp) via ``SSL_CERT_FILE=<bundle>`` where the bundle
(`LocalTls.write_trust_bundle`) is the usual CAs plus this one, so public https keeps working; or directly
with `LocalTls.client_ssl_context`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CA_DAYS", "RENEW_BEFORE", "SERVER_DAYS", "LocalTls", "ensure_local_ca"]

CA_DAYS = 3650
SERVER_DAYS = 730  # under Apple's 825-day limit for TLS server certificates
RENEW_BEFORE = dt.timedelta(days=30)
DNS_NAMES = ("localhost",)
IP_ADDRESSES = ("127.0.0.1",)
_BACKDATE = dt.timedelta(minutes=5)  # tolerate a little clock skew between processes/machines


@dataclass(frozen=True)
class LocalTls:
    """Where the local CA and server certificate live (absolute paths)."""

    directory: Path
    ca_file: Path
    ca_key_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def at(cls, directory: Path) -> LocalTls:
        directory = directory.absolute()
        return cls(
            directory=directory,
            ca_file=directory / "ca.pem",
            ca_key_file=directory / "ca.key",
            cert_file=directory / "server.pem",
            key_file=directory / "server.key",
        )

    def server_ssl_context(self) -> ssl.SSLContext:
        """A server-side context (TLS 1.2+) serving the local certificate: pass it to aiohttp's ``TCPSite``."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context trusting only the local CA (hostname checking on)."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def write_trust_bundle(self, path: Path | None = None) -> Path:
        """Write the default CAs of this Python (its OpenSSL default file, else certifi) plus the local CA.

        Point ``SSL_CERT_FILE`` at the result to make `ssl.create_default_context()` trust the local server
        without distrusting anything it trusted before. Returns the path (``<directory>/trust-bundle.pem``).
        """
        path = (path or self.directory / "trust-bundle.pem").absolute()
        parts = [_default_ca_pem(exclude=path), self.ca_file.read_text()]
        _write_atomic(path, "\n".join(p.strip() + "\n" for p in parts if p.strip()).encode(), mode=0o644)
        return path


def ensure_local_ca(directory: Path = Path(".aigw")) -> LocalTls:
    """The local CA and server certificate in ``directory``: created if missing or unusable, else reused."""
    tls = LocalTls.at(directory)
    tls.directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca = _load_valid_ca(tls, now)
    if ca is None:
        ca = _create_ca(tls, now)
        _create_server(tls, ca, now)
    elif not _server_valid(tls, ca[0], now):
        _create_server(tls, ca, now)
    return tls


# --------------------------------------------------------------------------------------------- checks

_Ca = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def _load_valid_ca(tls: LocalTls, now: dt.datetime) -> _Ca | None:
    try:
        cert = x509.load_pem_x509_certificate(tls.ca_file.read_bytes())
        key = serialization.load_pem_private_key(tls.ca_key_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not _same_public_key(cert, key):
        return None
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        cert.verify_directly_issued_by(cert)  # self-signed
    except (x509.ExtensionNotFound, ValueError, TypeError, InvalidSignature):
        return None
    if not constraints.ca or not _in_validity(cert, now):
        return None
    return cert, key


def _server_valid(tls: LocalTls, ca: x509.Certificate, now: dt.datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(tls.cert_file.read_bytes())
        key = serialization.load_pem_private_key(tls.key_file.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    names_ok = set(DNS_NAMES) <= set(sans.get_values_for_type(x509.DNSName)) and {
        ipaddress.ip_address(a) for a in IP_ADDRESSES
    } <= set(sans.get_values_for_type(x509.IPAddress))
    return names_ok and _same_public_key(cert, key) and _in_validity(cert, now)


def _in_validity(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now and now + RENEW_BEFORE < cert.not_valid_after_utc


def _same_public_key(cert: x509.Certificate, key: object) -> bool:
    public = getattr(key, "public_key", None)
    if public is None:
        return False
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(cert.public_key().public_bytes(*raw) == public().public_bytes(*raw))


# --------------------------------------------------------------------------------------------- creation


def _create_ca(tls: LocalTls, now: dt.datetime) -> _Ca:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ai-gateway local development"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"aigw dev local CA ({now:%Y-%m-%d})"),
    ])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_atomic(tls.ca_key_file, _key_pem(key), mode=0o600)
    _write_atomic(tls.ca_file, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert, key


def _create_server(tls: LocalTls, ca: _Ca, now: dt.datetime) -> None:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in DNS_NAMES]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in IP_ADDRESSES]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DNS_NAMES[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + dt.timedelta(days=SERVER_DAYS), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_atomic(tls.key_file, _key_pem(key), mode=0o600)
    _write_atomic(tls.cert_file, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    """Write via a temporary file created with ``mode`` (never briefly world-readable), then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)  # O_CREAT's mode is filtered by the umask, and an existing tmp keeps its own
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _default_ca_pem(*, exclude: Path) -> str:
    """The CA certificates `ssl.create_default_context()` would load from a file: OpenSSL's default, else certifi.

    ``exclude`` (the bundle being written) is skipped, so rewriting a bundle ``SSL_CERT_FILE`` already names does
    not feed on itself.
    """
    paths = ssl.get_default_verify_paths()
    for candidate in (os.environ.get(paths.openssl_cafile_env), paths.cafile, paths.openssl_cafile):
        if candidate and os.path.isfile(candidate) and Path(candidate).absolute() != exclude:
            try:
                return Path(candidate).read_text()
            except (OSError, UnicodeDecodeError):
                continue
    try:
        import certifi
    except ImportError:  # pragma: no cover - certifi ships with botocore's dependencies here
        return ""
    return Path(certifi.where()).read_text()
