"""Hostile clients on the TLS scenario ports: garbage instead of a ClientHello, silence,
a STARTTLS never followed. None may leave state behind in the mock, nor make a cert-* check
pass or fail: only a client that got the certificate and refused it, or went on, decides."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import pytest

from mock_operator.conformance import observatory
from mock_operator.conformance.scenario_certs import SCENARIOS
from mock_operator.server import MockOperator
from tests.support.conformance import campaign_results, open_campaign
from tests.support.waiting import eventually, until

GARBAGE = b"\x16\x03\x01\x00\x05hello" + b"GET / HTTP/1.1\r\n\r\n" * 4
KEYS = {"expired": "cert-expired", "wrong-name": "cert-name", "untrusted-ca": "cert-untrusted"}


async def campaign(mock: MockOperator) -> str:
    value: str = (await open_campaign(mock, software="Sonde", version=""))["id"]
    return value


def port(mock: MockOperator, scenario: str, interface: str) -> int:
    assert mock.scenarios is not None
    return mock.scenarios.ports()[scenario][interface]


async def starttls_then(mock: MockOperator, scenario: str, interface: str, send: bytes) -> None:
    """STARTTLS accepted, then `send` instead of a ClientHello (nothing: silence), then
    read until the server hangs up or a moment passes, and leave."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port(mock, scenario, interface))
    try:
        await reader.readline()
        if interface == "imap":
            writer.write(b"a1 STARTTLS\r\n")
            assert (await reader.readline()).startswith(b"a1 OK")
        else:
            writer.write(b"EHLO sonde\r\n")
            while not (await reader.readline()).startswith(b"250 "):
                pass
            writer.write(b"STARTTLS\r\n")
            assert (await reader.readline()).startswith(b"220")
        if send:
            writer.write(send)
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(0.5 if not send else 10):
                while await reader.read(4096):
                    pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


async def silent(mock: MockOperator, scenario: str, interface: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port(mock, scenario, interface))
    await reader.readline()  # greeted: the session is open, and the client says nothing
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


def quiet(mock: MockOperator) -> bool:
    """No scenario session open, nothing held by the observatory for a connection."""
    assert mock.scenarios is not None
    assert mock.observatory is not None
    sessions = sum(e.imap.open_sessions + e.smtp.open_sessions for e in mock.scenarios.endpoints)
    return sessions == 0 and not mock.observatory._pending and not mock.observatory._owner


async def test_garbage_and_silence_decide_nothing_and_leave_nothing(
    mock_op: MockOperator,
) -> None:
    campaign_id = await campaign(mock_op)
    for scenario in SCENARIOS:
        for interface in ("imap", "smtp"):
            await starttls_then(mock_op, scenario, interface, GARBAGE)
            await starttls_then(mock_op, scenario, interface, b"")
            await silent(mock_op, scenario, interface)
    await until(lambda: quiet(mock_op), "scenario connections gone, nothing held")
    found = await campaign_results(mock_op, campaign_id)
    for key in KEYS.values():
        assert found[key]["status"] == "not_observed", found[key]
        assert "jusqu'au certificat" in found[key]["detail"]


async def test_probes_do_not_hide_a_real_refusal(mock_op: MockOperator) -> None:
    """Garbage before and after a verifying client: the check still passes on its refusal."""
    campaign_id = await campaign(mock_op)
    assert mock_op.scenarios is not None
    context = ssl.create_default_context(cafile=str(mock_op.scenarios.files.trust))
    await starttls_then(mock_op, "expired", "imap", GARBAGE)
    reader, writer = await asyncio.open_connection("127.0.0.1", port(mock_op, "expired", "imap"))
    await reader.readline()
    writer.write(b"a1 STARTTLS\r\n")
    await reader.readline()
    try:
        await writer.start_tls(context, server_hostname="localhost")
        raise AssertionError("an expired certificate was accepted")
    except ssl.SSLCertVerificationError:
        writer.close()
    await starttls_then(mock_op, "expired", "smtp", GARBAGE)
    await until(lambda: quiet(mock_op), "scenario connections gone")

    async def passed() -> bool:
        return (await campaign_results(mock_op, campaign_id))["cert-expired"]["status"] == "passed"

    await eventually(passed, "cert-expired passed")


async def test_a_flood_cannot_crowd_out_the_campaign(
    mock_op: MockOperator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connections without login are attributed by recency alone: a campaign takes a
    bounded number of them, the rest are forgotten."""
    monkeypatch.setattr(observatory, "MAX_ADOPTED", 2)
    campaign_id = await campaign(mock_op)
    for _ in range(5):
        await starttls_then(mock_op, "expired", "imap", GARBAGE)
    await until(lambda: quiet(mock_op), "nothing held")
    assert mock_op.observatory is not None
    events = await mock_op.observatory.events(campaign_id)
    assert len({e.connection for e in events if e.kind == "connect"}) == 2


async def test_without_a_campaign_nothing_is_held(mock_op: MockOperator) -> None:
    for scenario in SCENARIOS:
        await starttls_then(mock_op, scenario, "imap", GARBAGE)
        await starttls_then(mock_op, scenario, "smtp", GARBAGE)
    await until(lambda: quiet(mock_op), "nothing held")
    campaign_id = await campaign(mock_op)  # opened afterwards: sees none of it
    found = await campaign_results(mock_op, campaign_id)
    assert {found[k]["status"] for k in KEYS.values()} == {"not_observed"}
    assert all("ne s'est pas connecté" in found[k]["detail"] for k in KEYS.values())
