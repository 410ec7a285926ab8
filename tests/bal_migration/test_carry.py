"""`carry.rebind` on SQLite and PostgreSQL: a BAL's historic ids follow their messages to
another backend (UIDs that swap places, a renamed folder), ids without a copy become
tombstones that the next syncMessages reports, stale rows of an earlier stay are dropped,
and a rollback (`carry_back`, driven by two journals) brings the ids home."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.bal_migration.carry import Move, carry_back, rebind
from gateway.bal_migration.checkpoint import Checkpoints
from gateway.legacy_front.ids import HistoricIds, Location

BAL = "claire.martin@medecin.mssante.fr"


@pytest.fixture
def engine(migrated_engine: AsyncEngine) -> AsyncEngine:
    return migrated_engine


async def _seed(engine: AsyncEngine) -> tuple[dict[int, int], dict[int, int], int]:
    """On "old": INBOX (UIDVALIDITY 7) UIDs 1, 2, 3 and Patients (UIDVALIDITY 9) UID 4."""
    ids = HistoricIds(engine).of("old", BAL)
    await ids.folder_ids({"INBOX": 2, "Patients": None})
    inbox = await ids.observe("INBOX", 7, {1: "\\seen", 2: "", 3: ""}, complete=True)
    patients = await ids.observe("Patients", 9, {4: "$mdnsent"}, complete=True)
    token = (await ids.changes_since(None)).token
    return inbox, patients, token


async def test_ids_follow_their_messages(engine: AsyncEngine) -> None:
    inbox, patients, token = await _seed(engine)
    stale = HistoricIds(engine).of("new", BAL)  # an earlier stay on "new"
    await stale.folder_ids({"INBOX": 2})
    await stale.observe("INBOX", 1, {1: ""}, complete=True)
    moves = {
        # 1 and 2 swap UIDs (a collision mid-way if done in one step); 3 was not copied
        ("INBOX", 7): Move("INBOX", 70, {1: 2, 2: 1}),
        ("Patients", 9): Move("Dossiers/Patients", 90, {4: 40}),
    }
    assert await rebind(engine, BAL, "old", "new", moves) == 3
    new = HistoricIds(engine).of("new", BAL)
    assert await new.locate([*inbox.values(), *patients.values()]) == {
        inbox[1]: Location("INBOX", 70, 2),
        inbox[2]: Location("INBOX", 70, 1),
        patients[4]: Location("Dossiers/Patients", 90, 40),
    }
    changes = await new.changes_since(token)  # the old token still answers
    assert changes.deleted == [inbox[3]]
    assert changes.modified == {}
    assert await new.folder_ids({"INBOX": 2, "Dossiers/Patients": None}) == {
        "INBOX": 2,
        "Dossiers/Patients": 257,
    }
    # the old rows stay as they were: the legacy front reads them until the switch
    stay = await HistoricIds(engine).of("old", BAL).changes_since(None)
    assert stay.modified[inbox[3]] == Location("INBOX", 7, 3)
    # the observation the legacy front makes next finds the same ids, unchanged
    seen = await new.observe("INBOX", 70, {1: "", 2: "\\seen"}, complete=True)
    assert seen == {2: inbox[1], 1: inbox[2]}
    assert (await new.changes_since(changes.token)).modified == {}


class FakeAccess:
    """What `carry_back` asks of the platforms: their folders' UIDVALIDITY."""

    def __init__(self, validities: dict[str, int]) -> None:
        self.validities = validities

    async def uidvalidity(self, folder: str) -> int:
        return self.validities[folder]


async def test_a_rollback_brings_the_ids_home(engine: AsyncEngine) -> None:
    inbox, _, _ = await _seed(engine)
    journals = Checkpoints(engine)
    forward = await journals.journal(BAL, "old", "new")
    folder = await forward.folder("INBOX", 7, "INBOX")
    await forward.intend(folder, [(u, f"d{u}", frozenset()) for u in (1, 2, 3)], 0)
    await forward.complete(folder, [(1, 11), (2, 12), (3, 13)])
    moves = {("INBOX", 7): Move("INBOX", 70, {1: 11, 2: 12, 3: 13})}
    await rebind(engine, BAL, "old", "new", moves)
    new = HistoricIds(engine).of("new", BAL)
    arrived = await new.observe("INBOX", 70, {11: "\\seen", 12: "", 13: "", 14: ""})
    # the way back copies only what arrived meanwhile: 14 becomes 4 on "old"
    back = await journals.journal(BAL, "new", "old")
    returned = await back.folder("INBOX", 70, "INBOX")
    await back.intend(returned, [(14, "d14", frozenset())], 3)
    await back.complete(returned, [(14, 4)])
    carried = await carry_back(
        engine,
        BAL,
        forward,
        back,
        FakeAccess({"INBOX": 70}),  # type: ignore[arg-type]
        FakeAccess({"INBOX": 7}),  # type: ignore[arg-type]
    )
    assert carried == 4
    home = HistoricIds(engine).of("old", BAL)
    assert await home.locate([*inbox.values(), arrived[14]]) == {
        inbox[1]: Location("INBOX", 7, 1),
        inbox[2]: Location("INBOX", 7, 2),
        inbox[3]: Location("INBOX", 7, 3),
        arrived[14]: Location("INBOX", 7, 4),
    }
