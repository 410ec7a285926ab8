"""`CardVerifier` on bytes: which certificates map to whom, and every refusal's reason."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from mock_operator.historic.auth import CpsAuthority
from mock_operator.personas import Persona, default_personas
from psc_auth.certificates import (
    MAX_CERTIFICATE_BYTES,
    CardError,
    CardRefusal,
    CardVerifier,
    idnat_of_certificate,
)
from psc_auth.identity import AuthMeans

NOW = dt.datetime.now(dt.UTC)


def persona(key: str = "dr-martin") -> Persona:
    found = default_personas().get(key)
    assert found is not None
    return found


def der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


@pytest.fixture
def authority(tmp_path: Path) -> CpsAuthority:
    return CpsAuthority.load_or_create(tmp_path / "cps")


@pytest.fixture
def verifier(authority: CpsAuthority) -> CardVerifier:
    return CardVerifier([authority.certificate], authority.crl_path)


def refusal(verifier: CardVerifier, certificate: bytes) -> CardRefusal:
    with pytest.raises(CardError) as caught:
        verifier.verify(certificate)
    return caught.value.refusal


def test_a_person_card_maps_to_its_holder(authority: CpsAuthority, verifier: CardVerifier):
    pem, _ = authority.issue(persona())
    holder = verifier.verify(der(pem))
    assert (holder.kind, str(holder.idnat), holder.name) == (
        "person",
        "899700000001",
        "Claire MARTIN",
    )
    assert holder.mailboxes == ()
    identity = holder.identity()
    assert identity.auth_means is AuthMeans.CARD
    assert str(identity.idnat) == "899700000001"
    assert identity.display_name == "Claire MARTIN"


def test_an_organisation_certificate_names_its_app_bal(
    authority: CpsAuthority, verifier: CardVerifier
):
    org = dataclasses.replace(persona(), idnat="3750000001", given_name="", family_name="X")
    pem, _ = authority.issue(org, mailboxes=("Secretariat@Clinique-X.mssante.fr",))
    holder = verifier.verify(der(pem))
    assert holder.is_organisation
    assert holder.mailboxes == ("secretariat@clinique-x.mssante.fr",)
    assert str(holder.idnat) == "3750000001"


def test_refusals_say_why(authority: CpsAuthority, verifier: CardVerifier, tmp_path: Path):
    stranger = CpsAuthority.load_or_create(tmp_path / "stranger")  # same subject, other key
    foreign, _ = stranger.issue(persona())
    assert refusal(verifier, der(foreign)) is CardRefusal.BAD_SIGNATURE
    other_name = _ca("Another CA")
    assert refusal(verifier, _leaf(other_name, "899700000001")) is CardRefusal.UNKNOWN_ISSUER
    expired, _ = authority.issue(persona(), lifetime=-dt.timedelta(minutes=1))
    assert refusal(verifier, der(expired)) is CardRefusal.EXPIRED
    no_idnat, _ = authority.issue(dataclasses.replace(persona(), idnat="nobody"))
    assert refusal(verifier, der(no_idnat)) is CardRefusal.NO_IDNAT
    assert refusal(verifier, b"") is CardRefusal.UNREADABLE
    assert refusal(verifier, b"\x30\x82garbage") is CardRefusal.UNREADABLE
    assert refusal(verifier, b"\x30" * (MAX_CERTIFICATE_BYTES + 1)) is CardRefusal.UNREADABLE
    # the CA's own certificate is no card
    ca = authority.certificate.public_bytes(serialization.Encoding.DER)
    assert refusal(verifier, ca) in (CardRefusal.NOT_CLIENT_AUTH, CardRefusal.BAD_SIGNATURE)


def test_usage_other_than_client_auth_is_refused(tmp_path: Path):
    ca_key, ca = _ca("Usage CA")
    verifier = CardVerifier([ca])
    server_only = _leaf((ca_key, ca), "899700000001", usage=ExtendedKeyUsageOID.SERVER_AUTH)
    assert refusal(verifier, server_only) is CardRefusal.NOT_CLIENT_AUTH
    assert str(verifier.verify(_leaf((ca_key, ca), "899700000001")).idnat) == "899700000001"
    future = _leaf((ca_key, ca), "899700000001", start=NOW + dt.timedelta(days=1))
    assert refusal(verifier, future) is CardRefusal.NOT_YET_VALID


def test_revocation_list_is_read_again_when_it_changes(
    authority: CpsAuthority, verifier: CardVerifier
):
    pem, _ = authority.issue(persona())
    other, _ = authority.issue(persona("dr-dupont"))
    assert verifier.verify(der(pem))
    assert authority.revoke(x509.load_pem_x509_certificate(pem)) == 1
    assert refusal(verifier, der(pem)) is CardRefusal.REVOKED
    assert str(verifier.verify(der(other)).idnat) == persona("dr-dupont").idnat
    assert authority.revoke(x509.load_pem_x509_certificate(pem)) == 0  # already on it
    assert [c.serial_number for c in authority.issued_to(persona().idnat)] == [
        x509.load_pem_x509_certificate(pem).serial_number
    ]


def test_a_missing_or_forged_revocation_list_refuses_every_card(
    authority: CpsAuthority, verifier: CardVerifier, tmp_path: Path
):
    pem, _ = authority.issue(persona())
    saved = authority.crl_path.read_bytes()
    authority.crl_path.unlink()
    assert refusal(verifier, der(pem)) is CardRefusal.NO_REVOCATION_LIST
    # a list signed by someone else (same issuer name): refused, not trusted as empty
    stranger = CpsAuthority.load_or_create(tmp_path / "stranger")
    authority.crl_path.write_bytes(stranger.crl_path.read_bytes())
    assert refusal(verifier, der(pem)) is CardRefusal.NO_REVOCATION_LIST
    authority.crl_path.write_bytes(b"not a CRL")
    assert refusal(verifier, der(pem)) is CardRefusal.NO_REVOCATION_LIST
    authority.crl_path.write_bytes(saved)
    os.utime(authority.crl_path, ns=(1, 1))  # a change the stat sees, whatever the clock
    assert verifier.verify(der(pem))


def test_an_out_of_date_revocation_list_refuses(authority: CpsAuthority):
    pem, _ = authority.issue(persona())
    later = CardVerifier(
        [authority.certificate],
        authority.crl_path,
        clock=lambda: NOW + CpsAuthority.CRL_LIFETIME + dt.timedelta(days=1),
    )
    assert refusal(later, der(pem)) is CardRefusal.NO_REVOCATION_LIST


def test_idnat_from_serial_number_then_cn():
    key, ca = _ca("CN CA")
    assert idnat_of_certificate(x509.load_der_x509_certificate(_leaf((key, ca), None))) is None
    cn_only = _leaf((key, ca), None, cn="899700000002")
    assert idnat_of_certificate(x509.load_der_x509_certificate(cn_only)) == "899700000002"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_any_bytes_give_a_holder_or_a_card_error(data: bytes):
    _key, ca = _CA
    verifier = CardVerifier([ca])
    with pytest.raises(CardError) as caught:  # random bytes signed by our CA: never
        verifier.verify(data)
    assert isinstance(caught.value.refusal, CardRefusal)


# -- builders -----------------------------------------------------------------------------


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


_CA = _ca("Fuzz CA")


def _leaf(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    idnat: str | None,
    *,
    cn: str = "Someone",
    usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.CLIENT_AUTH,
    start: dt.datetime | None = None,
) -> bytes:
    ca_key, ca_cert = ca
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if idnat is not None:
        attributes.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, idnat))
    key = ec.generate_private_key(ec.SECP256R1())
    begins = start or NOW - dt.timedelta(minutes=5)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(begins)
        .not_valid_after(begins + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.DER)
