"""AUTH XOAUTH2 / OAUTHBEARER / PLAIN for aiosmtpd, decided by a `LoginAuthority`, and
AUTH EXTERNAL with a TLS client certificate (`CardAuthMixin`).

aiosmtpd calls `auth_<MECHANISM>` on the handler; this mixin decodes the SASL response with
`psc_auth.sasl` and hands the credentials to the same authenticator the IMAP side uses, so
both protocols grant exactly the same. The grant ends up in `session.auth_data`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol, cast

from aiosmtpd.smtp import MISSING, SMTP, AuthResult

from gateway.imap.session import ExternalCredentials, decode_external
from gateway.runtime.login import AuthFailed, ConnectionInfo, Login, LoginAuthority
from gateway.runtime.net import Peer
from gateway.runtime.protocols import conforms
from gateway.runtime.smtp_server import TokenSMTP
from psc_auth.errors import SaslError
from psc_auth.sasl import Mechanism, TokenCredentials, decode, decode_base64

log = logging.getLogger(__name__)

ENCRYPTION_REQUIRED = "538 5.7.11 Encryption required for requested authentication mechanism"
INVALID = "535 5.7.8 Authentication credentials invalid"
NOT_ALLOWED = "535 5.7.8 Authentication failed: {}"
TEMPORARY = "454 4.7.0 Temporary authentication failure: {}"


def grant_of(session: Any) -> Login | None:
    """The session's login, if it has one (`conforms`: asked at every SMTP command)."""
    data = getattr(session, "auth_data", None)
    return cast(Login, data) if conforms(data, Login) else None


async def _sasl_response(server: SMTP, args: list[str]) -> bytes | None:
    """The client's SASL response: the initial one on the AUTH line, else asked for with
    an empty 334; None when the client cancelled (aiosmtpd has answered it)."""
    if len(args) == 2:
        return decode_base64(args[1])
    answer = await server.challenge_auth("", encode_to_b64=False)
    return None if answer is MISSING else bytes(answer)


def connection_info(server: SMTP, *, software: str | None = None) -> ConnectionInfo:
    """Who is on an SMTP connection: the client (a trusted proxy's header read), the
    address it connected to, whether TLS protects it."""
    session = server.session
    assert session is not None
    peer = Peer.of(session.peer)
    local = server.local if isinstance(server, TokenSMTP) else None
    return ConnectionInfo(
        peer=peer.address,
        port=peer.port,
        local_address=local.address if local else "",
        local_port=local.port if local else 0,
        secure=server._tls_protocol is not None,
        loopback=peer.loopback,
        tls_available=False,
        software=software,
    )


