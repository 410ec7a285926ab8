"""Logging in to a running gateway's IMAP front as an LPS does (raw socket, XOAUTH2)."""

from __future__ import annotations

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
