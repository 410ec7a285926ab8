"""CPS cards on the gateway's API LPS fronts: mutual TLS, then IMAP ``AUTHENTICATE
EXTERNAL`` and SMTP ``AUTH EXTERNAL`` with the BAL as authzid (empty: the holder's own),
the same delegation decision as a token, the backend opened with the master login.
Real sockets: curl, imaplib and smtplib with an SSL context holding the card."""

from __future__ import annotations

import asyncio
import imaplib
import shutil
import smtplib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.settings import MockSettings, Settings
from mock_operator.server import MockOperator
from tests.conftest import require_peer
from tests.support.cards import Card, authority_of, issue_card, tls_with_card, with_cards
from tests.support.stacks import Stack, configure_with, gateway_settings, running_stack

HOST = "127.0.0.1"
MARTIN = "claire.martin@medecin.mssante.fr"
DUPONT = "jean.dupont@medecin.mssante.fr"
MOREAU = "eve.moreau@medecin.mssante.fr"
MARTIN_IDNAT = "899700000001"
BERNARD_IDNAT = "899700000003"


@pytest.fixture
async def stack(
    tmp_path: Path, mock_settings: MockSettings, stack_overrides: dict[str, Any]
) -> AsyncIterator[Stack]:
    settings = gateway_settings(tmp_path / "gateway", **stack_overrides)
    async with running_stack(
        settings, mock_settings, tmp_path / "mock", with_cards(configure_with())
    ) as running:
        yield running


@pytest.fixture
def stack_overrides() -> dict[str, Any]:
    return {}


def gateway_cert(stack: Stack) -> Path:
    return stack.gateway.settings.data_dir / "dev-cert.pem"


def card(stack: Stack, persona: str, directory: Path) -> Card:
    return issue_card(authority_of(stack.mock), stack.mock, persona, directory)


def imap_with_card(stack: Stack, held: Card | None) -> imaplib.IMAP4:
    client = imaplib.IMAP4(HOST, stack.imap_port, timeout=10)
    client.starttls(tls_with_card(gateway_cert(stack), held))
    return client


def external(client: imaplib.IMAP4, authzid: str) -> str:
    typ, _ = client.authenticate("EXTERNAL", lambda _: authzid.encode())
    return str(typ)


async def audit(stack: Stack, mailbox: str) -> list[Any]:
    assert stack.gateway.audit is not None
    assert stack.gateway.delegations is not None
    await stack.gateway.audit.flush()
    return await stack.gateway.delegations.audit_for(mailbox)


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", *args], capture_output=True, text=True
    )


@pytest.fixture
def has_curl() -> None:
    require_peer(shutil.which("curl") is not None, "curl is not installed")


def mock_operator_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = Path(sys.executable).with_name("mock-operator")
    return subprocess.run([str(command), *args], capture_output=True, text=True, timeout=60)


# -- IMAP --------------------------------------------------------------------------------


@pytest.mark.usefixtures("has_curl")
async def test_curl_lists_her_own_bal_with_a_card_from_the_cli(stack: Stack, tmp_path: Path):
    """As the README says: `mock-operator card dr-martin`, then curl --cert."""
    made = await asyncio.to_thread(
        mock_operator_cli,
        "card",
        "dr-martin",
        "--out",
        str(tmp_path),
        "--data",
        str(tmp_path / "mock"),
    )
    assert made.returncode == 0, made.stderr
    cert, key = tmp_path / "dr-martin.pem", tmp_path / "dr-martin-key.pem"
    assert str(cert) in made.stdout
    assert str(key) in made.stdout
    assert key.stat().st_mode & 0o777 == 0o600
    url = f"imap://{HOST}:{stack.imap_port}/INBOX?ALL"
    common = ["--ssl-reqd", "--cacert", str(gateway_cert(stack)), "--cert", str(cert)]
    common += ["--key", str(key), "--login-options", "AUTH=EXTERNAL"]
    listing = await asyncio.to_thread(curl, *common, url)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.startswith("* SEARCH"), listing.stdout
    assert len(listing.stdout.split()) > 2, "her INBOX has messages"
    events = await audit(stack, MARTIN)
    logins = [e for e in events if e.action == "login" and e.actor_idnat == MARTIN_IDNAT]
    assert logins
    assert logins[0].result == "ok"
    assert "means=card" in (logins[0].detail or "")

    # revoked through the CLI against the stack's mock data directory: refused at once,
    # the gateway reads the new revocation list without a restart
    revoked = await asyncio.to_thread(
        mock_operator_cli, "card", "dr-martin", "--revoke", "--data", str(tmp_path / "mock")
    )
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.startswith("1 card of dr-martin revoked"), revoked.stdout
    refused = await asyncio.to_thread(curl, *common, url)
    assert refused.returncode != 0
    events = await audit(stack, "")
    assert any(
        e.actor_idnat == MARTIN_IDNAT and e.result == "refused:card-revoked" for e in events
    ), events


