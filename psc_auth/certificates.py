"""CPS cards and organisation certificates: a client certificate in, a `CardHolder` out.

A `CardVerifier` holds the trusted card CAs (the IGC Santé chain; the mock's CPS CA in
the demo) and, when configured, a revocation list file, re-read whenever it changes
(`mock-operator card PERSONA --revoke` rewrites it under a running gateway). It does not
trust the TLS layer's checks alone: each login re-checks issuer, validity, usage and
revocation, and says why a certificate is refused (`CardRefusal`). Nothing here touches a
socket; the only I/O is a ``stat`` of the CRL file per check.

Mapping (DOMAIN.md §2: personal cards; APP BAL "use a client certificate instead"):

* an **organisation certificate** names the application (APP) BAL(s) it opens in
  ``rfc822Name`` subject alternative names (or, failing those, subject ``emailAddress``),
  and its organisation's identifier (an idNat: FINESS, SIRET, ...) in subject
  ``serialNumber``: it opens the BAL it names and nothing else;
* any other certificate is a **person's card**: the holder's idNat is subject
  ``serialNumber``, else a CN that is an idNat (CPS certificates name the idNat in
  serialNumber); what that person opens is the delegation registry's decision.

A certificate that names no idNat is refused (`NO_IDNAT`).
"""

from __future__ import annotations

import datetime as dt
import enum
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from psc_auth.errors import IdNatError, PscAuthError
from psc_auth.identity import AuthMeans, Identity
from psc_auth.idnat import IdNat

MAX_CERTIFICATE_BYTES = 16 * 1024  # a card certificate is ~1 KiB; a chain is not taken
MAX_CRL_BYTES = 16 * 1024 * 1024
MAX_ADDRESSES = 16  # BAL named by one organisation certificate
MAX_ADDRESS_LENGTH = 254

_CRL_BEGIN = b"-----BEGIN X509 CRL-----"


class CardRefusal(enum.Enum):
    """Why a client certificate was refused; the values appear in logs and audit events."""

    UNREADABLE = "unreadable"
    UNKNOWN_ISSUER = "unknown-issuer"
    BAD_SIGNATURE = "bad-signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    NOT_CLIENT_AUTH = "not-client-auth"
    REVOKED = "revoked"
    NO_REVOCATION_LIST = "no-revocation-list"
    NO_IDNAT = "no-idnat"


class CardError(PscAuthError):
    """A certificate refused: `refusal` says why, `idnat` whose card it was when that could
    be read (for the audit trail), `detail` is safe to log."""

    def __init__(self, refusal: CardRefusal, detail: str = "", *, idnat: str | None = None):
        self.refusal = refusal
        self.detail = detail
        self.idnat = idnat
        super().__init__(f"{refusal.value}: {detail}" if detail else refusal.value)


HolderKind = Literal["person", "organisation"]


@dataclass(frozen=True, slots=True)
class CardHolder:
    """Who a verified certificate names: a person (`idnat`), or an organisation
    (`idnat` = its identifier) allowed on the APP BAL in `mailboxes` only."""

    kind: HolderKind
    idnat: IdNat
    name: str
    serial: int
    not_after: dt.datetime
    mailboxes: tuple[str, ...] = ()
    issuer: str = field(default="", compare=False)

    @property
    def is_organisation(self) -> bool:
        return self.kind == "organisation"

    def identity(self) -> Identity:
        """The `Identity` the delegation registry decides on: no PSC token behind it."""
        return Identity(
            idnat=self.idnat,
            subject=f"card:{self.serial:x}",
            given_name="",
            family_name=self.name,
            professions=(),
            auth_means=AuthMeans.CARD,
            expires_at=self.not_after,
            token_id=f"card:{self.serial:x}",
            client_id="",
            claims={},
        )


def idnat_of_certificate(certificate: x509.Certificate) -> str | None:
    """The holder's idNat: subject serialNumber, else a CN that is an idNat."""
    subject = certificate.subject
    candidates = [
        *subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER),
        *subject.get_attributes_for_oid(NameOID.COMMON_NAME),
    ]
    for attribute in candidates:
        value = attribute.value if isinstance(attribute.value, str) else ""
        try:
            IdNat.parse(value)
        except IdNatError:
            continue
        return value
    return None


