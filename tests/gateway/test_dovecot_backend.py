"""The gateway's IMAP front carrying sessions to a REAL Dovecot (Debian dovecot-imapd 2.3).

A byte-exact client, `imaplib`, `aioimaplib` and `curl` send the same commands through the
gateway (AUTHENTICATE XOAUTH2 with a PSC token from the mock) and directly to Dovecot
(LOGIN with the user's password), and must get the same answers, command for command.
Normalised only: the greeting and the login reply (the gateway's own), the CAPABILITY list
(filtered to what the relay carries: a subset of Dovecot's plus LITERAL+), the literal
continuation text (the gateway answers it itself) and Dovecot's timing suffix in tagged
replies ("(0.001 + 0.000 secs)"), which differs from one run of a command to the next.
Writes are compared between two accounts seeded alike (one through the gateway, one
direct), where each folder's UIDVALIDITY is its own.

One Dovecot serves the module (Dr Martin's BAL, Luc Durand's BAL and its direct-only twin,
a master user the gateway logs in with: SASL PLAIN, authzid = the BAL); a second one serves
Eve Moreau's BAL only, to be killed under live sessions.

The last section holds tests of places where the gateway is not transparent yet: they fail
until the gateway is fixed (each docstring says input, expected, got).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import imaplib
import random
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aioimaplib
import pytest
import pytest_asyncio

from gateway.settings import Settings
from mock_operator.server import MockOperator
from tests.conftest import quick_mock_settings, require_peer
from tests.dovecot import (
    MASTER,
    MASTER_PW,
    DovecotServer,
    dovecot_available,
    dovecot_backend,
    start_dovecot,
)
from tests.support.sasl import xoauth2_b64
from tests.support.stacks import Stack, gateway_settings, start_stack

pytestmark = pytest.mark.asyncio(loop_scope="module")

HOST = "127.0.0.1"
TIMEOUT = 10.0
MARTIN = "claire.martin@medecin.mssante.fr"
MARTIN_PW = "martin-dovecot-pw"
DURAND = "luc.durand@infirmier.mssante.fr"
DURAND_PW = "durand-dovecot-pw"
TWIN = "jumeau.durand@infirmier.mssante.fr"  # only ever used directly: Durand's twin
TWIN_PW = "jumeau-dovecot-pw"
MOREAU = "eve.moreau@medecin.mssante.fr"  # on the second Dovecot, killed in a test
MOREAU_PW = "moreau-dovecot-pw"
BERNARD_IDNAT = "899700000003"


# -- the seeded messages ------------------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    raw: bytes
    flags: str  # "" or "(\\Seen ...)"
    date: str  # RFC 3501 date-time, quoted


def _crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


def _b64_lines(data: bytes) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))


def _messages() -> list[Seed]:
    rng = random.Random(20240304)
    plain = _crlf(
        "From: Dr Jean DUPONT <jean.dupont@medecin.mssante.fr>\n"
        "To: Dr Claire MARTIN <claire.martin@medecin.mssante.fr>\n"
        "Subject: Compte rendu de consultation\n"
        "Date: Mon, 04 Mar 2024 09:15:00 +0100\n"
        "Message-ID: <cr-0001@medecin.mssante.fr>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=us-ascii\n"
        "\n"
        "Chere consoeur,\n\nVeuillez trouver le compte rendu de consultation de M. X.\n"
        "Bien confraternellement,\nJ. Dupont\n"
    )
    encoded = _crlf(
        "From: =?ISO-8859-1?Q?Fran=E7oise_B=E9ranger?= <f.beranger@labo.mssante.fr>\n"
        "To: =?UTF-8?B?Q2xhaXJlIE1BUlRJTg==?= <claire.martin@medecin.mssante.fr>\n"
        "Cc: secretariat@labo.mssante.fr\n"
        "Subject: =?UTF-8?Q?R=C3=A9sultats_d=27analyses_=E2=80=93_Mme_H=C3=A9l=C3=A8ne_L?=\n"
        " =?UTF-8?Q?=C3=A9vy?=\n"
        "Date: Tue, 05 Mar 2024 14:02:11 +0100\n"
        "Message-ID: <res-0002@labo.mssante.fr>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: 8bit\n"
        "\n"
        "Bonjour Docteur,\n\nL'échographie abdominale est normale. Hémoglobine : 13,2 g/dl.\n"
    )
    pdf = b"%PDF-1.4\n" + rng.randbytes(3000) + b"\n%%EOF\n"
    attachment = _crlf(
        "From: Centre hospitalier <imagerie@ch-exemple.mssante.fr>\n"
        "To: claire.martin@medecin.mssante.fr\n"
        "Subject: Compte rendu d'imagerie\n"
        "Date: Wed, 06 Mar 2024 08:30:00 +0100\n"
        "Message-ID: <img-0003@ch-exemple.mssante.fr>\n"
        "X-MSS-NIL: 1234\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="=_sep_0003"\n'
        "\n"
        "This is a multi-part message in MIME format.\n"
        "--=_sep_0003\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: quoted-printable\n"
        "\n"
        "Veuillez trouver ci-joint le compte rendu d'=C3=A9chographie.\n"
        "--=_sep_0003\n"
        'Content-Type: application/pdf; name="=?UTF-8?Q?compte-rendu_=C3=A9cho.pdf?="\n'
        "Content-Transfer-Encoding: base64\n"
        "Content-Disposition: attachment; filename*=UTF-8''compte-rendu%20%C3%A9cho.pdf\n"
        "Content-Description: Compte rendu\n"
        "\n" + _b64_lines(pdf) + "\n"
        "--=_sep_0003--\n"
    )
    zipped = b"PK\x03\x04" + rng.randbytes(1500)
    xdm = _crlf(
        "From: Dr Paul LEROY <paul.leroy@medecin.mssante.fr>\n"
        "To: claire.martin@medecin.mssante.fr\n"
        "Reply-To: secretariat@cabinet-leroy.mssante.fr\n"
        "In-Reply-To: <cr-0001@medecin.mssante.fr>\n"
        "Subject: Lettre de liaison et document CDA\n"
        "Date: Thu, 07 Mar 2024 17:45:00 +0100\n"
        "Message-ID: <xdm-0004@medecin.mssante.fr>\n"
        "X-MSS-DOCUMENT: IHE_XDM.ZIP\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="outer-0004"\n'
        "\n"
        "--outer-0004\n"
        'Content-Type: multipart/alternative; boundary="alt-0004"\n'
        "\n"
        "--alt-0004\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "\n"
        "Lettre de liaison en pièce jointe (IHE_XDM).\n"
        "--alt-0004\n"
        "Content-Type: text/html; charset=utf-8\n"
        "\n"
        "<p>Lettre de liaison en pi&egrave;ce jointe (IHE_XDM).</p>\n"
        "--alt-0004--\n"
        "--outer-0004\n"
        'Content-Type: application/zip; name="IHE_XDM.ZIP"\n'
        "Content-Transfer-Encoding: base64\n"
        'Content-Disposition: attachment; filename="IHE_XDM.ZIP"\n'
        "\n" + _b64_lines(zipped) + "\n"
        "--outer-0004\n"
        "Content-Type: message/rfc822\n"
        "\n"
        "From: Laboratoire <labo@labo.mssante.fr>\n"
        "To: paul.leroy@medecin.mssante.fr\n"
        "Subject: Transfert: bilan\n"
        "Date: Thu, 07 Mar 2024 10:00:00 +0100\n"
        "\n"
        "Bilan joint.\n"
        "--outer-0004--\n"
    )
    big = rng.randbytes(760_000)
    large = _crlf(
        "From: PACS <pacs@ch-exemple.mssante.fr>\n"
        "To: claire.martin@medecin.mssante.fr\n"
        "Subject: Images DICOM (volumineux)\n"
        "Date: Fri, 08 Mar 2024 11:11:11 +0100\n"
        "Message-ID: <pacs-0005@ch-exemple.mssante.fr>\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="big-0005"\n'
        "\n"
        "--big-0005\n"
        "Content-Type: text/plain; charset=us-ascii\n"
        "\n"
        "Serie d'images jointe.\n"
        "--big-0005\n"
        'Content-Type: application/dicom; name="serie.dcm"\n'
        "Content-Transfer-Encoding: base64\n"
        "\n" + _b64_lines(big) + "\n"
        "--big-0005--\n"
    )
    draft = _crlf(
        "From: Dr Claire MARTIN <claire.martin@medecin.mssante.fr>\n"
        "To: Luc DURAND <luc.durand@infirmier.mssante.fr>\n"
        "Subject: Brouillon : soins =?UTF-8?Q?=C3=A0?= domicile\n"
        "Date: Sat, 09 Mar 2024 07:00:00 +0100\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: quoted-printable\n"
        "\n"
        "Pansement =C3=A0 refaire tous les deux jours.\n"
    )
    assert 1_000_000 < len(large) < 1_200_000
    return [
        Seed(plain, "(\\Seen)", '"04-Mar-2024 09:15:10 +0100"'),
        Seed(encoded, "(\\Flagged)", '"05-Mar-2024 14:02:30 +0100"'),
        Seed(attachment, "(\\Seen \\Answered)", '"06-Mar-2024 08:30:05 +0100"'),
        Seed(xdm, "($Label1)", '"07-Mar-2024 17:45:09 +0100"'),
        Seed(large, "", '"08-Mar-2024 11:11:20 +0100"'),
        Seed(draft, "(\\Draft \\Seen)", '"09-Mar-2024 07:00:00 +0100"'),
    ]


MESSAGES = _messages()
LARGE_UID = 5
ARCHIVES = [
    dataclasses.replace(MESSAGES[0], flags="(\\Seen \\Deleted)"),
    dataclasses.replace(MESSAGES[1], flags=""),
]
SENT_FOLDER = "Envoy&AOk-s"  # "Envoyés" in modified UTF-7
FOLDERS = {"INBOX": MESSAGES, "Archives": ARCHIVES, SENT_FOLDER: [MESSAGES[5]]}
NEW_MESSAGE = _crlf(
    "From: Dr Claire MARTIN <claire.martin@medecin.mssante.fr>\n"
    "To: Luc DURAND <luc.durand@infirmier.mssante.fr>\n"
    "Subject: =?UTF-8?Q?Pr=C3=A9cision?= sur les soins\n"
    "Date: Sun, 10 Mar 2024 10:00:00 +0100\n"
    "MIME-Version: 1.0\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "Content-Transfer-Encoding: 8bit\n"
    "\n"
    "Merci de noter la précision suivante : pansement sec.\n"
)


# -- direct access with imaplib (blocking: run in a thread) ---------------------------------


def quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def check(answer: tuple[str, Any]) -> Any:
    typ, data = answer
    assert typ == "OK", answer
    return data


@contextlib.contextmanager
def direct_imaplib(server: DovecotServer, user: str) -> Iterator[imaplib.IMAP4]:
    m = imaplib.IMAP4(server.host, server.port, timeout=TIMEOUT)
    try:
        check(m.login(user, server.users[user]))
        yield m
        with contextlib.suppress(imaplib.IMAP4.abort, OSError):
            m.logout()
    finally:
        with contextlib.suppress(OSError):
            m.shutdown()


def seed_account(server: DovecotServer, user: str, folders: dict[str, list[Seed]]) -> None:
    with direct_imaplib(server, user) as m:
        for folder, seeds in folders.items():
            if folder != "INBOX":
                check(m.create(quote(folder)))
                check(m.subscribe(quote(folder)))
            for seed in seeds:
                check(m.append(quote(folder), seed.flags or None, seed.date, seed.raw))
        for folder in folders:  # \Recent goes to the first session selecting: this one
            check(m.select(quote(folder)))


def snapshot(server: DovecotServer, user: str) -> dict[str, Any]:
    """Everything a mailbox holds, read directly: folders, subscriptions, and per folder its
    status and every message's UID, flags, date, size and digest. (LIST's \\Marked and
    \\UnMarked say who looked last, not what is there: left out.)"""
    with direct_imaplib(server, user) as m:
        names = [_MARKS.sub(b"", line) for line in check(m.list('""', '"*"')) if line]
        subscribed = sorted(line for line in check(m.lsub('""', '"*"')) if line)
        state: dict[str, Any] = {"list": sorted(names), "lsub": subscribed}
        for line in names:
            assert isinstance(line, bytes)
            name = line.rsplit(b' "." ', 1)[1].decode()
            status = check(m.status(name, "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN)"))
            (exists,) = check(m.select(name, readonly=True))
            messages = []
            if exists != b"0":
                items = check(m.fetch("1:*", "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])"))
                for item in items:
                    if isinstance(item, tuple):
                        messages.append((item[0], hashlib.sha256(item[1]).hexdigest()))
            state[name] = (status, messages)
        return state


def flags_of(server: DovecotServer, user: str, folder: str = "INBOX") -> dict[int, bytes]:
    with direct_imaplib(server, user) as m:
        check(m.select(quote(folder), readonly=True))
        out = {}
        for line in check(m.fetch("1:*", "(UID FLAGS)")):
            if line:
                found = re.match(rb"\d+ \(UID (\d+) FLAGS \(([^)]*)\)\)", line)
                assert found, line
                kept = [flag for flag in found.group(2).split() if flag != b"\\Recent"]
                out[int(found.group(1))] = b" ".join(kept)
        return out


def restore_flags(server: DovecotServer, user: str, saved: dict[int, bytes]) -> None:
    with direct_imaplib(server, user) as m:
        check(m.select("INBOX"))
        for uid, flags in saved.items():
            check(m.uid("STORE", str(uid), "FLAGS", b"(" + flags + b")"))


# -- a byte-exact client ----------------------------------------------------------------------

_MARKS = re.compile(rb" ?\\(?:Marked|UnMarked)", re.IGNORECASE)
_LITERAL_AT_END = re.compile(rb"\{(\d+)\}\r\n\Z")
_SYNC_LITERAL = re.compile(rb"\{(\d+)\}\r\n")
_TIMING = re.compile(rb" \(\d+\.\d+ \+ \d+\.\d+(?: \+ \d+\.\d+)? secs\)")


@dataclass
class Reply:
    responses: list[bytes]  # untagged responses then the tagged one, literals inlined
    continuations: int = 0

    @property
    def tagged(self) -> bytes:
        return self.responses[-1]

    @property
    def status(self) -> bytes:
        return self.tagged.split(b" ", 2)[1]

    def normal(self) -> list[bytes]:
        """Dovecot's tagged replies end with how long the command took: not content."""
        return [*self.responses[:-1], _TIMING.sub(b"", self.tagged)]


