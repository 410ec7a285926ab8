"""Logging in to a running gateway's IMAP front as an LPS does (raw socket, XOAUTH2)."""

from __future__ import annotations

import re

from tests.imap_raw import Raw
from tests.support.sasl import xoauth2
from tests.support.stacks import Stack


async def login(stack: Stack, persona: str, bal: str, *, client_id: str | None = None) -> Raw:
    """A raw session logged in with a fresh token of `persona` on `bal` (after an IMAP ID
    naming `client_id`, when given)."""
    client = await Raw.open(stack.imap_port)
    if client_id:
        await client.ok(f'ID ("name" "{client_id}" "version" "1.0")')
    token = await stack.token(persona)
    await client.ok("AUTHENTICATE XOAUTH2 ", xoauth2(bal, token))
    return client


#: What an LPS does in a session that changes nothing: what it sees is compared.
SCRIPT = (
    "CAPABILITY",
    "NAMESPACE",
    'LIST "" "*"',
    "SELECT INBOX",
    "UID FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)",
    "UID SEARCH ALL",
    "EXAMINE INBOX",
    "FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])",
    "STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY UNSEEN)",
    "NOOP",
)
_TIMING = re.compile(rb" \(\d+\.\d+ \+ \d+\.\d+(?: \+ \d+\.\d+)? secs\)")


async def transcript(client: Raw, login_reply: bytes) -> list[bytes]:
    """What the client sees of `SCRIPT`, then of LOGOUT (backend timings taken out)."""
    seen = [login_reply]
    for command in SCRIPT:
        reply = await client.ok(command)
        seen += [*reply.untagged, reply.tagged]
    reply = await client.ok("LOGOUT")
    seen += [*reply.untagged, reply.tagged, await client.until_closed()]
    return [_TIMING.sub(b"", line) for line in seen]


async def scripted(stack: Stack, persona: str, bal: str) -> list[bytes]:
    """What a client logging in as `persona` on `bal` sees of the login and `SCRIPT`."""
    client = await Raw.open(stack.imap_port)
    token = await stack.token(persona)
    reply = await client.ok("AUTHENTICATE XOAUTH2 ", xoauth2(bal, token))
    return await transcript(client, reply.tagged)