class TokenAuthMixin:
    """Mix into an aiosmtpd handler; create the SMTP server with `auth_require_tls=False`
    and `auth_exclude_mechanism=["LOGIN"]`: TLS is enforced here, loopback excepted."""

    authenticator: LoginAuthority
    auth_failure_delay: float = 1.0

    async def handle_EHLO(
        self, server: SMTP, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        """aiosmtpd's reply, with ``DSN`` when the server takes RFC 3461's parameters
        (before AUTH as after: EHLO comes first)."""
        session.host_name = hostname
        if isinstance(server, TokenSMTP) and server.dsn and responses:
            responses.insert(len(responses) - 1, "250-DSN")  # the last line is "250 HELP"
        return responses

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._token_auth(server, args, Mechanism.XOAUTH2)

    async def auth_OAUTHBEARER(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._token_auth(server, args, Mechanism.OAUTHBEARER)

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._token_auth(server, args, Mechanism.PLAIN)

    async def _token_auth(self, server: SMTP, args: list[str], mechanism: Mechanism) -> AuthResult:
        session = server.session
        assert session is not None
        secure = server._tls_protocol is not None
        if not secure and not Peer.of(session.peer).loopback:
            await server.push(ENCRYPTION_REQUIRED)
            return AuthResult(success=False, handled=True)
        try:
            blob = await _sasl_response(server, args)
            if blob is None:
                return AuthResult(success=False, handled=True)
            credentials = decode(mechanism, blob)
        except SaslError as exc:
            await server.push(f"501 5.5.2 Malformed SASL response: {exc}")
            return AuthResult(success=False, handled=True)
        connection = connection_info(server)
        try:
            grant = await self._authenticate(server, credentials, connection)
        except AuthFailed as failure:
            return await self._refuse(server, failure, mechanism)
        log.info("smtp.login", extra={"bal": grant.mailbox, "actor": grant.actor})
        if isinstance(server, TokenSMTP):
            server.logged_in()  # no longer held to the caps of connections before login
        return AuthResult(success=True, auth_data=grant)

    async def _authenticate(
        self, server: SMTP, credentials: TokenCredentials, connection: ConnectionInfo
    ) -> Login:
        """Who logs in (a handler may add its own conditions: `AuthFailed` refuses)."""
        return await self.authenticator.authenticate(credentials, connection)

    async def _refuse(
        self, server: SMTP, failure: AuthFailed, mechanism: Mechanism | None
    ) -> AuthResult:
        log.info("smtp.login_refused", extra={"reason": failure.kind, "detail": failure.text})
        # handled=False: aiosmtpd then sends `message` (with its default, nothing is sent).
        if failure.kind in ("unavailable", "throttled", "limit"):
            return AuthResult(success=False, handled=False, message=TEMPORARY.format(failure.text))
        if failure.challenge and mechanism not in (None, Mechanism.PLAIN):
            # RFC 7628 §3.2.3: the JSON error as a 334 challenge; the client answers ^A.
            await server.challenge_auth(failure.challenge)
        if self.auth_failure_delay:
            await asyncio.sleep(self.auth_failure_delay)
        if failure.kind == "authorization":
            return AuthResult(
                success=False, handled=False, message=NOT_ALLOWED.format(failure.text)
            )
        return AuthResult(success=False, handled=False, message=INVALID)


NO_CERTIFICATE = "535 5.7.8 Authentication failed: EXTERNAL needs a TLS client certificate"


def peer_certificate(session: Any) -> bytes | None:
    """The client certificate (DER) TLS verified on this session; None without one."""
    info = getattr(session, "ssl", None)
    ssl_object = info.get("ssl_object") if isinstance(info, dict) else None
    if ssl_object is None:
        return None
    certificate: bytes | None = ssl_object.getpeercert(binary_form=True)
    return certificate


class CardAuthority(LoginAuthority, Protocol):
    """A `LoginAuthority` that also takes TLS client certificates (SASL EXTERNAL)."""

    async def authenticate_external(
        self, credentials: ExternalCredentials, connection: ConnectionInfo
    ) -> Login: ...


class CardAuthMixin(TokenAuthMixin):
    """AUTH EXTERNAL (RFC 4954, RFC 4422 appendix A): the authzid names the BAL (empty, or
    ``AUTH EXTERNAL =``: the certificate holder's own), the certificate is the TLS
    session's. Advertised in EHLO only to a client that presented a certificate."""

    authenticator: CardAuthority

    async def handle_EHLO(
        self, server: SMTP, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        responses = await super().handle_EHLO(server, session, envelope, hostname, responses)
        if peer_certificate(session) is not None:
            return responses
        return [_without_external(line) for line in responses]

    async def auth_EXTERNAL(self, server: SMTP, args: list[str]) -> AuthResult:
        session = server.session
        assert session is not None
        certificate = peer_certificate(session)
        if certificate is None:
            return await self._refuse(
                server,
                AuthFailed("authentication", "EXTERNAL needs a TLS client certificate"),
                None,
            )
        try:
            blob = await _sasl_response(server, args)
            if blob is None:
                return AuthResult(success=False, handled=True)
            authzid = decode_external(blob)
        except SaslError as exc:
            await server.push(f"501 5.5.2 Malformed SASL response: {exc}")
            return AuthResult(success=False, handled=True)
        connection = connection_info(server)
        try:
            grant = await self._authenticate_card(
                server, ExternalCredentials(authzid, certificate), connection
            )
        except AuthFailed as failure:
            return await self._refuse(server, failure, None)
        log.info("smtp.card_login", extra={"bal": grant.mailbox, "actor": grant.actor})
        if isinstance(server, TokenSMTP):
            server.logged_in()
        return AuthResult(success=True, auth_data=grant)

    async def _authenticate_card(
        self, server: SMTP, credentials: ExternalCredentials, connection: ConnectionInfo
    ) -> Login:
        return await self.authenticator.authenticate_external(credentials, connection)


def _without_external(line: str) -> str:
    if not line[4:].upper().startswith("AUTH "):
        return line
    words = [w for w in line[4:].split() if w.upper() != "EXTERNAL"]
    return line[:4] + " ".join(words)