class Raw:
    """Exact command bytes out (synchronising literals wait for "+"), responses in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.greeting = b""
        self.login_reply: Reply | None = None

    @classmethod
    async def open(cls, port: int) -> Raw:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(HOST, port, limit=1 << 22), TIMEOUT
        )
        client = cls(reader, writer)
        client.greeting = await client.response()
        return client

    async def response(self, wait: float = TIMEOUT) -> bytes:
        async with asyncio.timeout(wait):
            line = await self.reader.readline()
            if not line.endswith(b"\n"):
                raise ConnectionError(f"connection closed (got {line!r})")
            out = bytearray(line)
            while (found := _LITERAL_AT_END.search(line)) is not None:
                out += await self.reader.readexactly(int(found.group(1)))
                line = await self.reader.readline()
                out += line
            return bytes(out)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def command(self, tag: bytes, text: bytes, wait: float = TIMEOUT) -> Reply:
        data = tag + b" " + text + b"\r\n"
        reply = Reply([])
        pos = 0
        while (found := _SYNC_LITERAL.search(data, pos)) is not None:
            await self.send(data[pos : found.end()])
            pos = found.end()
            while True:
                line = await self.response(wait)
                if line.startswith(b"+"):
                    reply.continuations += 1
                    break
                reply.responses.append(line)
                if line.startswith(tag + b" "):
                    return reply  # the literal was refused
            end = pos + int(found.group(1))
            await self.send(data[pos:end])
            pos = end
        await self.send(data[pos:])
        while True:
            line = await self.response(wait)
            reply.responses.append(line)
            if line.startswith(tag + b" "):
                return reply

    async def rest(self, wait: float = TIMEOUT) -> bytes:
        """Everything until the server closes the connection."""
        async with asyncio.timeout(wait):
            data = bytearray()
            while chunk := await self.reader.read(65536):
                data += chunk
            return bytes(data)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def assert_same(through: Reply | list[bytes], direct: Reply | list[bytes], what: object) -> None:
    """Equal, with a short message (a 1 MiB literal makes pytest's diff useless)."""
    ours = through.normal() if isinstance(through, Reply) else through
    theirs = direct.normal() if isinstance(direct, Reply) else direct
    if ours == theirs:
        return
    if len(ours) != len(theirs):
        pytest.fail(
            f"{what!r}: {len(ours)} responses through the gateway, {len(theirs)} direct:\n"
            f"  gateway: {[line[:200] for line in ours[:12]]}\n"
            f"  direct:  {[line[:200] for line in theirs[:12]]}"
        )
    for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        if a != b:
            at = next(i for i in range(min(len(a), len(b)) + 1) if a[i : i + 1] != b[i : i + 1])
            pytest.fail(
                f"{what!r}: response {index} differs at byte {at} "
                f"(lengths {len(a)} vs {len(b)}):\n"
                f"  gateway: {a[max(0, at - 80) : at + 120]!r}\n"
                f"  direct:  {b[max(0, at - 80) : at + 120]!r}"
            )


# -- fixtures -----------------------------------------------------------------------------------


@dataclass
class Env:
    dovecot: DovecotServer
    doomed: DovecotServer
    stack: Stack

    @property
    def port(self) -> int:
        return self.stack.imap_port


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    require_peer(dovecot_available(), "Dovecot (dovecot-imapd) not installed")
    dovecot = await asyncio.to_thread(
        start_dovecot,
        user=MARTIN,
        password=MARTIN_PW,
        extra_users={DURAND: DURAND_PW, TWIN: TWIN_PW},
        master_user=MASTER,
        master_password=MASTER_PW,
    )
    doomed: DovecotServer | None = None
    stack: Stack | None = None
    try:
        doomed = await asyncio.to_thread(
            start_dovecot,
            user=MOREAU,
            password=MOREAU_PW,
            master_user=MASTER,
            master_password=MASTER_PW,
        )
        await asyncio.to_thread(seed_account, dovecot, MARTIN, FOLDERS)
        for user in (DURAND, TWIN):
            await asyncio.to_thread(seed_account, dovecot, user, {"INBOX": MESSAGES})
        await asyncio.to_thread(seed_account, doomed, MOREAU, {"INBOX": MESSAGES[:2]})
        base = tmp_path_factory.mktemp("dovecot-backend")
        mock_settings = quick_mock_settings()
        main, second = dovecot, doomed

        def configure(settings: Settings, mock: MockOperator) -> None:
            settings.backends = {
                "dovecot": dovecot_backend(main),
                "doomed": dovecot_backend(second),
            }
            settings.routing.default = "dovecot"
            settings.routing.mailboxes = {MOREAU: "doomed"}

        stack = await start_stack(
            gateway_settings(base / "gateway"), mock_settings, base / "mock", configure
        )
        yield Env(dovecot, doomed, stack)
    finally:
        if stack is not None:
            await stack.gateway.stop()
            await stack.mock.stop()
        for server in (dovecot, doomed):
            if server is not None:
                await asyncio.to_thread(server.stop)


@pytest_asyncio.fixture(loop_scope="module")
async def opened(env: Env) -> AsyncIterator[list[Raw]]:
    """Raw clients a test opens are closed after it."""
    clients: list[Raw] = []
    yield clients
    for client in clients:
        await client.close()


@pytest.fixture
def through(env: Env, opened: list[Raw]) -> Callable[..., Any]:
    """A raw client logged in through the gateway (AUTHENTICATE XOAUTH2, SASL-IR)."""

    async def log_in(persona: str = "dr-martin", bal: str = MARTIN) -> Raw:
        client = await Raw.open(env.port)
        opened.append(client)
        token = await env.stack.token(persona)
        reply = await client.command(b"L1", b"AUTHENTICATE XOAUTH2 " + xoauth2_b64(bal, token))
        assert reply.status == b"OK", reply
        client.login_reply = reply
        return client

    return log_in


@pytest.fixture
def direct(env: Env, opened: list[Raw]) -> Callable[..., Any]:
    """A raw client logged in to Dovecot itself with the user's password."""

    async def log_in(user: str = MARTIN, server: DovecotServer | None = None) -> Raw:
        server = server or env.dovecot
        client = await Raw.open(server.port)
        opened.append(client)
        reply = await client.command(
            b"L1", b"LOGIN " + user.encode() + b" " + server.users[user].encode()
        )
        assert reply.status == b"OK", reply
        client.login_reply = reply
        return client

    return log_in


async def pair(through: Callable[..., Any], direct: Callable[..., Any]) -> tuple[Raw, Raw]:
    return await through(), await direct()


def capabilities(line: bytes) -> list[bytes]:
    found = re.search(rb"CAPABILITY ([^\]\r\n]*)", line)
    assert found, line
    return found.group(1).split()


# -- CAPABILITY ---------------------------------------------------------------------------------


async def test_capabilities_after_login_are_dovecots_filtered(through, direct):
    gw, dc = await pair(through, direct)
    ours = await gw.command(b"C1", b"CAPABILITY")
    theirs = await dc.command(b"C1", b"CAPABILITY")
    assert ours.status == theirs.status == b"OK"
    carried = capabilities(ours.responses[0])
    dovecots = capabilities(theirs.responses[0])
    assert set(carried) <= {*dovecots, b"LITERAL+"}, set(carried) - set(dovecots)
    for needed in (b"IMAP4rev1", b"LITERAL+", b"IDLE", b"NAMESPACE", b"UIDPLUS", b"MOVE"):
        assert needed in carried
    # what would desynchronise the relay is not offered, though Dovecot has it
    for dropped in (b"CONDSTORE", b"QRESYNC", b"ESEARCH", b"BINARY", b"NOTIFY", b"SEARCHRES"):
        assert dropped in dovecots
        assert dropped not in carried
    assert not [cap for cap in carried if cap.startswith(b"AUTH=")]
    # the login reply announced the same list
    assert gw.login_reply is not None
    assert capabilities(gw.login_reply.tagged) == carried
    assert _TIMING.sub(b"", ours.tagged) == _TIMING.sub(b"", theirs.tagged)
    # nor can it be switched on: ENABLE is answered by the gateway, enabling nothing
    enabled = await gw.command(b"E1", b"ENABLE CONDSTORE QRESYNC")
    assert enabled.responses == [b"* ENABLED\r\n", b"E1 OK ENABLE completed\r\n"]
    assert (await dc.command(b"E1", b"ENABLE CONDSTORE")).responses[0] == b"* ENABLED CONDSTORE\r\n"


# -- reads, byte for byte -----------------------------------------------------------------------

UTF8_SUBJECT = "résultats".encode()
UTF8_BODY = "échographie".encode()

#: (what to select first, the command). Every response must be byte-identical.
READS: list[tuple[bytes | None, bytes]] = [
    (None, b"NAMESPACE"),
    (None, b'LIST "" "*"'),
    (None, b'LIST "" %'),
    (None, b'LIST "" "Envoy&AOk-s"'),
    (None, b'LIST "" "Arch*"'),
    (None, b'LSUB "" "*"'),
    (None, b"STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)"),
    (None, b'STATUS "Envoy&AOk-s" (MESSAGES UIDNEXT UNSEEN)'),
    (None, b"STATUS Archives (MESSAGES UNSEEN)"),
    (None, b"STATUS Nonexistent (MESSAGES)"),
    (None, b"SELECT Nonexistent"),
    (None, b"EXAMINE Archives"),
    (None, b"SELECT INBOX"),
    (None, b'ID ("name" "pytest" "version" "1")'),
    (None, b"NOOP"),
    (b"SELECT INBOX", b"FETCH 1:* (FLAGS ENVELOPE BODYSTRUCTURE RFC822.SIZE INTERNALDATE)"),
    (b"SELECT INBOX", b"UID FETCH 1:* (UID FLAGS BODY)"),
    (b"SELECT INBOX", b"FETCH 1:* ALL"),
    (b"SELECT INBOX", b"FETCH 2:4 FULL"),
    (b"SELECT INBOX", b"FETCH 1,3,5 FAST"),
    (b"SELECT INBOX", b"UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT FROM DATE)])"),
    (b"SELECT INBOX", b"UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS.NOT (RECEIVED)])"),
    (b"SELECT INBOX", b"FETCH 1:* (BODY.PEEK[HEADER] RFC822.HEADER)"),
    *[(b"SELECT INBOX", b"UID FETCH %d (BODY.PEEK[])" % uid) for uid in range(1, 7)],
    (b"SELECT INBOX", b"UID FETCH 3 (BODY.PEEK[1.MIME] BODY.PEEK[2.MIME] BODY.PEEK[2])"),
    (b"SELECT INBOX", b"UID FETCH 4 (BODY.PEEK[1.2] BODY.PEEK[3.HEADER] BODY.PEEK[3.TEXT])"),
    (b"SELECT INBOX", b"UID FETCH 4 (BODY.PEEK[1] BODY.PEEK[3] BODY.PEEK[2.MIME])"),
    (b"SELECT INBOX", b"FETCH 1:* (BODY.PEEK[]<0.100>)"),
    (b"SELECT INBOX", b"FETCH 5 (BODY.PEEK[TEXT]<1000.2048> BODY.PEEK[2]<500000.70000>)"),
    (b"SELECT INBOX", b"FETCH 5 (RFC822.SIZE BODY.PEEK[]<1048000.100000>)"),
    (b"EXAMINE INBOX", b"FETCH 1:* (BODY[]<0.100>)"),  # not PEEK, but read-only: no \Seen
    (b"EXAMINE INBOX", b"FETCH 2 (RFC822 RFC822.TEXT)"),
    (b"SELECT INBOX", b"FETCH 99 (FLAGS)"),
    (b"SELECT INBOX", b"SEARCH ALL"),
    (b"SELECT INBOX", b"SEARCH SEEN"),
    (b"SELECT INBOX", b"SEARCH UNSEEN"),
    (b"SELECT INBOX", b"SEARCH FLAGGED"),
    (b"SELECT INBOX", b"SEARCH ANSWERED DRAFT"),
    (b"SELECT INBOX", b"SEARCH OR FLAGGED DRAFT"),
    (b"SELECT INBOX", b"SEARCH NOT SEEN"),
    (b"SELECT INBOX", b"SEARCH KEYWORD $Label1"),
    (b"SELECT INBOX", b"SEARCH FROM dupont"),
    (b"SELECT INBOX", b'SEARCH SUBJECT "compte rendu"'),
    (b"SELECT INBOX", b"SEARCH LARGER 500000"),
    (b"SELECT INBOX", b"SEARCH SMALLER 2000"),
    (b"SELECT INBOX", b"SEARCH SINCE 6-Mar-2024 BEFORE 9-Mar-2024"),
    (b"SELECT INBOX", b"SEARCH SENTON 5-Mar-2024"),
    (b"SELECT INBOX", b'SEARCH HEADER Message-ID "<cr-0001@medecin.mssante.fr>"'),
    (b"SELECT INBOX", b'SEARCH HEADER X-MSS-DOCUMENT ""'),
    (b"SELECT INBOX", b"SEARCH TEXT IHE_XDM"),
    (b"SELECT INBOX", b"SEARCH 2:4 UNSEEN"),
    (b"SELECT INBOX", b"UID SEARCH UID 2:* NOT DELETED"),
    (b"SELECT INBOX", b"SEARCH CHARSET UTF-8 SUBJECT {%d}\r\n" % len(UTF8_SUBJECT) + UTF8_SUBJECT),
    (b"SELECT INBOX", b"SEARCH CHARSET UTF-8 BODY {%d+}\r\n" % len(UTF8_BODY) + UTF8_BODY),
    (
        b"SELECT INBOX",
        b"UID SEARCH CHARSET UTF-8 OR FROM {%d}\r\n%s TEXT %s"
        % (len("Françoise".encode()), "Françoise".encode(), b'"pansement"'),
    ),
    (b"SELECT INBOX", b"SEARCH CHARSET ISO-8859-1 SUBJECT {9}\r\nR\xe9sultats"),
    (b"SELECT INBOX", b"CHECK"),
    (b"SELECT INBOX", b"UNSELECT"),
    (b"EXAMINE Archives", b"CLOSE"),
    (b"EXAMINE Archives", b"FETCH 1:* (UID FLAGS)"),
    # the client's own spelling, re-serialised by the gateway: same answers
    (b"SELECT INBOX", b"UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (Subject From)])"),
    (b"SELECT INBOX", b"uid fetch 1:2 (body.peek[header.fields (subject)] flags)"),
    (b"SELECT INBOX", b"FETCH 1 (BODY.PEEK[HEADER.FIELDS (Subject)]<0.10>)"),
    (b"SELECT INBOX", b"FETCH 3,1 (FLAGS)"),
    (b"SELECT INBOX", b"FETCH 4:2 (UID)"),
    (b"SELECT INBOX", b"FETCH 1:2,1 (UID)"),
    (b"SELECT INBOX", b"FETCH * (UID)"),
    (b"SELECT INBOX", b"FETCH 1 (INTERNALDATE UID RFC822.SIZE FLAGS)"),
    (b"SELECT INBOX", b"FETCH 1 BODYSTRUCTURE"),
    (b"SELECT INBOX", b"FETCH 1 (BODY.PEEK[1] BODY.PEEK[2])"),
    (b"SELECT INBOX", b"FETCH 3 (BODY.PEEK[2.1])"),
    (b"SELECT INBOX", b"UID FETCH 100:200 FLAGS"),
    (b"SELECT INBOX", b"UID SEARCH UID 100:200"),
    (b"SELECT INBOX", b'SEARCH CHARSET UTF-8 SUBJECT "r\xc3\xa9sultats"'),
    (b"SELECT INBOX", b"SEARCH CHARSET utf-8 SUBJECT {3}\r\nabc"),
    (b"SELECT INBOX", b"SEARCH CHARSET X-UNKNOWN SUBJECT foo"),
    (b"SELECT INBOX", b"SEARCH NOT (SEEN FLAGGED)"),
    (b"SELECT INBOX", b"SEARCH OR (SEEN) (DRAFT)"),
    (b"SELECT INBOX", b"SEARCH SINCE 06-Mar-2024"),
    (b"SELECT INBOX", b'SEARCH HEADER SUBJECT ""'),
    (b"SELECT INBOX", b"SEARCH UID 1:* NEW"),
    (b"SELECT INBOX", b"SEARCH BEFORE 1-Jan-2000"),
    (b"SELECT INBOX", b"UID EXPUNGE 99"),  # no such UID: nothing changes
    (b"SELECT INBOX", b"UID STORE 99 +FLAGS (\\Flagged)"),
    (b"SELECT INBOX", b"COPY 99 Archives"),
    (b"SELECT INBOX", b"EXAMINE Archives"),
    (b"SELECT INBOX", b"SELECT INBOX"),
    (None, b"SELECT Envoy&AOk-s"),
    (None, b'LIST "" ""'),
    (None, b'LIST "Archives" "%"'),
    (None, b'LIST "" "INBOX*"'),
    (None, b'LIST "" "inbox"'),
    (None, b"SELECT inbox"),
    (None, b'LIST "" "R&-D*"'),
    (None, b'STATUS "a\\"b" (MESSAGES)'),
    (None, b"UNSELECT"),
    (None, b"FETCH 1 FLAGS"),
    (None, b"CLOSE"),
]


@pytest.mark.parametrize(
    ("setup", "command"),
    READS,
    ids=[f"{i:02d}-{c[:48].decode('latin-1')}" for i, (_, c) in enumerate(READS)],
)
async def test_read_command_same_bytes_as_dovecot(through, direct, setup, command):
    gw, dc = await pair(through, direct)
    if setup is not None:
        assert_same(await gw.command(b"S1", setup), await dc.command(b"S1", setup), setup)
    ours = await gw.command(b"A1", command)
    theirs = await dc.command(b"A1", command)
    assert_same(ours, theirs, command)
    assert ours.responses  # something came back
    if b"{" in command and b"+}" not in command:
        # a synchronising literal: the client was told to go on, by the gateway itself
        assert ours.continuations == theirs.continuations == 1


async def test_large_message_byte_identical_and_whole(env, through, direct):
    gw, dc = await pair(through, direct)
    for client in (gw, dc):
        assert (await client.command(b"S", b"EXAMINE INBOX")).status == b"OK"
    command = b"UID FETCH %d (RFC822.SIZE BODY.PEEK[])" % LARGE_UID
    ours, theirs = await gw.command(b"F", command), await dc.command(b"F", command)
    assert_same(ours, theirs, command)
    fetched = ours.responses[0]
    assert MESSAGES[LARGE_UID - 1].raw in fetched
    assert b"RFC822.SIZE %d " % len(MESSAGES[LARGE_UID - 1].raw) in fetched


async def test_select_reports_dovecots_mailbox_state(through, direct):
    """EXISTS, FLAGS (with the $Label1 keyword), PERMANENTFLAGS, UIDVALIDITY, UIDNEXT."""
    gw, dc = await pair(through, direct)
    ours = await gw.command(b"S", b"SELECT INBOX")
    assert_same(ours, await dc.command(b"S", b"SELECT INBOX"), "SELECT")
    text = b"".join(ours.responses)
    assert b"* 6 EXISTS\r\n" in text
    assert b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1)" in text
    assert b"[PERMANENTFLAGS (" in text
    assert b"[UIDVALIDITY " in text
    assert b"[UIDNEXT 7]" in text
    assert ours.tagged.startswith(b"S OK [READ-WRITE]")


