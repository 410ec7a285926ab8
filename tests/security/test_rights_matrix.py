"""Every state-changing IMAP command, for a read-only delegate, on a BAL of each platform:
refused with NO [NOPERM] (CLOSE, which would expunge, becomes an UNSELECT), and the BAL
as the platform holds it is exactly as before. \\Seen is the one thing such a delegate
may set; SELECT says [READ-ONLY]."""

from __future__ import annotations

from typing import Any

from tests.historic import historic_call, historic_messages
from tests.imap_raw import Lit, Raw
from tests.support.sasl import xoauth2_b64
from tests.support.stacks import Stack, identity

MOREAU = "eve.moreau@medecin.mssante.fr"  # modern; read-only for sec-bernard (granted here)
DUPONT = "jean.dupont@medecin.mssante.fr"  # historic; read-only for sec-bernard (seeded)
BERNARD = "899700000003"
MESSAGE = b"From: x@y.fr\r\nSubject: injected\r\n\r\nbody\r\n"

REFUSED: list[tuple[str, ...] | tuple[str, Lit]] = [
    ("STORE 1 +FLAGS (\\Flagged)",),
    ("STORE 1 FLAGS (\\Seen)",),  # replacing the flags may remove others
    ("STORE 1 -FLAGS (\\Seen \\Deleted)",),
    ("UID STORE 1:* +FLAGS (\\Deleted)",),
    ("STORE 1 +FLAGS.SILENT (\\Answered)",),
    ("STORE 1 +FLAGS ($Label1)",),
    ("COPY 1 INBOX",),
    ("UID COPY 1:* Corbeille",),
    ("MOVE 1 Corbeille",),
    ("UID MOVE 1:* Corbeille",),
    ("EXPUNGE",),
    ("UID EXPUNGE 1:*",),
    ("APPEND INBOX ", Lit(MESSAGE)),
    ("APPEND Brouillons (\\Draft) ", Lit(MESSAGE)),
    ("CREATE Nouveau",),
    ("DELETE Corbeille",),
    ("RENAME Corbeille Autre",),
    ("SUBSCRIBE INBOX",),
    ("UNSUBSCRIBE INBOX",),
]


async def modern_state(stack: Stack, bal: str) -> Any:
    assert stack.mock.platform is not None
    store = stack.mock.platform.store(bal)
    folders = await store.list_folders()
    return [
        (
            folder,
            [(m.uid, sorted(m.flags)) for m in (await store.folder_state(folder.name)).messages],
        )
        for folder in folders
    ]


async def historic_state(stack: Stack, bal: str) -> Any:
    folders = await historic_call(stack.mock, "Folder", "listFolders", {"email": bal})
    messages = await historic_messages(stack.mock, bal)
    return folders, [(m["messageId"], m["folderId"], sorted(m["flags"])) for m in messages]


async def every_change_is_refused_and_nothing_changes(stack: Stack, bal: str, state: Any) -> None:
    before = await state(stack, bal)
    client = await Raw.open(stack.imap_port)
    token = await stack.token("sec-bernard")
    await client.ok(f"AUTHENTICATE XOAUTH2 {xoauth2_b64(bal, token).decode()}")
    selected = await client.ok("SELECT INBOX")
    assert b" OK [READ-ONLY] " in selected.tagged
    assert any(b"[PERMANENTFLAGS (\\Seen)]" in line for line in selected.untagged)
    for command in REFUSED:
        reply = await client.command(*command)
        assert reply.status == "NO", (command, reply)
        assert b"[NOPERM]" in reply.tagged, (command, reply)
    await client.ok("CLOSE")  # for her an UNSELECT: expunges nothing
    await client.ok("SELECT INBOX")
    await client.ok("FETCH 1 BODY.PEEK[HEADER]")
    await client.ok("LOGOUT")
    await client.close()
    assert await state(stack, bal) == before
    assert stack.gateway.audit is not None
    assert stack.gateway.delegations is not None
    await stack.gateway.audit.flush()
    events = await stack.gateway.delegations.audit_for(bal, limit=1000)
    refusals = [e for e in events if e.result == "refused:noperm" and e.actor_idnat == BERNARD]
    assert len(refusals) == len(REFUSED)  # every refusal is in the trail
    selects = [e for e in events if e.action == "select" and e.actor_idnat == BERNARD]
    assert [e.result for e in selects] == ["ok", "ok"]  # each SELECT too, either platform


async def test_on_a_modern_bal(stack: Stack) -> None:
    registry = stack.gateway.delegations
    assert registry is not None
    await registry.grant(await identity(stack, "dr-moreau"), MOREAU, BERNARD, ["read"])
    await every_change_is_refused_and_nothing_changes(stack, MOREAU, modern_state)


async def test_on_a_historic_bal(legacy: Stack) -> None:
    await every_change_is_refused_and_nothing_changes(legacy, DUPONT, historic_state)
