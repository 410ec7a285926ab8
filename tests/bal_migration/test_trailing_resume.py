"""A restarted gateway takes up the trailing syncs of the cut-overs not finished, and only
those (the checkpoints' states say which)."""

from __future__ import annotations

from delegation.db import create_engine
from gateway.bal_migration.checkpoint import Checkpoints
from gateway.bal_migration.gate import BalGate
from gateway.bal_migration.jobs import Migrations, Moves
from gateway.db import migrate_gateway


async def test_resume_takes_up_unfinished_cut_overs(fresh_db_url: str) -> None:
    await migrate_gateway(fresh_db_url)
    engine = create_engine(fresh_db_url)
    try:
        checkpoints = Checkpoints(engine)
        states = {"a@x.fr": "cut over", "b@x.fr": "finished", "c@x.fr": "copied"}
        for bal, state in states.items():
            journal = await checkpoints.journal(bal, "historic", "modern")
            await journal.set_state(state)

        async def nowhere(bal: str) -> str | None:
            return None

        async def nothing(*_: object) -> None:
            return None

        async def move(bal: str, backend: str) -> None:
            return None

        migrations = Migrations(
            checkpoints,
            locate=nowhere,
            backends=dict,
            settings={},
            audit=nothing,
            moves=Moves(BalGate(), move, lambda bal: None),
        )
        assert await migrations.resume() == 1
        assert migrations.trailing == ["a@x.fr"]
        await migrations.aclose()
    finally:
        await engine.dispose()