async def test_logout_same_and_connection_closed(through, direct):
    gw, dc = await pair(through, direct)
    ours = await gw.command(b"Z", b"LOGOUT")
    theirs = await dc.command(b"Z", b"LOGOUT")
    assert_same(ours, theirs, "LOGOUT")
    assert ours.responses[0].startswith(b"* BYE")
    # nothing more (no second BYE from the gateway), then the connection ends
    assert await gw.rest() == await dc.rest() == b""


# -- writes: Durand through the gateway, his twin directly, same commands ------------------------

_UIDVALIDITY_VALUES = re.compile(rb"(UIDVALIDITY |COPYUID |APPENDUID )\d+")


def _without_uidvalidity(reply: Reply) -> list[bytes]:
    """Two accounts' folders have their own UIDVALIDITY: the only thing allowed to differ."""
    return [_UIDVALIDITY_VALUES.sub(rb"\1<uidvalidity>", line) for line in reply.normal()]


WRITES: list[bytes] = [
    b"SELECT INBOX",
    b"STORE 1 +FLAGS (\\Flagged)",
    b"STORE 2 FLAGS (\\Seen $Label2)",
    b"STORE 2 -FLAGS.SILENT ($Label2)",
    b"UID STORE 3 +FLAGS (\\Answered)",
    b"FETCH 6 (BODY[]<0.100>)",
    b"STORE 6 -FLAGS (\\Seen)",
    b"FETCH 6 (RFC822)",
    b"CREATE Travail",
    b"CREATE Dossiers.Patients",
    b"CREATE Travail",
    b"COPY 1:2 Travail",
    b"UID COPY 4 Travail",
    b"UID MOVE 3 Travail",
    b"MOVE 1 Dossiers.Patients",
    b'APPEND Travail (\\Seen $Label1) "10-Mar-2024 10:00:00 +0100" {%d}\r\n%s'
    % (len(NEW_MESSAGE), NEW_MESSAGE),
    b'APPEND Travail () "11-Mar-2024 11:00:00 +0000" {%d+}\r\n%s'
    % (len(MESSAGES[0].raw), MESSAGES[0].raw),
    b'APPEND Nonexistent "11-Mar-2024 11:00:00 +0000" {%d}\r\n%s'
    % (len(MESSAGES[0].raw), MESSAGES[0].raw),
    b'APPEND Travail (\\Flagged) "12-Mar-2024 12:00:00 -0330" {%d}\r\n%s'
    % (len(MESSAGES[LARGE_UID - 1].raw), MESSAGES[LARGE_UID - 1].raw),
    b"STORE 3 +FLAGS (\\seen $MixedCase lowercase)",
    b"STORE 3 -FLAGS ($mixedcase)",
    b"STORE 1 +FLAGS.SILENT (\\Deleted)",
    b"EXPUNGE",
    b"FETCH 1:* (UID FLAGS)",
    b"UID STORE 5:6 +FLAGS (\\Deleted)",
    b"UID EXPUNGE 5",
    b"FETCH 1:* (UID FLAGS)",
    b"STATUS Travail (MESSAGES RECENT UIDNEXT UNSEEN)",
    b'RENAME Travail "Travail 2024"',
    b'RENAME Dossiers "Dossiers classes"',
    b'LIST "" "*"',
    b'SELECT "Travail 2024"',
    b"FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODY.PEEK[])",
    b"UID MOVE 2 INBOX",
    b"STORE 1:* +FLAGS (\\Deleted)",
    b"CLOSE",
    b'DELETE "Dossiers classes.Patients"',
    b'DELETE "Dossiers classes"',
    b'CREATE "Envoy&AOk-s 2"',
    b'SUBSCRIBE "Envoy&AOk-s 2"',
    b'LSUB "" "*"',
    b'LIST "" "*"',
    b'STATUS "Travail 2024" (MESSAGES UIDNEXT UNSEEN)',
    b"EXAMINE INBOX",
    b"FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE)",
    b"LOGOUT",
]


