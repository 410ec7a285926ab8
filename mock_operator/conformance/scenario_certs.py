"""The certificates of the TLS scenario ports, which an LPS must refuse: one expired, one for
another host name, one from a CA it was never given (ECO.1.1.5, RFC 6125 §6 / RFC 9525,
ECO.1.1.10).

The development certificate of the normal ports is self-signed, so it cannot vouch for the
first two: a small "scenario CA" issues them, and `trust.pem` bundles it with the
development certificate. An LPS given `trust.pem` as its trusted CAs works on the normal
ports and must refuse the scenario ports for the scenario's reason alone (an expired or
misnamed certificate from a CA it trusts). The third is issued by a CA whose certificate is
written nowhere and whose key is forgotten at once.

All are created once, together, in the mock's data directory (keys mode 0600); if one file
is missing they are all made again (a new scenario CA: `trust.pem` changes too).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.runtime.files import write_private

SCENARIOS = ("expired", "wrong-name", "untrusted-ca")
OTHER_NAME = "autre-serveur.invalid"  # RFC 2606: never a real host
EXPIRED_DAYS_AGO = 30


@dataclasses.dataclass(frozen=True)
class ScenarioFiles:
    directory: Path
    trust: Path  # the development certificate (if any) and the scenario CA: the LPS trusts it
    ca: Path  # the scenario CA alone (with a configured certificate, trust it besides)

    def cert(self, scenario: str) -> Path:
        return self.directory / f"{scenario}-cert.pem"

    def key(self, scenario: str) -> Path:
        return self.directory / f"{scenario}-key.pem"


def scenario_files(directory: Path) -> ScenarioFiles:
    return ScenarioFiles(directory, directory / "trust.pem", directory / "scenario-ca.pem")


def ensure_scenario_certificates(
    directory: Path,
    dev_certificate: Path | None,
    hostnames: tuple[str, ...] = ("localhost",),
) -> ScenarioFiles:
    """The scenario certificates of `directory`, created once; `dev_certificate`, the
    normal ports' certificate when the mock made it (it goes into `trust.pem`)."""
    files = scenario_files(directory)
    wanted = [files.ca, *(p for s in SCENARIOS for p in (files.cert(s), files.key(s)))]
    if not all(p.exists() for p in wanted):
        _create(files, hostnames)
    # The development certificate may have been made again since: trust.pem follows it.
    trust = (dev_certificate.read_bytes() if dev_certificate else b"") + files.ca.read_bytes()
    if not files.trust.exists() or files.trust.read_bytes() != trust:
        files.trust.write_bytes(trust)
    return files


def _create(files: ScenarioFiles, hostnames: tuple[str, ...]) -> None:
    files.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = dt.datetime.now(dt.UTC)
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    names += [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    ca_key, ca = _authority("mock-operator scenario CA (test only)", now)
    other_key, _other = _authority("mock-operator untrusted CA (never trust)", now)
    issued = {
        "expired": _leaf(
            ca_key,
            ca.subject,
            "localhost (expired)",
            names,
            now - dt.timedelta(days=400),
            now - dt.timedelta(days=EXPIRED_DAYS_AGO),
        ),
        "wrong-name": _leaf(
            ca_key,
            ca.subject,
            OTHER_NAME,
            [x509.DNSName(OTHER_NAME)],
            now - dt.timedelta(minutes=5),
            now + dt.timedelta(days=825),
        ),
        "untrusted-ca": _leaf(
            other_key,
            _other.subject,
            "localhost (untrusted CA)",
            names,
            now - dt.timedelta(minutes=5),
            now + dt.timedelta(days=825),
        ),
    }
    for scenario, (key, certificate) in issued.items():
        write_private(files.key(scenario), _pem_key(key))
        files.cert(scenario).write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


Issued = tuple[ec.EllipticCurvePrivateKey, x509.Certificate]


def _authority(common_name: str, now: dt.datetime) -> Issued:
    """A CA certificate as strict verifiers want it (RFC 5280: critical basic constraints
    and key usage, key identifiers), so that only the scenario's fault is refused."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=800))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def _leaf(
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    common_name: str,
    names: list[x509.GeneralName],
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )
    return key, certificate
