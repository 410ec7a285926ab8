"""`lps-gateway migrate cutover|rollback|finish` as the issue's "Done when" tries them, on
the demo's backends: jean.dupont's BAL copied from the historic platform to "modern",
cut over while dr-dupont has a session open, read again through the gateway's IMAP front
and the historic web services, mail sent to it landing on the modern platform, late mail
on the old one brought by the trailing sync, then rolled back with what arrived meanwhile."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.mss.historic_ws import INBOX
from gateway.settings import MockSettings
from tests.bal_migration.test_migrate_command import ADMIN, demo_backends, migrate
from tests.gateway.test_backend_tools import DUPONT, letter
from tests.gateway.test_smtp_front import message, smtplib_session
from tests.support.historic_contract import HistoricClient, Target
from tests.support.imap import login
from tests.support.stacks import Stack, gateway_settings
from tests.support.stacks import running_stack as run_stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

MARTIN = "claire.martin@medecin.mssante.fr"
DUPONT_IDNAT = "899700000002"


@pytest.fixture
async def demo(tmp_path: Path, mock_settings: MockSettings) -> AsyncIterator[Stack]:
    settings = gateway_settings(
        tmp_path / "gateway",
        admin={"idnats": [ADMIN]},
        migration={
            "trailing_interval": 3600,  # passes driven by the test (trail_now)
            "mta_hook": ["sh", "-c", f"echo {{bal}} {{source}} {{target}} >> {tmp_path}/mta"],
        },
    )
    async with run_stack(settings, mock_settings, tmp_path / "mock", demo_backends) as running:
        yield running


async def inbox(stack: Stack, backend: str) -> list[str]:
    """The digests of the INBOX of DUPONT on `backend`."""
    assert stack.gateway.router is not None
    access = await stack.gateway.router.backends[backend].tools(DUPONT)
    try:
        return sorted(m.digest for m in await access.messages("INBOX"))
    finally:
        await access.aclose()


async def send_to_dupont(stack: Stack, subject: str) -> None:
    """Dr MARTIN writes to Dr DUPONT through the gateway's SMTP front (the mock's MTA
    delivers where the registry says DUPONT's BAL lives)."""
    token = await stack.token("dr-martin")

    def send() -> None:
        with smtplib_session(stack.smtp_port, MARTIN, token) as smtp:
            smtp.sendmail(MARTIN, [DUPONT], message(MARTIN, DUPONT, subject))

    await asyncio.to_thread(send)


async def dupont_through_gateway(stack: Stack) -> Target:
    """Dr DUPONT's LPS on the historic web services, through the gateway's legacy front."""
    token = await stack.token("dr-dupont")
    bearer = {"Authorization": f"Bearer {token}"}
    return Target("gateway", stack.gateway.http_url, bearer, DUPONT, DUPONT_IDNAT, MARTIN)


async def legacy_view(stack: Stack) -> tuple[dict[str, tuple[int, str, str]], set[int], str]:
    """What an LPS on the historic web services sees of DUPONT's BAL through the gateway:
    messageId → (folderId, subject, date), the folder ids, and a syncMessages token."""
    target = await dupont_through_gateway(stack)
    async with httpx.AsyncClient(timeout=60) as http:
        historic = HistoricClient(target, http, "rest")
        synced = await historic.ok("Item", "syncMessages", historic.mine())
        tree = (await historic.ok("Folder", "listFolders", historic.mine()))["folders"]
        found = (await historic.search(limit=1000))["messages"]
    folders: set[int] = set()
    stack_ = list(tree)
    while stack_:
        folder = stack_.pop()
        folders.add(folder["id"])
        stack_.extend(folder.get("children") or [])
    messages = {str(m["messageId"]): (m["folderId"], m["subject"], m["date"]) for m in found}
    return messages, folders, str(synced["token"])