async def test_holder_writes_give_dovecots_answers_and_state(env, through, direct):
    """Durand drives his BAL through the gateway, the same commands drive his twin's
    (seeded identically) directly: the same answers, then the same mailboxes."""
    gw = await through("ide-durand", DURAND)
    dc = await direct(TWIN)
    for index, command in enumerate(WRITES):
        tag = b"W%d" % index
        ours, theirs = await gw.command(tag, command), await dc.command(tag, command)
        assert_same(_without_uidvalidity(ours), _without_uidvalidity(theirs), command)
        if b"{" in command and b"+}" not in command and b"Nonexistent" not in command:
            assert ours.continuations == theirs.continuations == 1
    assert await gw.rest() == await dc.rest() == b""
    mine = await asyncio.to_thread(snapshot, env.dovecot, DURAND)
    twins = await asyncio.to_thread(snapshot, env.dovecot, TWIN)
    for state in (mine, twins):
        for name, value in state.items():
            if name not in ("list", "lsub"):
                status, messages = value
                state[name] = ([_UIDVALIDITY_VALUES.sub(rb"\1<v>", s) for s in status], messages)
    assert mine == twins
    assert sorted(mine) == ['"Envoy&AOk-s 2"', '"Travail 2024"', "INBOX", "list", "lsub"]
    assert len(mine["INBOX"][1]) == 3
    assert mine['"Travail 2024"'][1] == []


