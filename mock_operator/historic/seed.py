"""The historic platform's seeded BAL: the personas whose own BAL is on the historic platform.

The messages are those of `mock_operator.seed` (the same deterministic RFC 5322 mail the
modern platform gets, the IHE_XDM.ZIP one included), delivered through `deliver_mime`
so they take the structured form the historic web services expose. Idempotent: a BAL
is filled only when it is created.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.mss.historic_ws import INBOX, SENT
from mock_operator.historic.operations import HistoricService
from mock_operator.historic.store import HistoricStore, flags_from_imap
from mock_operator.personas import Persona
from mock_operator.seed import seed_messages

_FOLDERS = {"INBOX": INBOX, "Envoyés": SENT}


async def seed_historic(
    target: HistoricService | HistoricStore, personas: Iterable[Persona]
) -> list[str]:
    """Create the historic BAL of `personas` with their messages; the addresses created."""
    store = target.store if isinstance(target, HistoricService) else target
    created: list[str] = []
    for persona in personas:
        if persona.platform != "historic" or persona.bal is None:
            continue
        if not await store.ensure_account(persona.bal, persona.idnat, persona.display_name):
            continue
        for message in seed_messages(persona):
            folder = _FOLDERS.get(message.folder, INBOX)
            await store.deliver_mime(
                persona.bal,
                message.raw,
                folder,
                flags_from_imap(message.flags, folder),
                received_at=message.internal_date,
            )
        created.append(persona.bal.lower())
    return created
