"""A historic client's day on Dr MARTIN's modern BAL, through the gateway's legacy front,
over real sockets: REST after the OTP dialogue answered by a PSC CIBA approval, and SOAP
on the mutual-TLS listener with her CPS card. Every effect is read back on the modern
platform over IMAP, and the usage figures count the visit under `historic-ws`."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import imaplib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from gateway.mss.historic_ws import DRAFTS, INBOX, SESSION_COOKIE
from gateway.runtime.tls import client_context
from gateway.settings import Settings
from mock_operator.seed import ihe_xdm_zip
from mock_operator.server import MockOperator
from tests.conftest import quick_mock_settings
from tests.support.cards import authority_of, issue_card, with_cards
from tests.support.historic_contract import Face, HistoricClient, Target, attachment
from tests.support.stacks import (
    Stack,
    configure_with,
    gateway_settings,
    mock_backend,
    running_stack,
)
from tests.support.waiting import eventually

CLAIRE = "claire.martin@medecin.mssante.fr"
CLAIRE_IDNAT = "899700000001"
LUC = "luc.durand@infirmier.mssante.fr"
SOFTWARE = "HOMOL-DAY-0001"
T = TypeVar("T")


@dataclass
class Day:
    stack: Stack
    cards_dir: Path

    def imap(self, bal: str, work: Callable[[imaplib.IMAP4], T]) -> T:
        """`work` on a BAL of the modern platform, with the operator's master login."""
        mock = self.stack.mock
        assert mock.master is not None
        client = imaplib.IMAP4("127.0.0.1", mock.imap_port)
        try:
            client.starttls(ssl_context=client_context(mock.tls_cert))
            blob = f"{bal}\0{mock.master.user}\0{mock.master.password}".encode()
            client.authenticate("PLAIN", lambda _: blob)
            return work(client)
        finally:
            with contextlib.suppress(Exception):
                client.logout()

    async def on_imap(self, bal: str, work: Callable[[imaplib.IMAP4], T]) -> T:
        return await asyncio.to_thread(self.imap, bal, work)


@pytest.fixture
async def day(tmp_path: Path) -> AsyncIterator[Day]:
    settings = gateway_settings(tmp_path / "gateway", legacy_front={"https_port": 0})
    demo_like = configure_with()

    def configure(settings: Settings, mock: MockOperator) -> None:
        demo_like(settings, mock)
        settings.backends["modern"] = mock_backend(mock, keeps_sent_copy=True)

    async with running_stack(
        settings, quick_mock_settings(), tmp_path / "mock-operator", with_cards(configure)
    ) as stack:
        yield Day(stack, tmp_path / "cards")


@contextlib.asynccontextmanager
async def rest_after_ciba(day: Day) -> AsyncIterator[HistoricClient]:
    """The historic OTP dialogue on a BAL that left the historic platform: the gateway
    starts a CIBA request, the e-CPS app shows a code and is approved, the code typed as
    the OTP opens a session cookie; the client then calls with the cookie alone."""
    gateway, psc = day.stack.gateway, day.stack.mock.psc
    assert psc is not None
    target = Target("gateway", gateway.http_url, {}, CLAIRE, CLAIRE_IDNAT, LUC, SOFTWARE)
    async with httpx.AsyncClient(timeout=60) as http:
        client = HistoricClient(target, http, "rest")
        asked = await client.post(
            "Folder",
            "listFolders",
            client.encode("listFolders", {"email": CLAIRE}),
            {"IDNAT": CLAIRE_IDNAT, "PASSWORD": "gone-with-the-old-platform", "IDCANAL": "SMS"},
        )
        assert asked.status_code == 401
        assert asked.headers["X-OTP-Required"] == "SMS"
        (request,) = psc.ciba.pending()
        assert request.persona == "dr-martin"
        assert psc.ciba.decide(request.auth_req_id, approve=True)  # on the phone
        logged = await client.post(
            "Folder",
            "listFolders",
            client.encode("listFolders", {"email": CLAIRE}),
            {"IDNAT": CLAIRE_IDNAT, "OTP": request.binding_message, "NUMHOMOLOGATION": SOFTWARE},
        )
        assert logged.status_code == 200, logged.text
        assert SESSION_COOKIE in http.cookies
        yield client


@contextlib.asynccontextmanager
async def soap_with_card(day: Day) -> AsyncIterator[HistoricClient]:
    """SOAP on the gateway's mutual-TLS listener, Dr MARTIN's CPS card presented in TLS."""
    gateway = day.stack.gateway
    card = issue_card(authority_of(day.stack.mock), day.stack.mock, "dr-martin", day.cards_dir)
    port = gateway.legacy_https_port
    assert port is not None
    target = Target("gateway-tls", f"https://127.0.0.1:{port}", {}, CLAIRE, CLAIRE_IDNAT, LUC)
    tls = client_context(gateway.settings.data_dir / "dev-cert.pem")
    tls.load_cert_chain(card.certificate, card.key)
    async with httpx.AsyncClient(timeout=60, verify=tls) as http:
        yield HistoricClient(target, http, "soap")


FACES = {"rest": rest_after_ciba, "soap": soap_with_card}