async def test_imaplib_card_on_her_bal_and_capabilities(stack: Stack, tmp_path: Path):
    held = card(stack, "dr-martin", tmp_path)

    def run() -> tuple[list[str], list[str], str, int]:
        with imaplib.IMAP4(HOST, stack.imap_port, timeout=10) as plain:
            before = list(plain.capabilities)
        with imap_with_card(stack, held) as client:
            after = list(client.capabilities)
            typ = external(client, "")  # empty authzid: her own BAL
            _, data = client.select("INBOX")
            count = int(data[0] or b"0")
            client.logout()
        return before, after, typ, count

    before, after, typ, count = await asyncio.to_thread(run)
    assert "AUTH=EXTERNAL" not in before  # no certificate on a plaintext connection
    assert "AUTH=EXTERNAL" in after
    assert typ == "OK"
    assert count > 0


async def test_no_card_no_external(stack: Stack):
    def run() -> tuple[list[str], bytes]:
        with imap_with_card(stack, None) as client:
            capabilities = list(client.capabilities)
            try:
                external(client, "")
            except imaplib.IMAP4.error as exc:
                return capabilities, str(exc).encode()
            return capabilities, b"logged in"

    capabilities, answer = await asyncio.to_thread(run)
    assert "AUTH=EXTERNAL" not in capabilities
    assert b"logged in" not in answer


async def test_a_delegate_card_gets_the_delegation_rights(stack: Stack, tmp_path: Path):
    """sec-bernard: read, write, send on claire.martin (modern, relayed); read only on
    jean.dupont (historic, served by the engine): a write is NOPERM there."""
    held = card(stack, "sec-bernard", tmp_path)

    def run() -> tuple[str, str, bytes, str]:
        with imap_with_card(stack, held) as client:
            mine = external(client, MARTIN)
            selected, _ = client.select("INBOX")
            client.store("1", "+FLAGS", "(\\Flagged)")
            client.logout()
        with imap_with_card(stack, held) as client:
            external(client, DUPONT)
            # the engine says [READ-ONLY], which imaplib takes for a refusal: try anyway
            with pytest.raises(imaplib.IMAP4.readonly):
                client.select("INBOX")
            client.untagged_responses.pop("READ-ONLY", None)
            stored, data = client.store("1", "+FLAGS", "(\\Flagged)")
            refused = stored.encode() + b" " + b" ".join(d for d in data if isinstance(d, bytes))
            client.untagged_responses.pop("READ-ONLY", None)
            client.logout()
        with imap_with_card(stack, held) as client:
            try:
                other = external(client, MOREAU)
            except imaplib.IMAP4.error as exc:
                other = str(exc)
        return mine, str(selected), refused, other

    mine, selected, refused, other = await asyncio.to_thread(run)
    assert (mine, selected) == ("OK", "OK")
    assert refused.startswith(b"NO [NOPERM]"), refused
    assert "AUTHORIZATIONFAILED" in other
    events = await audit(stack, DUPONT)
    assert any(
        e.actor_idnat == BERNARD_IDNAT and e.action == "login" and e.delegation_id for e in events
    )