def mailboxes_of_certificate(certificate: x509.Certificate) -> tuple[str, ...]:
    """The BAL an organisation certificate names: rfc822Name SAN, else subject emailAddress."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = list(san.value.get_values_for_type(x509.RFC822Name))
    except x509.ExtensionNotFound:
        names = []
    if not names:
        names = [
            a.value
            for a in certificate.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)
            if isinstance(a.value, str)
        ]
    found: list[str] = []
    for name in names[:MAX_ADDRESSES]:
        address = name.strip().lower()
        if "@" in address and len(address) <= MAX_ADDRESS_LENGTH and address not in found:
            found.append(address)
    return tuple(found)


def _name_of(certificate: x509.Certificate) -> str:
    for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME):
        for attribute in certificate.subject.get_attributes_for_oid(oid):
            if isinstance(attribute.value, str):
                return attribute.value[:256]
    return ""


class RevocationList:
    """The CRL file, re-read when its size or modification time changes. Each CRL in it
    (PEM, several allowed, or one DER) must be signed by the trusted CA it names."""

    def __init__(self, path: Path, authorities: Sequence[x509.Certificate]) -> None:
        self.path = path
        self._authorities = authorities
        self._seen: tuple[int, int, int] | None = None
        self._lists: dict[x509.Name, x509.CertificateRevocationList] = {}
        self._serials: dict[x509.Name, frozenset[int]] = {}  # built on demand, per list read
        self._error: str | None = "not read yet"

    def current(self, issuer: x509.Name) -> x509.CertificateRevocationList:
        """The CRL of `issuer`, or `CardError(NO_REVOCATION_LIST)`: missing, unreadable,
        unsigned or out of date means no card of that CA is taken."""
        self._refresh()
        if self._error is not None:
            raise CardError(CardRefusal.NO_REVOCATION_LIST, self._error)
        crl = self._lists.get(issuer)
        if crl is None:
            raise CardError(CardRefusal.NO_REVOCATION_LIST, "no revocation list of this CA")
        return crl

    def revoked(self, issuer: x509.Name, now: dt.datetime) -> frozenset[int]:
        """The serials `issuer` revoked, from the list as it is now (read again if the file
        changed), or `CardError(NO_REVOCATION_LIST)` as `current` says, or when out of date
        at `now`. Kept until the file changes: checking many open sessions costs one
        ``stat`` and a set lookup each, not a walk of the list per session."""
        crl = self.current(issuer)
        if crl.next_update_utc is not None and crl.next_update_utc < now:
            raise CardError(CardRefusal.NO_REVOCATION_LIST, "revocation list out of date")
        serials = self._serials.get(issuer)
        if serials is None:
            serials = self._serials[issuer] = frozenset(entry.serial_number for entry in crl)
        return serials

    def _refresh(self) -> None:
        try:
            stat = os.stat(self.path)
        except OSError:
            self._seen, self._lists, self._error = None, {}, "revocation list file missing"
            self._serials = {}
            return
        seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if seen == self._seen:
            return
        self._seen = seen
        self._serials = {}
        try:
            if stat.st_size > MAX_CRL_BYTES:
                raise ValueError("revocation list file too large")
            self._lists = self._parse(self.path.read_bytes())
            self._error = None
        except (OSError, ValueError) as exc:
            self._lists, self._error = {}, f"revocation list unusable: {exc}"

    def _parse(self, data: bytes) -> dict[x509.Name, x509.CertificateRevocationList]:
        if _CRL_BEGIN in data:
            parts = [_CRL_BEGIN + chunk for chunk in data.split(_CRL_BEGIN)[1:]]
            crls = [x509.load_pem_x509_crl(part) for part in parts]
        else:
            crls = [x509.load_der_x509_crl(data)]
        found: dict[x509.Name, x509.CertificateRevocationList] = {}
        for crl in crls:
            authority = next((a for a in self._authorities if a.subject == crl.issuer), None)
            if authority is None:
                continue  # another CA's list: not ours to use
            if not crl.is_signature_valid(authority.public_key()):  # type: ignore[arg-type]
                raise ValueError("a revocation list's signature does not verify")
            found[crl.issuer] = crl
        return found


class CardVerifier:
    """Verifies client certificates against trusted CAs and their revocation list.

    `crl_file` None: no revocation checking (tests and setups without one say so in
    their configuration); a configured file that is missing refuses every card."""

    def __init__(
        self,
        authorities: Iterable[x509.Certificate],
        crl_file: Path | None = None,
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.authorities = tuple(authorities)
        if not self.authorities:
            raise ValueError("a card verifier needs at least one trusted CA")
        self.revocations = RevocationList(crl_file, self.authorities) if crl_file else None
        self.clock = clock

    @classmethod
    def from_files(cls, ca_file: Path, crl_file: Path | None = None) -> CardVerifier:
        """The CAs of a PEM bundle, and the CRL file (read at each check, when changed)."""
        return cls(x509.load_pem_x509_certificates(ca_file.read_bytes()), crl_file)

    def ca_pem(self) -> str:
        """The trusted CAs as PEM, for a TLS context's `load_verify_locations(cadata=)`."""
        return "".join(a.public_bytes(Encoding.PEM).decode("ascii") for a in self.authorities)

    def verify(self, der: bytes) -> CardHolder:
        """The holder of a DER client certificate, or `CardError` saying why not."""
        if not der or len(der) > MAX_CERTIFICATE_BYTES:
            raise CardError(CardRefusal.UNREADABLE, "no certificate, or one too large")
        try:
            certificate = x509.load_der_x509_certificate(der)
            idnat = idnat_of_certificate(certificate)
            _ = certificate.extensions  # parsed lazily: a malformed one fails here
        except ValueError:
            raise CardError(CardRefusal.UNREADABLE, "not a DER X.509 certificate") from None
        authority = self._issuer(certificate)
        now = self.clock()
        if now < certificate.not_valid_before_utc:
            raise CardError(CardRefusal.NOT_YET_VALID, idnat=idnat)
        if now > certificate.not_valid_after_utc or now > authority.not_valid_after_utc:
            raise CardError(CardRefusal.EXPIRED, idnat=idnat)
        self._check_usage(certificate, idnat)
        if self.revocations is not None:
            crl = self.revocations.current(authority.subject)
            if crl.next_update_utc is not None and crl.next_update_utc < now:
                raise CardError(CardRefusal.NO_REVOCATION_LIST, "revocation list out of date")
            if crl.get_revoked_certificate_by_serial_number(certificate.serial_number):
                raise CardError(CardRefusal.REVOKED, idnat=idnat)
        if idnat is None:
            raise CardError(CardRefusal.NO_IDNAT, "no idNat in serialNumber nor CN")
        mailboxes = mailboxes_of_certificate(certificate)
        return CardHolder(
            kind="organisation" if mailboxes else "person",
            idnat=IdNat.parse(idnat),
            name=_name_of(certificate),
            serial=certificate.serial_number,
            not_after=certificate.not_valid_after_utc,
            mailboxes=mailboxes,
            issuer=certificate.issuer.rfc4514_string(),
        )

    def standing(self) -> Callable[[CardHolder], CardRefusal | None]:
        """A check of cards verified earlier (open sessions), against the revocation list
        as it is now and the clock: None while a card stands, else why not (`EXPIRED`,
        `REVOKED`, `NO_REVOCATION_LIST`, `UNKNOWN_ISSUER` for a CA no longer trusted).
        The list file is looked at once per check made, not once per card."""
        now = self.clock()
        authorities = {a.subject.rfc4514_string(): a for a in self.authorities}
        revocations = self.revocations
        revoked: dict[str, frozenset[int] | CardRefusal] = {}

        def serials(authority: x509.Certificate) -> frozenset[int] | CardRefusal:
            if revocations is None:
                return frozenset()
            try:
                return revocations.revoked(authority.subject, now)
            except CardError as exc:
                return exc.refusal

        def check(card: CardHolder) -> CardRefusal | None:
            authority = authorities.get(card.issuer)
            if authority is None:
                return CardRefusal.UNKNOWN_ISSUER
            if now > card.not_after or now > authority.not_valid_after_utc:
                return CardRefusal.EXPIRED
            found = revoked.get(card.issuer)
            if found is None:
                found = revoked[card.issuer] = serials(authority)
            if isinstance(found, CardRefusal):
                return found
            return CardRefusal.REVOKED if card.serial in found else None

        return check

    def _issuer(self, certificate: x509.Certificate) -> x509.Certificate:
        for authority in self.authorities:
            if authority.subject != certificate.issuer:
                continue
            try:
                certificate.verify_directly_issued_by(authority)
            except InvalidSignature:
                raise CardError(CardRefusal.BAD_SIGNATURE) from None
            except (ValueError, TypeError):
                continue
            return authority
        raise CardError(CardRefusal.UNKNOWN_ISSUER)

    @staticmethod
    def _check_usage(certificate: x509.Certificate, idnat: str | None) -> None:
        """A client authentication certificate: no CA, clientAuth when usages are listed,
        digitalSignature when key usages are."""
        extensions = certificate.extensions
        try:
            if extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                raise CardError(CardRefusal.NOT_CLIENT_AUTH, "a CA certificate", idnat=idnat)
        except x509.ExtensionNotFound:
            pass
        try:
            usages = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
                raise CardError(CardRefusal.NOT_CLIENT_AUTH, "no clientAuth usage", idnat=idnat)
        except x509.ExtensionNotFound:
            pass
        try:
            key_usage = extensions.get_extension_for_class(x509.KeyUsage).value
            if not key_usage.digital_signature:
                raise CardError(CardRefusal.NOT_CLIENT_AUTH, "no digitalSignature", idnat=idnat)
        except x509.ExtensionNotFound:
            pass