async def test_copy_cutover_trailing_rollback(demo: Stack, tmp_path: Path) -> None:
    registry = demo.gateway.delegations
    migrations = demo.gateway.migrations
    assert registry is not None
    assert migrations is not None

    code, out, err = await migrate(demo, "copy", DUPONT, "--to", "modern")
    assert code == 0, out + err
    # mail before the cut-over still goes to the historic platform (the record says so)
    before = len(await inbox(demo, "historic"))
    await send_to_dupont(demo, "avant la bascule")
    assert len(await inbox(demo, "historic")) == before + 1

    # an LPS on the historic web services knows the platform's own ids
    known, known_folders, old_token = await legacy_view(demo)
    assert len(known) >= before + 1

    # dr-dupont has a session open on the old platform (served by the gateway's engine)
    session = await login(demo, "dr-dupont", DUPONT)
    await session.ok("SELECT INBOX")

    code, out, err = await migrate(demo, "cutover", DUPONT, "--to", "modern", "--json")
    assert code == 0, out + err
    [job] = json.loads(out)["jobs"]
    assert (job["action"], job["state"], job["source"], job["target"]) == (
        "cutover",
        "done",
        "historic",
        "modern",
    )
    result = job["result"]
    assert result["identical"] is True
    assert result["final_delta"]["appended"] == 0  # the first delta brought the late one
    assert result["delta"]["appended"] == 1
    assert result["sessions_ended"] == 1
    assert result["mta_hook"] == "ok"
    # every message keeps the id the historic platform gave it (paired through its IMAP)
    assert result["historic_ids"] == {"kept": len(known), "new": 0}
    assert (tmp_path / "mta").read_text() == f"{DUPONT} historic modern\n"
    bye = await session.until_closed()
    assert b"* BYE" in bye
    assert "déplacée".encode() in bye
    assert b"reconnecter" in bye
    mailbox = await registry.mailbox(DUPONT)
    assert mailbox is not None
    assert mailbox.backend == "modern"
    assert await inbox(demo, "modern") == await inbox(demo, "historic")

    # dr-dupont's software reconnects: the gateway carries it to the modern platform
    again = await login(demo, "dr-dupont", DUPONT)
    selected = await again.ok("SELECT INBOX")
    assert f"* {before + 1} EXISTS".encode() in b"".join(selected.untagged)
    await again.ok("LOGOUT")

    # mail sent to it now lands on the modern platform only
    on_historic = await inbox(demo, "historic")
    await send_to_dupont(demo, "après la bascule")
    assert len(await inbox(demo, "modern")) == before + 2
    assert await inbox(demo, "historic") == on_historic

    # an LPS on the historic web services, through the gateway, lists and reads it
    target = await dupont_through_gateway(demo)
    async with httpx.AsyncClient(timeout=60) as http:
        historic = HistoricClient(target, http, "rest")
        folders = await historic.ok("Folder", "listFolders", historic.mine())
        assert folders["folders"]
        found = await historic.search(limit=100)
        subjects = {m.get("subject") for m in found["messages"]}
        assert {"avant la bascule", "après la bascule"} <= subjects
        # the old platform's token is refused (the LPS starts over), nothing else changes
        assert await historic.code("Item", "syncMessages", historic.mine(token=old_token)) == 36
    now, now_folders, _ = await legacy_view(demo)
    assert {i: now[i] for i in known} == known  # the same ids, folders, subjects, dates
    assert known_folders <= now_folders
    [arrived] = [i for i, (_, subject, _) in now.items() if subject == "après la bascule"]
    assert int(arrived) > max(int(i) for i in known)  # a new id never names an old one

    # late mail on the old platform (an MTA queue): the trailing sync brings it
    assert demo.mock.historic is not None
    await demo.mock.historic.store.deliver_mime(DUPONT, letter("en retard"), INBOX, {"UNREAD"})
    report = await migrations.trail_now(DUPONT)
    assert report is not None
    assert report.appended == 1
    assert len(await inbox(demo, "modern")) == before + 3
    report = await migrations.trail_now(DUPONT)
    assert report is not None
    assert report.appended == 0

    # status says where each copy stands
    code, out, err = await migrate(demo, "status", "--json")
    assert code == 0, err
    [entry] = json.loads(out)["migrations"]
    assert {(c["source"], c["target"], c["state"]) for c in entry["copies"]} == {
        ("historic", "modern", "cut over")
    }

    # rollback: back to the historic platform with what arrived on the modern one
    code, out, err = await migrate(demo, "rollback", DUPONT)
    assert code == 0, out + err
    assert f"{DUPONT}: now on historic (from modern)" in out
    mailbox = await registry.mailbox(DUPONT)
    assert mailbox is not None
    assert mailbox.backend == "historic"
    back = await inbox(demo, "historic")
    assert back == await inbox(demo, "modern")
    assert len(back) == before + 3
    assert len(set(back)) == len(back)
    assert (tmp_path / "mta").read_text().splitlines()[-1] == f"{DUPONT} modern historic"

    code, out, err = await migrate(demo, "status", "--json")
    [entry] = json.loads(out)["migrations"]
    assert {(c["source"], c["target"], c["state"]) for c in entry["copies"]} == {
        ("historic", "modern", "rolled back"),
        ("modern", "historic", "cut over"),
    }
    code, out, err = await migrate(demo, "finish", DUPONT)
    assert code == 0, out + err
    assert "trailing sync closed" in out

    async def audited() -> list[str]:
        events = await registry.audit_for(DUPONT, limit=200)
        return [e.detail or "" for e in events]

    async def rollback_audited() -> bool:
        return any("migrate rollback done" in x for x in await audited())

    await eventually(rollback_audited, "the rollback's audit event")
    details = await audited()
    assert any("migrate cutover done" in x for x in details)
    assert any("mta hook ok" in x for x in details)


async def test_a_pinned_bal_is_not_cut_over(tmp_path: Path, mock_settings: MockSettings) -> None:
    settings = gateway_settings(tmp_path / "gateway", admin={"idnats": [ADMIN]})

    def pinned(settings_: object, mock: object) -> None:
        demo_backends(settings_, mock)  # type: ignore[arg-type]
        settings_.routing.mailboxes = {DUPONT: "historic"}  # type: ignore[attr-defined]

    async with run_stack(settings, mock_settings, tmp_path / "mock", pinned) as stack:
        code, out, err = await migrate(stack, "copy", DUPONT, "--to", "modern")
        assert code == 0, out + err
        code, out, err = await migrate(stack, "cutover", DUPONT, "--to", "modern")
        assert code != 0
        assert "pinned to historic in [routing.mailboxes]" in err
        code, out, err = await migrate(stack, "rollback", DUPONT)
        assert code != 0
        assert "no cut-over to historic to rollback" in err
        assert stack.gateway.delegations is not None
        mailbox = await stack.gateway.delegations.mailbox(DUPONT)
        assert mailbox is not None
        assert mailbox.backend == "historic"