class TestTokenOnlyBackend:
    @pytest.fixture
    async def stack(self, tmp_path: Path, mock_settings: MockSettings) -> AsyncIterator[Stack]:
        from tests.support.stacks import mock_backend

        def configure(settings: Settings, mock: MockOperator) -> None:
            settings.backends = {"modern": mock_backend(mock, login="token")}
            settings.routing.default = "modern"

        settings = gateway_settings(tmp_path / "gateway")
        async with running_stack(
            settings, mock_settings, tmp_path / "mock", with_cards(configure)
        ) as running:
            yield running

    async def test_a_card_cannot_open_a_bal_on_a_token_only_backend(
        self, stack: Stack, tmp_path: Path
    ):
        held = card(stack, "dr-martin", tmp_path)

        def run() -> str:
            with imap_with_card(stack, held) as client:
                try:
                    external(client, "")
                except imaplib.IMAP4.error as exc:
                    return str(exc)
                return "logged in"

        answer = await asyncio.to_thread(run)
        assert "AUTHORIZATIONFAILED" in answer
        assert "PSC tokens only" in answer


# -- SMTP --------------------------------------------------------------------------------


def message(sender: str, to: str) -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: carte CPS\r\nX-MSS-NIL: 0\r\n\r\nBonjour\r\n"
    ).encode()


async def test_smtplib_auth_external_after_starttls(stack: Stack, tmp_path: Path):
    held = card(stack, "sec-bernard", tmp_path)
    to = "luc.durand@infirmier.mssante.fr"

    def run() -> tuple[bool, bool, tuple[int, bytes], dict[str, Any], tuple[int, bytes]]:
        with smtplib.SMTP(HOST, stack.smtp_port, timeout=10) as client:
            client.ehlo("card-test")
            before = "EXTERNAL" in client.esmtp_features.get("auth", "").upper().split()
            client.starttls(context=tls_with_card(gateway_cert(stack), held))
            client.ehlo("card-test")
            after = "EXTERNAL" in client.esmtp_features.get("auth", "").upper().split()
            login = client.docmd("AUTH", "EXTERNAL " + _b64(MARTIN))
            refused = client.sendmail(MARTIN, [to], message(MARTIN, to))
            client.rset()
            other = client.mail(DUPONT)  # read only on jean.dupont: no send right
        return before, after, login, refused, other

    before, after, login, refused, other = await asyncio.to_thread(run)
    assert (before, after) == (False, True)
    assert login[0] == 235, login
    assert refused == {}
    assert 500 <= other[0] < 600, other


async def test_smtp_external_without_a_card_is_refused(stack: Stack):
    def run() -> tuple[bool, tuple[int, bytes]]:
        with smtplib.SMTP(HOST, stack.smtp_port, timeout=10) as client:
            client.starttls(context=tls_with_card(gateway_cert(stack), None))
            client.ehlo("card-test")
            offered = "EXTERNAL" in client.esmtp_features.get("auth", "").upper().split()
            return offered, client.docmd("AUTH", "EXTERNAL =")

    offered, answer = await asyncio.to_thread(run)
    assert not offered
    assert answer[0] == 535, answer


@pytest.mark.usefixtures("has_curl")
async def test_curl_sends_with_a_card(stack: Stack, tmp_path: Path):
    held = card(stack, "dr-martin", tmp_path)
    to = "luc.durand@infirmier.mssante.fr"
    body = tmp_path / "message.eml"
    body.write_bytes(message(MARTIN, to))
    sent = await asyncio.to_thread(
        curl,
        "--ssl-reqd",
        "--sasl-ir",  # AUTH EXTERNAL = (curl answers a 334 with "=", which aiosmtpd refuses)
        "--cacert",
        str(gateway_cert(stack)),
        "--cert",
        str(held.certificate),
        "--key",
        str(held.key),
        "--login-options",
        "AUTH=EXTERNAL",
        "--mail-from",
        MARTIN,
        "--mail-rcpt",
        to,
        "--upload-file",
        str(body),
        f"smtp://{HOST}:{stack.smtp_port}",
    )
    assert sent.returncode == 0, sent.stderr
    events = await audit(stack, MARTIN)
    assert any(e.action == "send" and e.actor_idnat == MARTIN_IDNAT for e in events), events


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()
