"""What the legacy front's tests share: the operations wired on a running stack as the
gateway wires them, and an imaplib session on the mock's modern platform (master login)
to check every effect where the BAL really lives."""

from __future__ import annotations

import asyncio
import email.header
import imaplib
import re
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway.imap import mutf7
from gateway.legacy_front.ids import HistoricIds
from gateway.legacy_front.operations import GatewayHistoricOperations
from gateway.legacy_front.sessions import SessionPool
from gateway.mss.historic_ws import Caller
from mock_operator.server import MockOperator
from tests.support.stacks import Stack

MARTIN = "claire.martin@medecin.mssante.fr"
DUPONT = "jean.dupont@medecin.mssante.fr"
DURAND = "luc.durand@infirmier.mssante.fr"
IDNAT = {
    "dr-martin": "899700000001",
    "dr-dupont": "899700000002",
    "sec-bernard": "899700000003",
    "ide-durand": "899700000004",
    "dr-moreau": "899700000007",
}
SOFTWARE = "LPS-HISTO-4.2"

T = TypeVar("T")


@dataclass
class Accesses:
    """What the `on_access` hook was told."""

    calls: list[tuple[str, str, str | None, str | None, str | None, bool, bool]] = field(
        default_factory=list
    )

    def __call__(
        self,
        service: str,
        operation: str,
        caller: Caller,
        bal: str | None,
        backend: str | None,
        delegated: bool,
        ok: bool,
    ) -> None:
        self.calls.append((operation, caller.idnat, caller.software, bal, backend, delegated, ok))


@asynccontextmanager
async def legacy_operations(
    stack: Stack, *, pool: SessionPool | None = None
) -> AsyncIterator[tuple[GatewayHistoricOperations, Accesses]]:
    gateway = stack.gateway
    assert gateway.delegations is not None
    assert gateway.router is not None
    assert gateway.engine is not None
    hook = Accesses()
    operations = GatewayHistoricOperations(
        gateway.delegations,
        gateway.router,
        HistoricIds(gateway.engine),
        backends=gateway.settings.backends,
        decisions=gateway.decisions,
        audit=gateway.audit,
        on_access=hook,
        pool=pool,
    )
    try:
        yield operations, hook
    finally:
        await operations.aclose()


async def call(
    operations: GatewayHistoricOperations,
    persona: str,
    service: str,
    operation: str,
    payload: dict[str, Any],
) -> dict[str, Any]:
    caller = Caller(IDNAT[persona], software=SOFTWARE, means="card")
    return await operations.call(service, operation, caller, payload)


class ModernImap:
    """imaplib on the mock's modern platform, as `bal` through the master login."""

    def __init__(self, mock: MockOperator, bal: str) -> None:
        self.mock = mock
        self.bal = bal

    def _open(self) -> imaplib.IMAP4:
        assert self.mock.master is not None
        assert self.mock.tls_cert is not None
        client = imaplib.IMAP4("127.0.0.1", self.mock.imap_port)
        context = ssl.create_default_context(cafile=str(self.mock.tls_cert))
        context.check_hostname = False
        client.starttls(context)
        secret = f"{self.bal}\0{self.mock.master.user}\0{self.mock.master.password}".encode()
        client.authenticate("PLAIN", lambda _: secret)
        return client

    async def run(self, work: Callable[[imaplib.IMAP4], T]) -> T:
        def session() -> T:
            client = self._open()
            try:
                return work(client)
            finally:
                client.logout()

        return await asyncio.to_thread(session)

    async def listing(self) -> dict[str, str]:
        """Decoded folder name → its LIST attributes."""

        def work(client: imaplib.IMAP4) -> dict[str, str]:
            _, lines = client.list()
            names = {}
            for line in lines:
                assert isinstance(line, bytes)
                attributes, _, name = line.decode().partition(' "/" ')
                if name.startswith('"'):
                    name = re.sub(r"\\(.)", r"\1", name[1:-1])
                names[mutf7.decode(name)] = attributes
            return names

        return await self.run(work)

    async def folders(self) -> list[str]:
        return list(await self.listing())

    async def special(self, use: str) -> str:
        """The name of the folder with special use `use` (\\Sent, \\Drafts...)."""
        return next(n for n, attributes in (await self.listing()).items() if use in attributes)

    async def messages(self, folder: str) -> dict[str, tuple[str, ...]]:
        """Subject → flags of every message of `folder`."""

        def work(client: imaplib.IMAP4) -> dict[str, tuple[str, ...]]:
            typ, _ = client.select(f'"{mutf7.encode(folder)}"', readonly=True)
            assert typ == "OK", folder
            _, data = client.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            found: dict[str, tuple[str, ...]] = {}
            for item in data:
                if not isinstance(item, tuple):
                    continue
                flags = imaplib.ParseFlags(item[0])
                encoded = " ".join(item[1].decode().split(":", 1)[1].split())
                subject = str(email.header.make_header(email.header.decode_header(encoded)))
                found[subject] = tuple(sorted(f.decode() for f in flags))
            return found

        return await self.run(work)

    async def count(self, folder: str, subject: str) -> int:
        def work(client: imaplib.IMAP4) -> int:
            client.select(f'"{mutf7.encode(folder)}"', readonly=True)
            _, found = client.uid("SEARCH", "SUBJECT", f'"{subject}"')
            return len(found[0].split())

        return await self.run(work)

    async def fetch_raw(self, folder: str, subject: str) -> bytes:
        def work(client: imaplib.IMAP4) -> bytes:
            client.select(f'"{mutf7.encode(folder)}"', readonly=True)
            _, found = client.uid("SEARCH", "SUBJECT", f'"{subject}"')
            uids = found[0].split()
            assert uids, subject
            _, data = client.uid("FETCH", uids[-1], "(BODY.PEEK[])")
            item = data[0]
            assert isinstance(item, tuple)
            return item[1]

        return await self.run(work)

    async def store(self, folder: str, subject: str, change: str, flags: str) -> None:
        def work(client: imaplib.IMAP4) -> None:
            client.select(f'"{mutf7.encode(folder)}"')
            _, found = client.uid("SEARCH", "SUBJECT", f'"{subject}"')
            for uid in found[0].split():
                client.uid("STORE", uid, change, flags)
            if "Deleted" in flags:
                client.expunge()

        await self.run(work)