# -- imaplib ------------------------------------------------------------------------------------


def _imaplib_through(env: Env, token: str, bal: str = MARTIN) -> imaplib.IMAP4:
    m = imaplib.IMAP4(HOST, env.port, timeout=TIMEOUT)
    check(
        m.authenticate("XOAUTH2", lambda _: f"user={bal}\x01auth=Bearer {token}\x01\x01".encode())
    )
    return m


def _untimed(answer: tuple[str, Any]) -> tuple[str, Any]:
    typ, data = answer
    return typ, [_TIMING.sub(b"", d) if isinstance(d, bytes) else d for d in data]


def _select_with_state(m: imaplib.IMAP4) -> tuple[Any, ...]:
    """SELECT's answer and every untagged response it brought (imaplib keeps them)."""
    answer = m.select("INBOX")
    return answer, sorted(m.untagged_responses.items())


def _search_literal(m: imaplib.IMAP4, *criteria: str, literal: bytes, uid: bool = False) -> Any:
    m.literal = literal  # imaplib sends it as a synchronising literal, waiting for "+"
    return m.uid("SEARCH", *criteria) if uid else m.search(*criteria)


#: imaplib calls run on both sessions in turn, command for command.
IMAPLIB_READS: list[tuple[str, Callable[[imaplib.IMAP4], Any]]] = [
    ("namespace", lambda m: m.namespace()),
    ("list", lambda m: m.list()),
    ("list %", lambda m: m.list('""', "%")),
    ("lsub", lambda m: m.lsub()),
    ("status", lambda m: m.status("INBOX", "(MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)")),
    ("status sent", lambda m: m.status(quote(SENT_FOLDER), "(MESSAGES UNSEEN)")),
    ("select", _select_with_state),
    (
        "fetch",
        lambda m: m.fetch("1:*", "(FLAGS ENVELOPE BODYSTRUCTURE RFC822.SIZE INTERNALDATE)"),
    ),
    ("bodies", lambda m: m.uid("FETCH", "1:*", "(BODY.PEEK[])")),
    ("mime", lambda m: m.uid("FETCH", "3", "(BODY.PEEK[1.MIME] BODY.PEEK[2.MIME])")),
    ("partial", lambda m: m.fetch("1:*", "(BODY.PEEK[]<0.100>)")),
    ("parts", lambda m: m.fetch("4", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[3])")),
    ("search all", lambda m: m.search(None, "ALL")),
    ("search unseen", lambda m: m.search(None, "UNSEEN")),
    ("search or", lambda m: m.search(None, "OR", "FLAGGED", "KEYWORD", "$Label1")),
    ("search since", lambda m: m.search(None, "SINCE", "6-Mar-2024")),
    ("uid search", lambda m: m.uid("SEARCH", "LARGER", "100000")),
    ("search utf-8", lambda m: _search_literal(m, "UTF-8", "SUBJECT", literal=UTF8_SUBJECT)),
    (
        "uid search utf-8",
        lambda m: _search_literal(m, "CHARSET", "UTF-8", "BODY", literal=UTF8_BODY, uid=True),
    ),
    ("check", lambda m: m.check()),
    ("noop", lambda m: m.noop()),
    ("close", lambda m: m.close()),
]


async def test_imaplib_reads_same_through_gateway(env):
    token = await env.stack.token("dr-martin")

    def run() -> list[tuple[str, Any, Any]]:
        answers = []
        gw = _imaplib_through(env, token)
        try:
            with direct_imaplib(env.dovecot, MARTIN) as dc:
                for name, call in IMAPLIB_READS:
                    ours, theirs = call(gw), call(dc)
                    if name != "select":
                        ours, theirs = _untimed(ours), _untimed(theirs)
                    answers.append((name, ours, theirs))
        finally:
            gw.logout()
        return answers

    answers = await asyncio.to_thread(run)
    for name, ours, theirs in answers:
        assert ours == theirs, name
        assert ours[0] == "OK" or name == "select", (name, ours)
    bodies = next(ours for name, ours, _ in answers if name == "bodies")[1]
    fetched = [item[1] for item in bodies if isinstance(item, tuple)]
    assert fetched == [seed.raw for seed in MESSAGES]  # every byte, the 1 MiB one too


def _imaplib_writes(m: imaplib.IMAP4, folder: str) -> list[tuple[str, Any]]:
    """Holder's changes, all inside `folder` (created here) and its child."""
    sub = f"{folder}.Sous-dossier"
    answers = []
    answers.append(m.create(quote(folder)))
    answers.append(m.create(quote(sub)))
    for seed in MESSAGES[:4]:
        answers.append(m.append(quote(folder), seed.flags or None, seed.date, seed.raw))
    answers.append(
        m.append(quote(folder), "(\\Draft)", '"10-Mar-2024 10:00:00 +0100"', NEW_MESSAGE)
    )
    answers.append(m.select(quote(folder)))
    answers.append(m.store("1", "+FLAGS", "(\\Flagged)"))
    answers.append(m.store("2", "-FLAGS", "(\\Flagged)"))
    answers.append(m.uid("STORE", "3", "+FLAGS.SILENT", "(\\Seen $Urgent)"))
    answers.append(m.copy("1:2", quote(sub)))
    answers.append(m.uid("MOVE", "4", quote(sub)))
    answers.append(m.store("1", "+FLAGS", "(\\Deleted)"))
    answers.append(m.expunge())
    answers.append(m.uid("STORE", "5", "+FLAGS", "(\\Deleted)"))
    answers.append(m.uid("EXPUNGE", "5"))
    answers.append(m.close())
    answers.append(m.rename(quote(sub), quote(f"{folder}.Class&AOk-")))
    return answers


async def test_imaplib_holder_writes_land_in_dovecot(env):
    """Dr Martin, through the gateway with imaplib (APPEND with a synchronising literal),
    creates, appends, flags, copies, moves, expunges; Dovecot then holds exactly what the
    gateway shows her, and what the same commands give directly on another folder."""
    token = await env.stack.token("dr-martin")

    def through_gateway() -> list[tuple[str, Any]]:
        m = _imaplib_through(env, token)
        try:
            return _imaplib_writes(m, "Travail imaplib")
        finally:
            m.logout()

    def directly() -> list[tuple[str, Any]]:
        with direct_imaplib(env.dovecot, MARTIN) as m:
            return _imaplib_writes(m, "Direct imaplib")

    ours = await asyncio.to_thread(through_gateway)
    theirs = await asyncio.to_thread(directly)
    assert [typ for typ, _ in ours] == [typ for typ, _ in theirs] == ["OK"] * len(ours)

    def folder_state(m: imaplib.IMAP4, folder: str) -> list[Any]:
        out = []
        for name in (folder, f"{folder}.Sous-dossier", f"{folder}.Class&AOk-"):
            out.append(m.status(quote(name), "(MESSAGES UIDNEXT UNSEEN)")[0])
            if out[-1] == "OK":
                check(m.select(quote(name), readonly=True))
                out.append(m.fetch("1:*", "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])"))
        return out

    def compare() -> tuple[list[Any], list[Any], list[Any]]:
        m = _imaplib_through(env, token)
        try:
            seen_through = folder_state(m, "Travail imaplib")
        finally:
            m.logout()
        with direct_imaplib(env.dovecot, MARTIN) as m:
            stored = folder_state(m, "Travail imaplib")
            reference = folder_state(m, "Direct imaplib")
            check(m.unselect())
            for folder in ("Travail imaplib", "Direct imaplib"):
                for name in (f"{folder}.Class&AOk-", folder):
                    check(m.delete(quote(name)))
        return seen_through, stored, reference

    seen_through, stored, reference = await asyncio.to_thread(compare)
    assert seen_through == stored == reference
    # status of the three folders: the parent kept 2 (of 5), Sous-dossier is gone, Classé has 3
    assert seen_through[0] == "OK"
    assert seen_through[2] == "NO"
    assert seen_through[3] == "OK"
    fetched = [item for item in seen_through[1][1] if isinstance(item, tuple)]
    assert [item[1] for item in fetched] == [MESSAGES[1].raw, MESSAGES[2].raw]
    assert b"(UID 3 FLAGS (\\Answered \\Seen $Urgent)" in fetched[1][0]
    moved = [item for item in seen_through[4][1] if isinstance(item, tuple)]
    assert [item[1] for item in moved] == [MESSAGES[0].raw, MESSAGES[1].raw, MESSAGES[3].raw]


# -- aioimaplib ---------------------------------------------------------------------------------


async def _aio_reads(client: aioimaplib.IMAP4) -> list[Any]:
    out: list[Any] = []

    def keep(response: Any) -> None:
        lines = [bytes(line) for line in response.lines]
        out.append((response.result, [_TIMING.sub(b"", line) for line in lines]))

    keep(await client.namespace())
    keep(await client.list('""', '"*"'))
    keep(await client.status("INBOX", "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN)"))
    keep(await client.select("INBOX"))
    keep(await client.fetch("1:*", "(FLAGS ENVELOPE BODYSTRUCTURE RFC822.SIZE INTERNALDATE)"))
    keep(await client.uid("fetch", "1:*", "(BODY.PEEK[])"))
    keep(await client.uid("fetch", "3", "(BODY.PEEK[1.MIME])"))
    keep(await client.fetch("1:*", "(BODY.PEEK[]<0.100>)"))
    keep(await client.search("UNSEEN", charset=None))
    keep(await client.search("FROM", '"Dupont"'))
    keep(await client.uid_search("OR", "FLAGGED", "DRAFT", charset=None))
    keep(await client.noop())
    keep(await client.logout())
    return out


async def test_aioimaplib_reads_same_through_gateway(env):
    token = await env.stack.token("dr-martin")
    gw = aioimaplib.IMAP4(HOST, env.port, timeout=TIMEOUT)
    await gw.wait_hello_from_server()
    assert (await gw.xoauth2(MARTIN, token)).result == "OK"
    dc = aioimaplib.IMAP4(HOST, env.dovecot.port, timeout=TIMEOUT)
    await dc.wait_hello_from_server()
    assert (await dc.login(MARTIN, MARTIN_PW)).result == "OK"
    for client in (gw, dc):  # as clients do: ask again once logged in
        await client.protocol.capability()
    assert gw.has_capability("NAMESPACE")
    assert not gw.has_capability("ESEARCH")
    ours = await _aio_reads(gw)
    theirs = await _aio_reads(dc)
    for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert a == b, f"answer {index} differs"
    assert ours[3][0] == "OK"
    assert b"6 EXISTS" in ours[3][1]
    assert MESSAGES[LARGE_UID - 1].raw in ours[5][1]


async def test_idle_sees_a_message_appended_directly(env):
    """IDLE through the gateway and directly, on the same folder; a third, direct
    connection APPENDs: both idlers are told of it, alike; DONE ends both alike."""
    folder = "Veille"

    def make_folder() -> None:
        with direct_imaplib(env.dovecot, MARTIN) as m:
            check(m.create(folder))
            check(m.append(folder, None, MESSAGES[0].date, MESSAGES[0].raw))

    def append_one() -> None:
        with direct_imaplib(env.dovecot, MARTIN) as m:
            check(m.append(folder, "(\\Seen)", MESSAGES[1].date, MESSAGES[1].raw))

    def remove_folder() -> None:
        with direct_imaplib(env.dovecot, MARTIN) as m:
            check(m.delete(folder))

    await asyncio.to_thread(make_folder)
    try:
        gw = aioimaplib.IMAP4(HOST, env.port, timeout=TIMEOUT)
        await gw.wait_hello_from_server()
        assert (await gw.xoauth2(MARTIN, await env.stack.token("dr-martin"))).result == "OK"
        dc = aioimaplib.IMAP4(HOST, env.dovecot.port, timeout=TIMEOUT)
        await dc.wait_hello_from_server()
        assert (await dc.login(MARTIN, MARTIN_PW)).result == "OK"
        for client in (gw, dc):
            assert (await client.select(folder)).result == "OK"
        idles = [await client.idle_start(timeout=30) for client in (gw, dc)]
        started = time.monotonic()
        await asyncio.to_thread(append_one)
        pushes: list[list[bytes]] = []
        for client in (gw, dc):
            seen: list[bytes] = []
            while b"2 EXISTS" not in seen:
                seen += [bytes(line) for line in await client.wait_server_push(timeout=5)]
            pushes.append([line for line in seen if line.endswith(b"EXISTS")])
        assert pushes[0] == pushes[1] == [b"2 EXISTS"]
        assert time.monotonic() - started < 5
        done = []
        for client, idle in zip((gw, dc), idles, strict=True):
            client.idle_done()
            response = await asyncio.wait_for(idle, 5)
            done.append((response.result, [_TIMING.sub(b"", bytes(x)) for x in response.lines]))
        assert done[0] == done[1]
        assert done[0][0] == "OK"
        # the session goes on normally after IDLE
        fetched = [await c.fetch("2", "(BODY.PEEK[])") for c in (gw, dc)]
        assert fetched[0].lines[:-1] == fetched[1].lines[:-1]
        assert MESSAGES[1].raw in bytes(fetched[0].lines[1])
        for client in (gw, dc):
            await client.logout()
    finally:
        await asyncio.to_thread(remove_folder)


# -- curl ---------------------------------------------------------------------------------------

CURLS: list[tuple[str, list[str]]] = [
    ("/INBOX;UID=1", []),
    ("/INBOX;UID=3", []),
    (f"/INBOX;UID={LARGE_UID}", []),
    ("/INBOX;UID=4;SECTION=1.2", []),
    ("/INBOX;UID=3;SECTION=2.MIME", []),
    ("/INBOX;UID=2;SECTION=HEADER.FIELDS%20(SUBJECT)", []),
    ("/INBOX", ["-X", "FETCH 1:* (FLAGS)"]),
    ("/INBOX", ["-X", "UID FETCH 1:* (RFC822.SIZE ENVELOPE)"]),
    ("/INBOX", ["-X", "EXAMINE INBOX"]),
    ("/INBOX?ALL", []),
    ("/INBOX?UNSEEN", []),
    ("/INBOX?SUBJECT%20%22compte%20rendu%22", []),
    ("/", []),
    ("/", ["-X", "STATUS INBOX (MESSAGES UIDNEXT)"]),
    ("/Archives;UID=1", []),
]


async def _curl(*args: str) -> tuple[int, bytes, bytes]:
    process = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--max-time",
        "20",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out, err


@pytest.mark.parametrize(("path", "extra"), CURLS, ids=[f"{p} {' '.join(e)}" for p, e in CURLS])
async def test_curl_sees_the_same_content(env, path, extra):
    require_peer(shutil.which("curl") is not None, "curl not installed")
    before = await asyncio.to_thread(flags_of, env.dovecot, MARTIN)
    try:
        token = await env.stack.token("dr-martin")
        code, ours, err = await _curl(
            "--oauth2-bearer",
            token,
            "--user",
            f"{MARTIN}:",
            f"imap://{HOST}:{env.port}{path}",
            *extra,
        )
        assert code == 0, err
        code, theirs, err = await _curl(
            "--user",
            f"{MARTIN}:{MARTIN_PW}",
            f"imap://{HOST}:{env.dovecot.port}{path}",
            *extra,
        )
        assert code == 0, err
    finally:
        # curl fetches BODY[] (not PEEK): put the \Seen flags back as they were
        await asyncio.to_thread(restore_flags, env.dovecot, MARTIN, before)
    assert ours, "curl got nothing through the gateway"
    if ours != theirs:
        assert_same([ours], [theirs], path)
    if path == f"/INBOX;UID={LARGE_UID}":
        assert ours == MESSAGES[LARGE_UID - 1].raw


# -- a read-only delegate -----------------------------------------------------------------------

REFUSED = [
    b"STORE 2 +FLAGS (\\Flagged)",
    b"STORE 1 FLAGS (\\Seen)",
    b"UID STORE 1 -FLAGS (\\Answered)",
    b"COPY 1 Archives",
    b"UID MOVE 1 Archives",
    b"EXPUNGE",
    b"UID EXPUNGE 1",
    b"CREATE Secretariat",
    b"DELETE Archives",
    b"RENAME Archives Anciens",
    b"APPEND INBOX {%d}\r\n%s" % (len(NEW_MESSAGE), NEW_MESSAGE),
    b"APPEND INBOX {%d+}\r\n%s" % (len(NEW_MESSAGE), NEW_MESSAGE),
]


async def test_read_only_delegate_is_refused_changes_but_reads(env, through, direct):
    gateway = env.stack.gateway
    assert gateway.validator is not None
    assert gateway.delegations is not None
    holder = await gateway.validator.validate(await env.stack.token("dr-martin"))
    await gateway.delegations.grant(holder, MARTIN, BERNARD_IDNAT, ["read"])
    before = await asyncio.to_thread(snapshot, env.dovecot, MARTIN)
    flags = await asyncio.to_thread(flags_of, env.dovecot, MARTIN)
    unseen = next(uid for uid, value in flags.items() if b"\\Seen" not in value)
    try:
        gw = await through("sec-bernard", MARTIN)
        dc = await direct()
        select = await gw.command(b"S", b"SELECT INBOX")
        direct_select = await dc.command(b"S", b"SELECT INBOX")
        # Only \\Seen is hers to set, so the mailbox is READ-ONLY to her: the gateway says
        # so, the rest is Dovecot's answer.
        limited = re.compile(rb"\[PERMANENTFLAGS \([^)]*\)\]|\[READ-(?:ONLY|WRITE)\]")
        assert any(b"[PERMANENTFLAGS (\\Seen)]" in line for line in select.responses)
        assert select.tagged.startswith(b"S OK [READ-ONLY] ")
        assert direct_select.tagged.startswith(b"S OK [READ-WRITE] ")
        assert_same(
            Reply([limited.sub(b"[P]", x) for x in select.responses]),
            Reply([limited.sub(b"[P]", x) for x in direct_select.responses]),
            "SELECT",
        )
        for index, command in enumerate(REFUSED):
            tag = b"R%d" % index
            reply = await gw.command(tag, command)
            assert reply.tagged.startswith(tag + b" NO [NOPERM]"), (command, reply.responses)
            assert reply.responses == [reply.tagged], "nothing from Dovecot"
        fetch = b"FETCH 1:* (FLAGS ENVELOPE BODYSTRUCTURE BODY.PEEK[]<0.200>)"
        assert_same(await gw.command(b"F", fetch), await dc.command(b"F", fetch), fetch)
        search = b"SEARCH UNSEEN"
        assert_same(await gw.command(b"Q", search), await dc.command(b"Q", search), search)
        # \Seen is a read: carried to Dovecot, which answers (and then tells the other session)
        seen = await gw.command(b"T", b"UID STORE %d +FLAGS (\\Seen)" % unseen)
        assert seen.status == b"OK", seen.responses
        assert b"\\Seen" in seen.responses[0], seen.responses
        after_seen = await asyncio.to_thread(flags_of, env.dovecot, MARTIN)
        assert b"\\Seen" in after_seen[unseen]
        unset = await gw.command(b"U", b"UID STORE %d -FLAGS.SILENT (\\Seen)" % unseen)
        assert unset.status == b"OK"
        # CLOSE would expunge: for a reader it only unselects
        assert (await gw.command(b"E", b"EXAMINE Archives")).status == b"OK"
        assert (await gw.command(b"C", b"CLOSE")).status == b"OK"
        assert (await gw.command(b"L", b"LOGOUT")).status == b"OK"
        after = await asyncio.to_thread(snapshot, env.dovecot, MARTIN)
        assert after == before  # nothing changed in Dovecot, Archives' \Deleted one included
    finally:
        await gateway.delegations.grant(holder, MARTIN, BERNARD_IDNAT, ["read", "write", "send"])
        await asyncio.to_thread(restore_flags, env.dovecot, MARTIN, flags)


async def test_read_only_delegate_append_with_imaplib_is_noperm(env):
    gateway = env.stack.gateway
    assert gateway.validator is not None
    assert gateway.delegations is not None
    holder = await gateway.validator.validate(await env.stack.token("dr-martin"))
    await gateway.delegations.grant(holder, MARTIN, BERNARD_IDNAT, ["read"])
    token = await env.stack.token("sec-bernard")
    before = await asyncio.to_thread(snapshot, env.dovecot, MARTIN)

    def attempt() -> list[tuple[str, Any]]:
        m = _imaplib_through(env, token)
        try:
            answers = [m.append("INBOX", None, None, NEW_MESSAGE)]
            answers.append(m.create("Secretariat"))
            answers.append(m.select("INBOX", readonly=True))  # READ-ONLY to her anyway
            answers.append(m.store("1", "+FLAGS", "(\\Flagged)"))
            answers.append(m.copy("1", "Archives"))
            answers.append(m.noop())
            return answers
        finally:
            m.logout()

    try:
        answers = await asyncio.to_thread(attempt)
    finally:
        await gateway.delegations.grant(holder, MARTIN, BERNARD_IDNAT, ["read", "write", "send"])
    for index in (0, 1, 3, 4):
        typ, data = answers[index]
        assert typ == "NO", answers[index]
        assert data[0].startswith(b"[NOPERM]"), answers[index]
    assert answers[2][0] == answers[5][0] == "OK"
    assert await asyncio.to_thread(snapshot, env.dovecot, MARTIN) == before


# -- Dovecot dies -------------------------------------------------------------------------------


async def test_dovecot_dying_mid_session_gives_bye_promptly(env, through):
    selected = await through("dr-moreau", MOREAU)
    idle = await through("dr-moreau", MOREAU)
    assert (await selected.command(b"S", b"SELECT INBOX")).status == b"OK"
    assert (await idle.command(b"S", b"SELECT INBOX")).status == b"OK"
    await idle.send(b"I IDLE\r\n")
    assert (await idle.response()).startswith(b"+ ")
    started = time.monotonic()
    stopping = asyncio.create_task(asyncio.to_thread(env.doomed.kill))
    try:
        for client in (selected, idle):
            seen = []
            while not seen or not seen[-1].startswith(b"* BYE"):
                seen.append(await client.response(wait=5))
            assert seen == [b"* BYE connection to the mailbox server lost\r\n"]
            assert await client.rest(wait=5) == b""
        assert time.monotonic() - started < 5
    finally:
        await stopping
    # a new login to that BAL is refused as unavailable, promptly
    client = await Raw.open(env.port)
    try:
        token = await env.stack.token("dr-moreau")
        reply = await client.command(b"L", b"AUTHENTICATE XOAUTH2 " + xoauth2_b64(MOREAU, token))
        assert reply.tagged.startswith(b"L NO [UNAVAILABLE]"), reply.responses
    finally:
        await client.close()


# -- where the gateway is not transparent: these fail until the gateway is fixed --------------


TRAP_FOLDER = "Pieges [CAPABILITY X]"
TRAP_MESSAGE = _crlf(
    "From: Dr Jean DUPONT <jean.dupont@medecin.mssante.fr>\n"
    "To: claire.martin@medecin.mssante.fr\n"
    "Subject: Re: [CAPABILITY IMAP4rev1] essai\n"
    "Date: Mon, 11 Mar 2024 09:00:00 +0100\n"
    "MIME-Version: 1.0\n"
    'Content-Type: text/plain; charset=us-ascii; name="[capability x].txt"\n'
    "\n"
    "Texte.\n"
)


TRAP_COMMANDS = {
    "list": (None, b'LIST "" "Pieges*"'),
    "status": (None, b'STATUS "Pieges [CAPABILITY X]" (MESSAGES)'),
    "envelope": (b'EXAMINE "Pieges [CAPABILITY X]"', b"FETCH 1 (ENVELOPE)"),
    "bodystructure": (b'EXAMINE "Pieges [CAPABILITY X]"', b"FETCH 1 (BODYSTRUCTURE)"),
}


@pytest.mark.parametrize("case", list(TRAP_COMMANDS))
async def test_capability_lookalike_in_names_and_content_is_not_rewritten(
    env, through, direct, case
):
    """BUG. The relay replaces the first "[CAPABILITY ...]" found anywhere in the first line
    of every backend response (proxy.py, Relay._rewrite_capability_code, called from
    _inspect for every "* " and tagged head line), not only a response code right after
    OK/NO/BAD/PREAUTH/BYE: a folder named "Pieges [CAPABILITY X]" is listed (and STATUS'd)
    as "Pieges [CAPABILITY IMAP4rev1 LITERAL+ IDLE ...]", a folder that does not exist; the
    Subject "Re: [CAPABILITY IMAP4rev1] essai" (ENVELOPE) and the attachment name
    "[capability x].txt" (BODYSTRUCTURE) reach the client altered."""

    def make() -> None:
        with direct_imaplib(env.dovecot, MARTIN) as m:
            check(m.create(quote(TRAP_FOLDER)))
            check(m.append(quote(TRAP_FOLDER), None, MESSAGES[0].date, TRAP_MESSAGE))

    def remove() -> None:
        with direct_imaplib(env.dovecot, MARTIN) as m:
            check(m.delete(quote(TRAP_FOLDER)))

    setup, command = TRAP_COMMANDS[case]
    await asyncio.to_thread(make)
    try:
        gw, dc = await pair(through, direct)
        if setup is not None:
            assert_same(await gw.command(b"S", setup), await dc.command(b"S", setup), setup)
        ours, theirs = await gw.command(b"T", command), await dc.command(b"T", command)
        assert re.search(rb"\[CAPABILITY [^\]]*\]", theirs.responses[0], re.IGNORECASE)
        assert_same(ours, theirs, command)
    finally:
        await asyncio.to_thread(remove)


@pytest.mark.xfail(
    strict=True,
    reason="the codec canonicalises INBOX (case-insensitive, RFC 3501 §5.1) before "
    "re-serialising; Dovecot echoes the client's spelling",
)
async def test_status_echoes_the_mailbox_name_as_the_client_sent_it(through, direct):
    """BUG (minor). The gateway forwards STATUS with the name canonicalised ("inbox" becomes
    "INBOX"), so Dovecot's `* STATUS` echo differs from what the client asked for:
    `STATUS inbox (MESSAGES)` gives `* STATUS INBOX (MESSAGES 6)` through the gateway,
    `* STATUS inbox (MESSAGES 6)` directly. A client matching STATUS replies to the names
    it sent (pipelined STATUS of many folders) loses this one."""
    gw, dc = await pair(through, direct)
    for command in (b"STATUS inbox (MESSAGES)", b"STATUS Inbox (MESSAGES UNSEEN)"):
        assert_same(await gw.command(b"T", command), await dc.command(b"T", command), command)


async def test_dovecots_own_bye_is_relayed_without_a_second_one(env, through, direct):
    """BUG (minor). When Dovecot ends a session itself (here: the selected folder deleted,
    "* BYE Selected mailbox was deleted, have to disconnect."; also autologout, shutdown),
    the relay forwards that BYE, sees the backend close (proxy.py, Relay._from_backend:
    EOF while not logging_out) and adds "* BYE connection to the mailbox server lost",
    counting a "died" backend error: the client gets two BYEs where Dovecot sent one."""
    gw, dc = await pair(through, direct)
    for client, folder in ((gw, b"Ephemere-gw"), (dc, b"Ephemere-dc")):
        assert (await client.command(b"C", b"CREATE " + folder)).status == b"OK"
        assert (await client.command(b"S", b"SELECT " + folder)).status == b"OK"
    ours = await gw.command(b"D", b"DELETE Ephemere-gw")
    theirs = await dc.command(b"D", b"DELETE Ephemere-dc")
    assert_same(ours, theirs, "DELETE")
    direct_rest = await dc.rest()
    assert direct_rest == b"* BYE Selected mailbox was deleted, have to disconnect.\r\n"
    assert await gw.rest() == direct_rest
