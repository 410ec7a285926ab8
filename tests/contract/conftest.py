"""The targets of the historic web services' contract suites: each a running
implementation, started once per module, and who acts on which BAL there.

A target is an async context manager factory in `TARGETS` (name -> factory(directory));
adding an implementation to every contract suite is adding one entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import imaplib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_asyncio

from gateway.runtime.tls import client_context
from gateway.settings import Settings
from mock_operator.personas import default_personas
from mock_operator.server import MockOperator
from tests.conftest import quick_mock_settings
from tests.historic import historic_attachment, historic_messages
from tests.support.cards import with_cards
from tests.support.historic_contract import Target
from tests.support.stacks import (
    Stack,
    configure_with,
    gateway_settings,
    mock_backend,
    running_stack,
)

PERSONAS = default_personas()


def _persona_bal(key: str) -> tuple[str, str]:
    persona = PERSONAS.get(key)
    assert persona is not None
    assert persona.bal is not None
    return persona.bal, persona.idnat


@contextlib.asynccontextmanager
async def mock_historic(directory: Path) -> AsyncIterator[Target]:
    """The mock's historic platform, called by dr-dupont with his CPS card as a trusted
    front proxy passes it on (``ssl_client_verify``/``ssl_client_cert``, from loopback)."""
    mock = MockOperator(quick_mock_settings(), directory)
    await mock.start()
    try:
        bal, idnat = _persona_bal("dr-dupont")
        other, _ = _persona_bal("sf-petit")
        yield Target(
            name="mock",
            base_url=mock.http_url,
            headers=_card_headers(mock, "dr-dupont"),
            bal=bal,
            holder_idnat=idnat,
            other_bal=other,
            received=_historic_received(mock),
        )
    finally:
        await mock.stop()


def _historic_received(mock: MockOperator) -> Any:
    """What reached a BAL of the mock's historic platform: its Inbox over the web services,
    the attachments of the message with that subject."""

    async def received(address: str, subject: str) -> dict[str, bytes] | None:
        found = await historic_messages(mock, address, 2, subject=subject)
        if not found:
            return None
        message = found[-1]
        return {
            a["fileName"]: await historic_attachment(mock, address, message, a)
            for a in message.get("attachments", [])
        }

    return received


def _card_headers(mock: MockOperator, persona: str) -> dict[str, str]:
    """A CPS card of `persona`, as a trusted front proxy passes it on."""
    assert mock.historic_auth is not None
    assert mock.historic_auth.authority is not None
    someone = PERSONAS.get(persona)
    assert someone is not None
    certificate, _key = mock.historic_auth.authority.issue(someone)
    return {"ssl_client_verify": "SUCCESS", "ssl_client_cert": quote(certificate.decode("ascii"))}


def _modern_received(mock: MockOperator) -> Any:
    """What reached a BAL of the mock's modern platform: its Inbox read over IMAP with
    the operator's master login, the attachments of the message with that subject."""

    def read(address: str, subject: str) -> dict[str, bytes] | None:
        assert mock.master is not None
        client = imaplib.IMAP4("127.0.0.1", mock.imap_port)
        try:
            client.starttls(ssl_context=client_context(mock.tls_cert))
            authzid = f"{address}\0{mock.master.user}\0{mock.master.password}".encode()
            client.authenticate("PLAIN", lambda _: authzid)
            client.select("INBOX", readonly=True)
            _, found = client.uid("SEARCH", "SUBJECT", f'"{subject}"')
            uids = found[0].split() if found and found[0] else []
            if not uids:
                return None
            _, data = client.uid("FETCH", uids[-1], "(BODY.PEEK[])")
            raw = next(part[1] for part in data if isinstance(part, tuple))
        finally:
            with contextlib.suppress(Exception):
                client.logout()
        message = email.message_from_bytes(raw, policy=email.policy.default)
        return {
            part.get_filename() or "": part.get_payload(decode=True) or b""
            for part in message.walk()
            if part.get_filename()
        }

    async def received(address: str, subject: str) -> dict[str, bytes] | None:
        return await asyncio.to_thread(read, address, subject)

    return received


@contextlib.asynccontextmanager
async def gateway_stack(directory: Path) -> AsyncIterator[Stack]:
    """A gateway in front of a mock operator, as the demo wires them (modern and historic
    backends), trusting the mock's card CA."""
    # the card comes as a front proxy on loopback passes it on
    settings = gateway_settings(
        directory / "gateway",
        legacy_front={"trusted_proxies": ["127.0.0.0/8"]},
        limits={"exempt_networks": ["127.0.0.0/8"]},  # refusals are contract, not abuse
    )
    demo_like = configure_with()

    def configure(settings: Settings, mock: MockOperator) -> None:
        demo_like(settings, mock)
        # as the demo: the mock's modern platform files submitted mail in Sent itself
        settings.backends["modern"] = mock_backend(mock, keeps_sent_copy=True)

    async with running_stack(
        settings, quick_mock_settings(), directory / "mock-operator", with_cards(configure)
    ) as stack:
        yield stack


@contextlib.asynccontextmanager
async def gateway_modern(directory: Path) -> AsyncIterator[Target]:
    """The gateway's legacy front on a modern BAL: Claire MARTIN's, with her CPS card."""
    async with gateway_stack(directory) as stack:
        bal, idnat = _persona_bal("dr-martin")
        other, _ = _persona_bal("dr-moreau")
        yield Target(
            name="gateway-modern",
            base_url=stack.gateway.http_url,
            headers=_card_headers(stack.mock, "dr-martin"),
            bal=bal,
            holder_idnat=idnat,
            other_bal=other,
            received=_modern_received(stack.mock),
        )


@contextlib.asynccontextmanager
async def gateway_historic(directory: Path) -> AsyncIterator[Target]:
    """The gateway's legacy front on a historic BAL (Jean DUPONT's), passed through."""
    async with gateway_stack(directory) as stack:
        mock = stack.mock
        bal, idnat = _persona_bal("dr-dupont")
        other, _ = _persona_bal("sf-petit")

        yield Target(
            name="gateway-historic",
            base_url=stack.gateway.http_url,
            headers=_card_headers(mock, "dr-dupont"),
            bal=bal,
            holder_idnat=idnat,
            other_bal=other,
            received=_historic_received(mock),
        )


TARGETS: dict[str, Callable[[Path], contextlib.AbstractAsyncContextManager[Target]]] = {
    "mock": mock_historic,
    "gateway-modern": gateway_modern,
    "gateway-historic": gateway_historic,
}


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=sorted(TARGETS))
async def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Target]:
    directory = tmp_path_factory.mktemp(f"target-{request.param}")
    async with TARGETS[request.param](directory) as running:
        yield running
