"""TLS for the listeners: server contexts (TLS 1.2 minimum) and a development certificate.

When no certificate is configured, a self-signed one is created in the data directory,
so that STARTTLS is always offered (ARCHITECTURE.md). Production uses IGC Santé
certificates given in the configuration.
"""

from __future__ import annotations

import asyncio.sslproto
import datetime as dt
import functools
import ipaddress
import secrets
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.runtime.files import write_private


def self_signed(
    key: ec.EllipticCurvePrivateKey,
    name: x509.Name,
    *,
    days: int,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    """A certificate signed by its own `key`, valid from five minutes ago for `days` (the
    development certificate, the mock's CPS test CA); `extensions` as (value, critical)."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, hashes.SHA256())


def dev_certificate(directory: Path) -> tuple[Path, Path]:
    """Where the development certificate and key of a data directory live."""
    return directory / "dev-cert.pem", directory / "dev-key.pem"


def ensure_dev_certificate(
    directory: Path, hostnames: tuple[str, ...] = ("localhost",)
) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, created once.

    Its name is its own (a random suffix, and a key identifier): the demo writes one for
    the gateway and one for the mock, and a client trusting both would otherwise find the
    wrong one under the shared name and call the other "self-signed"."""
    cert_path, key_path = dev_certificate(directory)
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    label = f"lps-gateway development {secrets.token_hex(4)}"
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label)])
    alt_names: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    alt_names += [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    certificate = self_signed(
        key,
        name,
        days=825,
        extensions=[
            (x509.SubjectAlternativeName(alt_names), False),
            (x509.BasicConstraints(ca=True, path_length=None), True),
            (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
        ],
    )
    write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


# TLS 1.2 suites: forward secrecy and AEAD only. The CBC-SHA256/384 suites OpenSSL offers by
# default are what testssl flags as LUCKY13-prone; Référentiel #2 (ECO.1.1.3) imposes a list
# an operator sets with [tls] ciphers. TLS 1.3's suites are all AEAD and not chosen here.
DEFAULT_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
TLS_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


# What asyncio's TLS protocol reads into, per connection: its default (256 KiB) is
# allocated and zeroed for every TLS connection, resident as long as the connection lives:
# some 2.5 GiB for 10,000 idle IMAP sessions (those of the clients; as many again for
# backends reached over TLS). A TLS record holds at most 16 KiB: 64 KiB still takes several
# records a read.
TLS_READ_SIZE = 64 * 1024


def bound_tls_buffers(size: int = TLS_READ_SIZE) -> None:
    """Make every TLS connection this process opens or accepts from now on read into a
    buffer of `size` bytes at most instead of asyncio's 256 KiB (a process-wide setting of
    asyncio's: the gateway calls it when it starts)."""
    protocol = asyncio.sslproto.SSLProtocol
    protocol.max_size = min(protocol.max_size, size)


def server_context(
    cert: Path, key: Path, *, min_version: str = "TLSv1.2", ciphers: str = DEFAULT_CIPHERS
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[min_version]
    context.set_ciphers(ciphers)
    context.load_cert_chain(cert, key)
    return context


def check_ciphers(ciphers: str) -> str:
    """`ciphers` if OpenSSL knows it and it leaves a TLS 1.2 suite; ValueError otherwise (a
    typo would otherwise leave only TLS 1.3, or fail at the first handshake)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.set_ciphers(ciphers)
    except ssl.SSLError:
        raise ValueError(f"OpenSSL matches no cipher suite in {ciphers!r}") from None
    if not any(c["protocol"] == "TLSv1.2" for c in context.get_ciphers()):
        raise ValueError(f"{ciphers!r} leaves no TLS 1.2 cipher suite")
    return ciphers


def request_client_certificates(context: ssl.SSLContext, cadata: str) -> ssl.SSLContext:
    """Make a server `context` ask for a client certificate (optional: token logins need
    none) and take only those the CAs of `cadata` (PEM) issued; the login checks them
    again, revocation included (`psc_auth.certificates.CardVerifier`)."""
    context.verify_mode = ssl.CERT_OPTIONAL
    context.load_verify_locations(cadata=cadata)
    return context


def client_context(trusted: Path | None = None) -> ssl.SSLContext:
    """A verifying client context; `trusted` adds a development certificate as a CA."""
    context = ssl.create_default_context(cafile=str(trusted) if trusted else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def backend_context(ca_file: Path | None, verify: bool) -> ssl.SSLContext:
    """The context the gateway uses towards a backend: verifying unless told otherwise."""
    context = client_context(ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@functools.lru_cache(maxsize=32)
def shared_backend_context(ca_file: Path | None, verify: bool) -> ssl.SSLContext:
    """`backend_context`, one per backend setting, shared by every connection to it (an
    SSLContext is made to be shared): making one loads the CA bundle, ~28 ms of CPU, which
    a backend connection per client session cannot pay."""
    return backend_context(ca_file, verify)
