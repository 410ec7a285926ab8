"""Telling a backend whom a session is for, as mail proxies do, so that its per-address
limits, logs and bans see the LPS rather than the gateway.

IMAP: ``ID`` with Dovecot's proxy fields before login (``x-originating-ip``/``-port``,
the client's; ``x-connected-ip``/``-port``, what it connected to; ``x-session-ext-id``,
the gateway's session id for matching logs). Dovecot believes them from addresses in its
``login_trusted_networks``; a server that does not just answers ID. SMTP: Postfix's
``XCLIENT ADDR= PORT=`` where the server's EHLO offers it (the server then greets
anew, and EHLO must be said again). Values are checked, never passed as given: an
address must parse, a session id be a token.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from gateway.runtime.limits import ip_address_of
from gateway.runtime.login import ConnectionInfo

_TOKEN = re.compile(r"[A-Za-z0-9._-]{1,64}")


def imap_id(connection: ConnectionInfo) -> bytes | None:
    """``ID (...)`` naming the client of `connection`; None when its address is not one."""
    client = ip_address_of(connection.peer)
    if client is None:
        return None
    fields = [("x-originating-ip", str(client)), ("x-originating-port", str(connection.port))]
    local = ip_address_of(connection.local_address)
    if local is not None:
        fields += [("x-connected-ip", str(local)), ("x-connected-port", str(connection.local_port))]
    if _TOKEN.fullmatch(connection.session_id):
        fields.append(("x-session-ext-id", connection.session_id))
    listed = " ".join(f'"{name}" "{value}"' for name, value in fields)
    return f"ID ({listed})".encode("ascii")


def xclient_arguments(connection: ConnectionInfo, offered: Collection[str]) -> list[str] | None:
    """XCLIENT's arguments naming the client (those of `offered`, the attribute names the
    server's EHLO lists); None when there is nothing it takes."""
    client = ip_address_of(connection.peer)
    if client is None:
        return None
    wanted = {name.upper() for name in offered}
    arguments = []
    if "ADDR" in wanted:
        arguments.append(f"ADDR={'IPV6:' if client.version == 6 else ''}{client}")
    if "PORT" in wanted and connection.port:
        arguments.append(f"PORT={connection.port}")
    return arguments or None
