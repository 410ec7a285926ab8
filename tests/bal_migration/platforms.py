"""Real platforms for the migration tests at scale and under chaos: a gateway in front of
the mock operator (its modern platform as "modern", its historic one through its own IMAP
as "historic-imap") and a private Dovecot as "dovecot", the checkpoints in a database of
the test's choice; and a Dovecot maildir written directly, to seed thousands of messages
in a second rather than APPEND them one by one."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import grp
import os
import pwd
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from delegation.db import create_engine
from gateway.backends.base import Backend, MailboxAccess
from gateway.bal_migration.checkpoint import Checkpoints
from gateway.db import migrate_gateway
from gateway.imap import mutf7
from gateway.settings import BackendSettings, MockSettings, Settings
from mock_operator.server import MockOperator
from tests.conftest import require_peer
from tests.dovecot import (
    MAIL_GROUP,
    MAIL_USER,
    MASTER,
    MASTER_PW,
    DovecotServer,
    dovecot_available,
    dovecot_backend,
    start_dovecot,
)
from tests.gateway.test_backend_tools import DUPONT, with_historic_imap
from tests.support.stacks import Stack, gateway_settings, running_stack

DOVECOT_BAL = "claire.martin@medecin.mssante.fr"
MODERN_BAL = "nouvelle.bal@medecin.mssante.fr"  # provisioned on the mock's modern platform
HISTORIC_BAL = DUPONT  # a persona of the mock's historic platform
USER_PW = "user-secret-42"
_MAILDIR_FLAGS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S"}


@dataclass
class Platforms:
    stack: Stack
    server: DovecotServer
    checkpoints: Checkpoints
    database_url: str

    def backend(self, name: str) -> Backend:
        assert self.stack.gateway.router is not None
        return self.stack.gateway.router.backends[name]

    def settings(self, name: str) -> BackendSettings:
        return self.stack.gateway.settings.backends[name]

    async def access(self, name: str, bal: str) -> MailboxAccess:
        return await self.backend(name).tools(bal)


@contextlib.asynccontextmanager
async def running_platforms(
    tmp_path: Path,
    mock_settings: MockSettings,
    *,
    database_url: str | None = None,
    special_use: bool = False,
    extra_users: Mapping[str, str] | None = None,
) -> AsyncIterator[Platforms]:
    """The three platforms, the checkpoints' database migrated (the gateway's unless
    `database_url`); `extra_users`: more BAL on the Dovecot."""
    require_peer(dovecot_available(), "Dovecot (dovecot-imapd) not installed or not root")
    server = await asyncio.to_thread(
        start_dovecot,
        user=DOVECOT_BAL,
        password=USER_PW,
        master_user=MASTER,
        master_password=MASTER_PW,
        special_use=special_use,
        extra_users=extra_users,
    )
    try:

        def configure(settings: Settings, mock: MockOperator) -> None:
            with_historic_imap(settings, mock)  # "modern", "historic", "historic-imap"
            settings.backends["dovecot"] = dovecot_backend(server)

        async with running_stack(
            gateway_settings(tmp_path / "gateway"), mock_settings, tmp_path / "mock", configure
        ) as stack:
            await stack.mock.platform.ensure_mailbox(MODERN_BAL, "899700000007", "Eve MOREAU")
            # the gateway's own database by default: its cut-over finds the copy's journal
            url = database_url or stack.gateway.settings.database()
            await migrate_gateway(url)
            engine = create_engine(url)
            try:
                yield Platforms(stack, server, Checkpoints(engine), url)
            finally:
                await engine.dispose()
    finally:
        await asyncio.to_thread(server.stop)


def revealed(settings: BackendSettings) -> dict[str, Any]:
    """`settings` as JSON-ready values with their secrets in clear, for a child process
    (written to a 0600 file, never logged)."""
    values = settings.model_dump(mode="python")
    for key, value in values.items():
        if isinstance(value, SecretStr):
            values[key] = value.get_secret_value()
        elif isinstance(value, Path):
            values[key] = str(value)
    return values


def write_maildir(
    server: DovecotServer,
    user: str,
    folder: str,
    messages: Iterable[tuple[bytes, frozenset[str], dt.datetime]],
) -> int:
    """Put `messages` (bytes, system flags, internal date) in `user`'s `folder` as files of
    Dovecot's maildir, as a delivery agent would; Dovecot gives them UIDs when it next
    looks. The folder must not be selected by a client meanwhile. Returns the count."""
    home = server.base / "mail" / user
    path = home if folder == "INBOX" else home / ("." + mutf7.encode(folder).replace("/", "."))
    uid, gid = pwd.getpwnam(MAIL_USER).pw_uid, grp.getgrnam(MAIL_GROUP).gr_gid
    made = [home, path]
    for sub in ("cur", "new", "tmp"):
        made.append(path / sub)
    for directory in made:
        directory.mkdir(exist_ok=True)
    if folder != "INBOX":
        (path / "maildirfolder").touch()
        made.append(path / "maildirfolder")
    for item in made:
        os.chown(item, uid, gid)
    count = 0
    stamp = uuid.uuid4().hex[:8]
    for count, (body, flags, when) in enumerate(messages, start=1):
        letters = "".join(sorted(_MAILDIR_FLAGS[f] for f in flags if f in _MAILDIR_FLAGS))
        name = (
            path / "cur" / f"{int(when.timestamp())}.M{count}P{stamp}.lps,S={len(body)}:2,{letters}"
        )
        name.write_bytes(body)
        os.chown(name, uid, gid)
        os.utime(name, (when.timestamp(), when.timestamp()))
    return count