def special(imap: imaplib.IMAP4, use: bytes) -> str:
    """The mailbox name of a special-use folder (RFC 6154), quoted for SELECT."""
    _, listed = imap.list()
    for line in listed:
        if isinstance(line, bytes) and use in line.split(b")")[0]:
            return line.rsplit(b" ", 1)[-1].decode()
    raise AssertionError(f"no {use!r} folder in {listed!r}")


@pytest.mark.parametrize("face", sorted(FACES))
async def test_a_day_of_work_on_a_modern_bal(day: Day, face: Face) -> None:
    mark = f"day-{uuid.uuid4().hex[:8]}"
    async with FACES[face](day) as client:
        # morning: the folders, and the Inbox's message with an XDM archive
        folders = (await client.ok("Folder", "listFolders", client.mine()))["folders"]
        by_id = {f["id"]: f for f in folders}
        assert {INBOX, 3, 5, DRAFTS} <= set(by_id)
        found = await client.search(folderId=INBOX, limit=50)
        with_xdm = [
            m
            for m in found["messages"]
            if any(a["fileName"] == "IHE_XDM.ZIP" for a in m.get("attachments", []))
        ]
        assert with_xdm, [m["subject"] for m in found["messages"]]
        letter = with_xdm[0]
        part = next(a["part"] for a in letter["attachments"] if a["fileName"] == "IHE_XDM.ZIP")
        assert await client.download(letter["messageId"], part) == ihe_xdm_zip()

        # read it, flag it, file it in a new folder
        ids = [letter["messageId"]]
        await client.ok("Item", "updateMessages", client.mine(messageIds=ids, operation="READ"))
        await client.ok("Item", "updateMessages", client.mine(messageIds=ids, operation="FLAGGED"))
        created = (await client.ok("Folder", "createFolder", client.mine(name=mark)))["folder"]
        token = (await client.ok("Item", "syncMessages", client.mine()))["token"]
        await client.ok(
            "Item",
            "moveMessages",
            client.mine(messageIds=ids, destinationFolderId=created["id"]),
        )

        def filed(imap: imaplib.IMAP4) -> list[bytes]:
            imap.select(f'"{mark}"', readonly=True)
            _, data = imap.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            return [part[0] for part in data if isinstance(part, tuple)]

        moved = await day.on_imap(CLAIRE, filed)
        assert len(moved) == 1
        assert b"\\Seen" in moved[0]
        assert b"\\Flagged" in moved[0]
        again = await client.search(folderId=created["id"])
        assert [m["messageId"] for m in again["messages"]] == ids  # the id survived the move

        # the sync since the token names the moved message
        changes = await client.ok("Item", "syncMessages", client.mine(token=token))
        assert letter["messageId"] in {m["messageId"] for m in changes.get("modifiedMessages", [])}

        # a draft, then the letter sent with the XDM archive
        draft = await client.draft({"subject": f"{mark} brouillon", "body": "À compléter."})

        def drafts(imap: imaplib.IMAP4) -> bytes:
            imap.select(special(imap, b"\\Drafts"), readonly=True)
            _, data = imap.uid("SEARCH", "SUBJECT", f'"{mark} brouillon"', "DRAFT")
            return data[0] or b""

        assert await day.on_imap(CLAIRE, drafts)
        await client.send(
            {
                "messageId": draft["messageId"],
                "addresses": [{"address": LUC, "type": "TO", "name": "Luc DURAND"}],
                "subject": f"{mark} compte rendu",
                "body": "Compte rendu ci-joint.",
                "attachments": [attachment("IHE_XDM.ZIP", ihe_xdm_zip(), "application/zip")],
            }
        )

        def arrived(imap: imaplib.IMAP4) -> bytes | None:
            imap.select("INBOX", readonly=True)
            _, data = imap.uid("SEARCH", "SUBJECT", f'"{mark} compte rendu"')
            uids = (data[0] or b"").split()
            if not uids:
                return None
            _, fetched = imap.uid("FETCH", uids[-1], "(BODY.PEEK[])")
            return next(part[1] for part in fetched if isinstance(part, tuple))

        raw: list[bytes] = []

        async def delivered() -> bool:
            got = await day.on_imap(LUC, arrived)
            if got is not None:
                raw.append(got)
            return got is not None

        await eventually(delivered, "the letter in Luc DURAND's Inbox")
        message = email.message_from_bytes(raw[0], policy=email.policy.default)
        assert message["From"].addresses[0].addr_spec == CLAIRE
        assert message["X-MSS-NIL"]  # from NUMHOMOLOGATION, or the software's own
        if face == "rest":
            assert message["X-MSS-NIL"] == SOFTWARE
        files = {p.get_filename(): p.get_payload(decode=True) for p in message.walk()}
        assert files["IHE_XDM.ZIP"] == ihe_xdm_zip()
        assert not await day.on_imap(CLAIRE, drafts)  # the sent draft left Drafts

        # put things back for the other face
        await client.ok(
            "Item", "moveMessages", client.mine(messageIds=ids, destinationFolderId=INBOX)
        )

    if face == "rest":
        report = await day.stack.gateway.usage_report()
        rows = [r for r in report.software if r.interface == "historic-ws"]
        mine = [r for r in rows if r.software == SOFTWARE]
        assert len(mine) == 1, rows
        assert mine[0].sessions == 1  # one visit, however many calls
        assert mine[0].messages == 1
        assert mine[0].bals == 1
        assert mine[0].persons == 1
