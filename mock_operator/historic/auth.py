"""Who calls the historic web services: the `Caller` of each request, or an X-ErrorCode.

Tried in this order (the first that applies decides):

1. the trusted gateway: HTTP Basic with the mock's master credentials ->
   ``Caller(idnat=None, trusted_gateway=True)``; any other Basic credentials -> 17;
2. a CPS card: a trusted front proxy (a configured address, loopback by default) passes
   ``ssl_client_verify: SUCCESS`` and ``ssl_client_cert`` (URL-encoded PEM, nginx's
   ``$ssl_client_escaped_cert``). The idNat is the subject's ``serialNumber``, or else its
   CN when the CN is an idNat (CPS certificates name their holder's idNat in
   serialNumber). The certificate must be valid now and, when the mock has a CPS
   authority, issued by it. These headers are ignored from any other address;
3. a valid session cookie (`SESSION_COOKIE`);
4. the one-time password, in two requests:
   a. ``IDNAT``, ``PASSWORD``, ``IDCANAL`` (SMS or MAIL): the password is checked and
      the answer is HTTP 401 with ``X-OTP-Required: <channel>`` (and ``WWW-Authenticate:
      OTP channel="<channel>"``); the code "sent" is kept in `HistoricAuth.pending_otps`
      and logged by the mock for tests;
   b. the same request with the ``OTP`` header added (``IDNAT`` and ``OTP`` suffice; a
      ``PASSWORD`` sent again is checked again): the request runs, and the answer sets
      the session cookie (random, HttpOnly, SameSite=Strict, Max-Age);
5. a cookie that is unknown or expired -> 26; no credentials at all -> 8.

Codes: 17 wrong password, unknown idNat, wrong OTP or refused certificate; 22 after
`max_failures` wrong passwords in a row (locked for `lockout` seconds); 44 after
`max_failures` wrong OTPs (that channel blocked for `lockout` seconds); 8 missing or
unknown channel, no pending or expired OTP, unusable certificate.

The mock PSC's login page asks for no password (choosing a persona is the login), so the
historic platform has one mock password for every persona, `persona_password`, shown on
the mock's pages. Secrets are compared in constant time and never logged, except the
mock's deliberate "OTP for tests" line.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import Request

from gateway.mss import historic_proxy
from gateway.mss.historic_proxy import (
    DEFAULT_TRUSTED_PROXIES,
    TrustedProxies,
    proxied_certificate,
)
from gateway.mss.historic_ws import (
    AUTH_ACCOUNT_LOCKED,
    AUTH_CHANNEL_BLOCKED,
    AUTH_IMPOSSIBLE,
    AUTH_INVALID_CREDENTIALS,
    AUTH_INVALID_SESSION,
    MAX_IDNAT,
    SESSION_COOKIE,
    Authenticated,
    AuthRefused,
    Caller,
    HistoricSession,
    OtpRequired,
)
from gateway.runtime.files import write_private
from gateway.runtime.tls import self_signed
from mock_operator.modern.auth import MasterCredentials
from mock_operator.personas import Persona, PersonaBook
from psc_auth.certificates import CardError, CardRefusal, CardVerifier, idnat_of_certificate

log = logging.getLogger(__name__)

CHANNELS = ("SMS", "MAIL")
DEFAULT_PERSONA_PASSWORD = "mssante-test"  # noqa: S105 -- the mock's documented password


@dataclass
class PendingOtp:
    idnat: str
    channel: str
    code: str = field(repr=False)
    expires_at: float
    attempts: int = 0


class CpsAuthority:
    """The mock's CPS certification authority (kept in a directory of the data directory):
    it issues test CPS cards for personas, keeps each card it issued (``issued/``) and its
    revocation list (``cps-ca.crl``, PEM, re-signed at each revocation), and the
    historic services accept only its certificates, unrevoked."""

    CRL_LIFETIME = dt.timedelta(days=30)

    def __init__(
        self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey, directory: Path
    ) -> None:
        self.certificate = certificate
        self._key = key
        self.directory = directory
        self.verifier = CardVerifier([certificate], self.crl_path)

    @property
    def certificate_path(self) -> Path:
        return self.directory / "cps-ca.pem"

    @property
    def crl_path(self) -> Path:
        return self.directory / "cps-ca.crl"

    @classmethod
    def load_or_create(cls, directory: Path) -> CpsAuthority:
        cert_path, key_path = directory / "cps-ca.pem", directory / "cps-ca-key.pem"
        if cert_path.exists() and key_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{key_path}: expected an EC private key")
            authority = cls(x509.load_pem_x509_certificate(cert_path.read_bytes()), key, directory)
        else:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name(
                [
                    x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mock-operator (test only)"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "Mock IGC-Santé CPS test CA"),
                ]
            )
            certificate = self_signed(
                key,
                name,
                days=3650,
                extensions=[(x509.BasicConstraints(ca=True, path_length=0), True)],
            )
            write_private(key_path, _pem_key(key))
            cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
            authority = cls(certificate, key, directory)
        if not authority.crl_path.exists() or authority._crl_due():
            authority._write_crl(authority.revoked_serials())
        return authority

    def issue(
        self,
        persona: Persona,
        *,
        lifetime: dt.timedelta = dt.timedelta(days=365),
        mailboxes: Iterable[str] = (),
    ) -> tuple[bytes, bytes]:
        """(certificate PEM, private key PEM) of a test CPS card for `persona`: subject
        serialNumber = idNat, CN = the holder's name; with `mailboxes`, an organisation
        certificate naming those APP BAL (rfc822Name), `persona` being the organisation."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mock-operator (test only)"),
                x509.NameAttribute(NameOID.SERIAL_NUMBER, persona.idnat),
                x509.NameAttribute(NameOID.COMMON_NAME, persona.display_name),
            ]
        )
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        )
        names = [x509.RFC822Name(m) for m in mailboxes]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        pem = certificate.public_bytes(serialization.Encoding.PEM)
        issued = self.directory / "issued"
        issued.mkdir(exist_ok=True, mode=0o700)
        (issued / f"{persona.idnat}-{certificate.serial_number:x}.pem").write_bytes(pem)
        return pem, _pem_key(key)

    def issued(self, certificate: x509.Certificate) -> bool:
        try:
            certificate.verify_directly_issued_by(self.certificate)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    def issued_to(self, idnat: str) -> list[x509.Certificate]:
        """The cards this authority issued to `idnat` (any state)."""
        issued = self.directory / "issued"
        if not issued.is_dir() or not MAX_IDNAT >= len(idnat) > 0 or "/" in idnat:
            return []
        return [
            x509.load_pem_x509_certificate(path.read_bytes())
            for path in sorted(issued.glob(f"{idnat}-*.pem"))
        ]

    def revoke(self, *certificates: x509.Certificate) -> int:
        """Put `certificates` on the revocation list (re-signed and replaced atomically, so
        a gateway reading it meanwhile sees the old or the new list); how many were new."""
        revoked = self.revoked_serials()
        new = [c.serial_number for c in certificates if c.serial_number not in revoked]
        for serial in new:
            revoked[serial] = dt.datetime.now(dt.UTC)
        self._write_crl(revoked)
        log.info("mock.cps.revoked", extra={"serials": [f"{s:x}" for s in new]})
        return len(new)

    def revoked_serials(self) -> dict[int, dt.datetime]:
        """Serial -> revocation date, from the current list."""
        try:
            crl = x509.load_pem_x509_crl(self.crl_path.read_bytes())
        except (OSError, ValueError):
            return {}
        return {entry.serial_number: entry.revocation_date_utc for entry in crl}

    def _crl_due(self) -> bool:
        try:
            crl = x509.load_pem_x509_crl(self.crl_path.read_bytes())
        except (OSError, ValueError):
            return True
        due = crl.next_update_utc
        return due is None or due - dt.datetime.now(dt.UTC) < self.CRL_LIFETIME / 2

    def _write_crl(self, revoked: Mapping[int, dt.datetime]) -> None:
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + self.CRL_LIFETIME)
        )
        for serial, when in sorted(revoked.items()):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        crl = builder.sign(self._key, hashes.SHA256())
        temporary = self.crl_path.with_name(f".{self.crl_path.name}.{secrets.token_hex(4)}")
        temporary.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        os.replace(temporary, self.crl_path)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class HistoricAuth:
    """Decides the `Caller` of each historic request (see the module doc for the order)."""

    def __init__(
        self,
        personas: PersonaBook,
        *,
        master: MasterCredentials | None = None,
        persona_password: str = DEFAULT_PERSONA_PASSWORD,
        authority: CpsAuthority | None = None,
        trusted_proxies: Iterable[str] = DEFAULT_TRUSTED_PROXIES,
        otp_lifetime: int = 300,
        session_lifetime: int = 3_600,
        max_failures: int = 3,
        lockout: int = 900,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.personas = personas
        self.master = master
        self.persona_password = persona_password
        self.authority = authority
        self.trusted_proxies = TrustedProxies(trusted_proxies)
        self.otp_lifetime = otp_lifetime
        self.session_lifetime = session_lifetime
        self.max_failures = max_failures
        self.lockout = lockout
        self.clock = clock
        self.pending_otps: dict[str, PendingOtp] = {}
        """idNat -> the code last "sent": the mock's UI and tests read it here."""
        self.sessions: dict[str, HistoricSession] = {}
        self._password_failures: dict[str, int] = {}
        self._locked_until: dict[str, float] = {}
        self._blocked_channels: dict[tuple[str, str], float] = {}

    async def authenticate(self, request: Request) -> Authenticated:
        """`HistoricAuthenticator` for the shared HTTP faces (`gateway.mss.historic_http`)."""
        peer = request.client.host if request.client else None
        return self.decide(request.headers, request.cookies, peer)

    def decide(
        self, headers: Mapping[str, str], cookies: Mapping[str, str], peer: str | None
    ) -> Authenticated:
        """The caller of a request with these headers (case-insensitive mapping), cookies
        and peer address; raises `AuthRefused` or `OtpRequired`."""
        software = headers.get("numhomologation") or None
        authorization = headers.get("authorization", "")
        if authorization[:6].lower() == "basic ":
            self._check_master(authorization[6:].strip())
            return Authenticated(Caller(None, software, trusted_gateway=True))
        if "ssl_client_verify" in headers and self.trusted_proxies.trusts(peer):
            idnat = self._certificate_idnat(headers)
            if idnat is not None:
                return Authenticated(Caller(idnat, software))
        elif "ssl_client_verify" in headers or "ssl_client_cert" in headers:
            log.warning("mock.historic.untrusted_cert_headers", extra={"peer": peer})
        token = cookies.get(SESSION_COOKIE)
        now = self.clock()
        session = self.sessions.get(token) if token else None
        if session is not None and session.expires_at > now:
            return Authenticated(Caller(session.idnat, software))
        if session is not None:
            del self.sessions[session.token]
        if "idnat" in headers:
            return self._one_time_password(headers, software, now)
        if token:
            raise AuthRefused(AUTH_INVALID_SESSION, "unknown or expired session cookie")
        raise AuthRefused(AUTH_IMPOSSIBLE, "no credentials")

    def close_session(self, token: str) -> None:
        self.sessions.pop(token, None)

    # -- the trusted gateway -------------------------------------------------------------

    def _check_master(self, encoded: str) -> None:
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthRefused(AUTH_INVALID_CREDENTIALS, "malformed Basic credentials") from None
        if self.master is None or not sep or not self.master.matches(user, password):
            raise AuthRefused(AUTH_INVALID_CREDENTIALS, "invalid Basic credentials")

    # -- CPS certificate ---------------------------------------------------------------

    def _certificate_idnat(self, headers: Mapping[str, str]) -> str | None:
        """The idNat of the certificate the proxy verified; None when it passed none."""
        certificate = proxied_certificate(headers)
        if certificate is None:
            return None
        if self.authority is None:  # no card CA: the proxy's word and the validity only
            now = dt.datetime.now(dt.UTC)
            if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
                raise AuthRefused(AUTH_INVALID_CREDENTIALS, "client certificate expired")
            idnat = idnat_of_certificate(certificate)
            if idnat is None:
                raise AuthRefused(AUTH_IMPOSSIBLE, "no idNat in the client certificate")
            return idnat
        try:
            return str(self.authority.verifier.verify(historic_proxy.der(certificate)).idnat)
        except CardError as exc:
            no_idnat = exc.refusal is CardRefusal.NO_IDNAT
            code = AUTH_IMPOSSIBLE if no_idnat else AUTH_INVALID_CREDENTIALS
            raise AuthRefused(code, f"client certificate refused: {exc.refusal.value}") from None

    # -- one-time password ----------------------------------------------------------------

    def _one_time_password(
        self, headers: Mapping[str, str], software: str | None, now: float
    ) -> Authenticated:
        idnat = headers.get("idnat", "")
        persona = self.personas.by_idnat(idnat) if len(idnat) <= MAX_IDNAT else None
        if persona is None:
            raise AuthRefused(AUTH_INVALID_CREDENTIALS, "unknown idNat or wrong password")
        if self._locked_until.get(idnat, 0.0) > now:
            raise AuthRefused(AUTH_ACCOUNT_LOCKED, "account locked")
        password = headers.get("password")
        if password is not None:
            self._check_password(idnat, password, now)
        otp = headers.get("otp")
        if otp is not None:
            return self._check_otp(idnat, otp, software, now)
        if password is None:
            raise AuthRefused(AUTH_IMPOSSIBLE, "PASSWORD or OTP header missing")
        channel = headers.get("idcanal", "").upper()
        if channel not in CHANNELS:
            raise AuthRefused(AUTH_IMPOSSIBLE, "IDCANAL must be SMS or MAIL")
        if self._blocked_channels.get((idnat, channel), 0.0) > now:
            raise AuthRefused(AUTH_CHANNEL_BLOCKED, f"channel {channel} blocked")
        code = f"{secrets.randbelow(1_000_000):06d}"
        self.pending_otps[idnat] = PendingOtp(idnat, channel, code, now + self.otp_lifetime)
        # The mock's deliberate exception to "never log a secret": tests and users read it.
        log.warning(
            "mock operator, test only: one-time password for idnat %s by %s is %s",
            idnat,
            channel,
            code,
        )
        raise OtpRequired(channel, self.otp_lifetime)

    def _check_password(self, idnat: str, password: str, now: float) -> None:
        if hmac.compare_digest(password.encode(), self.persona_password.encode()):
            self._password_failures.pop(idnat, None)
            return
        failures = self._password_failures.get(idnat, 0) + 1
        if failures >= self.max_failures:
            self._password_failures.pop(idnat, None)
            self._locked_until[idnat] = now + self.lockout
            log.info("mock.historic.account_locked", extra={"idnat": idnat})
            raise AuthRefused(AUTH_ACCOUNT_LOCKED, "account locked")
        self._password_failures[idnat] = failures
        raise AuthRefused(AUTH_INVALID_CREDENTIALS, "unknown idNat or wrong password")

    def _check_otp(self, idnat: str, otp: str, software: str | None, now: float) -> Authenticated:
        pending = self.pending_otps.get(idnat)
        if pending is None or pending.expires_at <= now:
            self.pending_otps.pop(idnat, None)
            raise AuthRefused(AUTH_IMPOSSIBLE, "no one-time password pending")
        if not hmac.compare_digest(otp.encode(), pending.code.encode()):
            pending.attempts += 1
            if pending.attempts >= self.max_failures:
                del self.pending_otps[idnat]
                self._blocked_channels[(idnat, pending.channel)] = now + self.lockout
                raise AuthRefused(AUTH_CHANNEL_BLOCKED, f"channel {pending.channel} blocked")
            raise AuthRefused(AUTH_INVALID_CREDENTIALS, "wrong one-time password")
        del self.pending_otps[idnat]
        for stale in [t for t, s in self.sessions.items() if s.expires_at <= now]:
            del self.sessions[stale]
        session = HistoricSession(secrets.token_urlsafe(32), idnat, now + self.session_lifetime)
        self.sessions[session.token] = session
        log.info("mock.historic.session_opened", extra={"idnat": idnat})
        return Authenticated(Caller(idnat, software), new_session=session)
