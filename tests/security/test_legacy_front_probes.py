"""Hostile input of the historic web services reaching a modern BAL's IMAP through the
gateway's legacy front: folder names with CR/LF, quotes or wildcards, part numbers that
would close a FETCH, ids past every integer, search texts with IMAP syntax. Each is
refused with the historic code (or carried as data), and the IMAP session stays sound."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.legacy_front.operations import GatewayHistoricOperations
from gateway.mss.historic_ws import HistoricError
from gateway.settings import MockSettings, Settings
from tests.gateway.legacy_front_support import MARTIN, ModernImap, call, legacy_operations
from tests.support.stacks import Stack, configure_with, gateway_settings, running_stack


@pytest.fixture
async def legacy(
    tmp_path: Path, mock_settings: MockSettings
) -> AsyncIterator[tuple[Stack, GatewayHistoricOperations]]:
    settings: Settings = gateway_settings(tmp_path / "gateway")
    async with (
        running_stack(settings, mock_settings, tmp_path / "mock", configure_with()) as stack,
        legacy_operations(stack) as (operations, _),
    ):
        yield stack, operations


SERVICES = {"createFolder": "Folder", "listFolders": "Folder", "downloadAttachment": "Attachment"}


async def code_of(operations: GatewayHistoricOperations, op: str, **payload: Any) -> int:
    """The historic code `op` is refused with (0: accepted)."""
    try:
        service = SERVICES.get(op, "Item")
        await call(operations, "dr-martin", service, op, {"email": MARTIN, **payload})
    except HistoricError as error:
        return error.code
    return 0


async def test_folder_names_cannot_break_out_of_their_imap_string(
    legacy: tuple[Stack, GatewayHistoricOperations],
) -> None:
    stack, operations = legacy
    imap = ModernImap(stack.mock, MARTIN)
    before = set(await imap.folders())
    for name, code in [
        ('x"\r\nA1 DELETE INBOX', 36),
        ("a\nb", 36),
        ("tout*", 36),
        ("pour%", 36),
        ("../INBOX", 36),
        (" espace", 36),
        ("x" * 129, 39),
        ("", 28),
        ("\ud800", 36),
    ]:
        assert await code_of(operations, "createFolder", name=name) == code, name
    assert set(await imap.folders()) == before
    # quotes and backslashes are data: the folder has exactly that name
    assert await code_of(operations, "createFolder", name='Dr "House" \\ notes') == 0
    assert set(await imap.folders()) - before == {'Dr "House" \\ notes'}
    for folder_id, code in [("99999999999", 36), ("-2", 36), ("2; DROP", 36), (2**31 - 1, 41)]:
        assert await code_of(operations, "listFolders", folderId=folder_id) == code, folder_id


async def test_part_numbers_ids_and_search_texts_stay_data(
    legacy: tuple[Stack, GatewayHistoricOperations],
) -> None:
    _, operations = legacy
    found = await call(
        operations, "dr-martin", "Item", "searchMessages",
        {"email": MARTIN, "searchCriteria": {"query": {"folderId": 2}}},
    )  # fmt: skip
    letter = next(m for m in found["messages"] if m["attachments"])
    for part in ["2]\r\nA1 LOGOUT", "2 BODY[]", "0", "2.", "1" * 60, "2<0.10>"]:
        code = await code_of(
            operations, "downloadAttachment", messageId=letter["messageId"], part=part
        )
        assert code == 46, part
    for ids in (["99999999999999999999"], ["1 OR 1"], ["-1"], ["0"], ["1:*"]):
        assert (
            await code_of(operations, "updateMessages", messageIds=ids, operation="READ") == 45
        ), ids
    hostile = 'x" OR ALL\r\n* BYE "'
    searched = await call(
        operations, "dr-martin", "Item", "searchMessages",
        {"email": MARTIN, "searchCriteria": {"query": {"content": hostile, "subject": hostile}}},
    )  # fmt: skip
    assert searched == {"messages": [], "total": 0}
    # the session (pooled) still answers
    listed = await call(operations, "dr-martin", "Folder", "listFolders", {"email": MARTIN})
    assert any(f["id"] == 2 for f in listed["folders"])
