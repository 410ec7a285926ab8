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
import ipaddress
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import Request

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
from psc_auth.errors import IdNatError
from psc_auth.idnat import IdNat

log = logging.getLogger(__name__)

CHANNELS = ("SMS", "MAIL")
DEFAULT_PERSONA_PASSWORD = "mssante-test"  # noqa: S105 -- the mock's documented password
DEFAULT_TRUSTED_PROXIES = ("127.0.0.0/8", "::1/128")
MAX_CERT_HEADER = 16 * 1024


@dataclass
class PendingOtp:
    idnat: str
    channel: str
    code: str = field(repr=False)
    expires_at: float
    attempts: int = 0


class CpsAuthority:
    """The mock's CPS certification authority (kept in the data directory): it issues test
    CPS certificates for personas, and the historic services accept only its certificates."""

    def __init__(self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.certificate = certificate
        self._key = key

    @classmethod
    def load_or_create(cls, directory: Path) -> CpsAuthority:
        cert_path, key_path = directory / "cps-ca.pem", directory / "cps-ca-key.pem"
        if cert_path.exists() and key_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{key_path}: expected an EC private key")
            return cls(x509.load_pem_x509_certificate(cert_path.read_bytes()), key)
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
            key, name, days=3650, extensions=[(x509.BasicConstraints(ca=True, path_length=0), True)]
        )
        write_private(key_path, _pem_key(key))
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return cls(certificate, key)

    def issue(
        self, persona: Persona, *, lifetime: dt.timedelta = dt.timedelta(days=365)
    ) -> tuple[bytes, bytes]:
        """(certificate PEM, private key PEM) of a test CPS card for `persona`: subject
        serialNumber = idNat, CN = the holder's name."""
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
        certificate = (
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
            .sign(self._key, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.PEM), _pem_key(key)

    def issued(self, certificate: x509.Certificate) -> bool:
        try:
            certificate.verify_directly_issued_by(self.certificate)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
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
        self.trusted_proxies = tuple(ipaddress.ip_network(p) for p in trusted_proxies)
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
        if "ssl_client_verify" in headers and self._from_trusted_proxy(peer):
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

    def _from_trusted_proxy(self, peer: str | None) -> bool:
        if peer is None:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.trusted_proxies)

    def _certificate_idnat(self, headers: Mapping[str, str]) -> str | None:
        """The idNat of the certificate the proxy verified; None when it passed none."""
        verify = headers.get("ssl_client_verify", "")
        if verify == "NONE":
            return None
        if verify != "SUCCESS":
            raise AuthRefused(AUTH_INVALID_CREDENTIALS, "client certificate not verified")
        raw = headers.get("ssl_client_cert", "")
        if not raw or len(raw) > MAX_CERT_HEADER:
            raise AuthRefused(AUTH_IMPOSSIBLE, "no usable client certificate")
        try:
            certificate = x509.load_pem_x509_certificate(unquote(raw).encode())
        except ValueError:
            raise AuthRefused(AUTH_IMPOSSIBLE, "unreadable client certificate") from None
        now = dt.datetime.now(dt.UTC)
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            raise AuthRefused(AUTH_INVALID_CREDENTIALS, "client certificate expired")
        if self.authority is not None and not self.authority.issued(certificate):
            raise AuthRefused(AUTH_INVALID_CREDENTIALS, "client certificate of another CA")
        idnat = idnat_of_certificate(certificate)
        if idnat is None:
            raise AuthRefused(AUTH_IMPOSSIBLE, "no idNat in the client certificate")
        return idnat

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
