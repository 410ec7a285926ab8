"""SASL EXTERNAL in the engine (RFC 4422 appendix A): offered and taken only when the
authenticator takes certificates and the client presented one; the authzid decoded
strictly. Sans-I/O: a fake channel, a fake authenticator."""

from __future__ import annotations

import base64

import pytest

from gateway.imap import commands as c
from gateway.imap.engine import EngineConfig, ImapSession
from gateway.imap.parser import CommandParser
from gateway.imap.session import ExternalCredentials, SessionGrant
from gateway.runtime.login import AuthFailed, ConnectionInfo
from psc_auth.sasl import TokenCredentials

CERTIFICATE = b"0\x82 DER of a client certificate"
TLS = ConnectionInfo(peer="192.0.2.7", secure=True, loopback=False, tls_available=False)


class Channel:
    def __init__(self, certificate: bytes | None, lines: list[bytes] | None = None) -> None:
        self.certificate = certificate
        self.lines = list(lines or [])
        self.out = bytearray()

    async def write(self, data: bytes) -> None:
        self.out += data

    async def read_raw_line(self) -> bytes | None:
        return self.lines.pop(0) if self.lines else None

    async def start_tls(self) -> None:
        raise AssertionError("no TLS here")

    def peer_certificate(self) -> bytes | None:
        return self.certificate

    def take(self) -> list[bytes]:
        lines = [line for line in bytes(self.out).split(b"\r\n") if line]
        self.out.clear()
        return lines


class TokensOnly:
    async def authenticate(
        self, credentials: TokenCredentials, connection: ConnectionInfo
    ) -> SessionGrant:
        raise AuthFailed("authentication", "no")


class Cards(TokensOnly):
    def __init__(self, refuse: AuthFailed | None = None) -> None:
        self.seen: list[ExternalCredentials] = []
        self.refuse = refuse

    async def authenticate_external(
        self, credentials: ExternalCredentials, connection: ConnectionInfo
    ) -> SessionGrant:
        self.seen.append(credentials)
        if self.refuse is not None:
            raise self.refuse
        return SessionGrant(None, frozenset({"read"}), "899700000002", address="bal@x.fr")


def session(authenticator: object, channel: Channel) -> ImapSession:
    return ImapSession(EngineConfig(auth_failure_delay=0), authenticator, channel, TLS)  # type: ignore[arg-type]


def parse(data: bytes) -> c.Command:
    parser = CommandParser()
    parser.receive_data(data)
    event = parser.next_event()
    assert isinstance(event, c.Command), event
    return event


def test_external_is_offered_only_with_a_certificate_and_an_authenticator_for_it():
    assert "AUTH=EXTERNAL" in session(Cards(), Channel(CERTIFICATE)).capabilities()
    assert "AUTH=EXTERNAL" not in session(Cards(), Channel(None)).capabilities()
    assert "AUTH=EXTERNAL" not in session(TokensOnly(), Channel(CERTIFICATE)).capabilities()


@pytest.mark.parametrize(
    ("command", "lines", "authzid"),
    [
        (b"a AUTHENTICATE EXTERNAL =\r\n", [], ""),
        (b"a AUTHENTICATE EXTERNAL " + base64.b64encode(b"bal@x.fr") + b"\r\n", [], "bal@x.fr"),
        (b"a AUTHENTICATE EXTERNAL\r\n", [b""], ""),  # empty response after "+ "
        (b"a AUTHENTICATE external\r\n", [base64.b64encode("dépôt@x.fr".encode())], "dépôt@x.fr"),
    ],
)
async def test_the_certificate_and_the_authzid_reach_the_authenticator(
    command: bytes, lines: list[bytes], authzid: str
):
    cards, channel = Cards(), Channel(CERTIFICATE, lines)
    imap = session(cards, channel)
    await imap.execute(parse(command))
    assert channel.take()[-1].startswith(b"a OK [CAPABILITY ")
    assert cards.seen == [ExternalCredentials(authzid, CERTIFICATE)]
    assert imap.grant is not None
    assert imap.grant.via == "holder"


async def test_without_a_certificate_or_support_external_fails():
    cards, channel = Cards(), Channel(None)
    await session(cards, channel).execute(parse(b"a AUTHENTICATE EXTERNAL =\r\n"))
    assert channel.take() == [
        b"a NO [AUTHENTICATIONFAILED] EXTERNAL needs a TLS client certificate"
    ]
    assert cards.seen == []
    channel = Channel(CERTIFICATE)
    await session(TokensOnly(), channel).execute(parse(b"a AUTHENTICATE EXTERNAL =\r\n"))
    assert channel.take() == [b"a NO [CANNOT] unsupported mechanism"]


@pytest.mark.parametrize(
    "response",
    [
        b"YR==",  # not canonical: bits set after the last byte
        base64.b64encode(b"\xff\xfe"),
        base64.b64encode(b"a\0b"),
        base64.b64encode(b"a" * 1025),
    ],
)
async def test_a_malformed_authzid_is_bad(response: bytes):
    cards, channel = Cards(), Channel(CERTIFICATE)
    await session(cards, channel).execute(parse(b"a AUTHENTICATE EXTERNAL " + response + b"\r\n"))
    (reply,) = channel.take()
    assert reply.startswith(b"a BAD malformed SASL response")
    assert cards.seen == []


async def test_a_refusal_of_the_authenticator_keeps_its_code():
    refused = Cards(AuthFailed("authorization", "not yours"))
    channel = Channel(CERTIFICATE)
    await session(refused, channel).execute(parse(b"a AUTHENTICATE EXTERNAL =\r\n"))
    assert channel.take() == [b"a NO [AUTHORIZATIONFAILED] not yours"]
