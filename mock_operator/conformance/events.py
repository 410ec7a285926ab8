"""What the runner records of an LPS at work: small JSON-able facts, never whole messages
nor secrets, so a campaign's record stays bounded and can be shown as evidence."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections.abc import Mapping
from typing import Any

from gateway.imap import commands as c

MAX_LINE = 300  # a command as shown in evidence


@dataclasses.dataclass(frozen=True)
class Event:
    """One observation. `connection` groups a session's events ("" for PSC calls)."""

    interface: str  # "imap", "smtp", "psc", "runner"
    kind: str
    connection: str = ""
    data: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    at: float = dataclasses.field(default_factory=time.time)


def imap_command(command: c.Command) -> dict[str, Any]:
    """The facts of an IMAP command the checks need, and its line as evidence (SASL
    responses, passwords and message bodies left out)."""
    name = type(command).__name__.upper()
    facts: dict[str, Any] = {"tag": command.tag[:32], "name": name}
    uid = bool(getattr(command, "uid", False))
    if uid:
        facts["uid"] = True
    match command:
        case c.Authenticate(mechanism=mechanism):
            facts["mechanism"] = mechanism.upper()[:32]
            line = f"AUTHENTICATE {facts['mechanism']}"
        case c.Login(user=user):
            line = f'LOGIN "{user.decode(errors="replace")[:100]}" <masqué>'
        case c.Fetch(sequence=sequence, attributes=attributes):
            items = [_fetch_item(a) for a in attributes]
            facts["items"] = items
            facts["sequence"] = str(sequence)[:100]
            line = f"FETCH {facts['sequence']} ({' '.join(items)})"
        case c.Store(sequence=sequence, action=action):
            facts["flags"] = list(action.flags)[:20]
            facts["mode"] = str(action.mode)
            line = f"STORE {str(sequence)[:100]} {action.mode}FLAGS ({' '.join(action.flags)})"
        case c.Search():
            line = "SEARCH …"
        case c.Select(mailbox=mailbox, readonly=readonly):
            facts["mailbox"] = mailbox[:200]
            line = f'{"EXAMINE" if readonly else "SELECT"} "{mailbox[:200]}"'
        case c.Id(parameters=parameters):
            fields = {k.lower()[:30]: (v or "")[:100] for k, v in (parameters or ())[:30]}
            facts["fields"] = fields
            line = "ID (" + " ".join(f'"{k}" "{v}"' for k, v in fields.items()) + ")"
        case c.Append(mailbox=mailbox, message=message):
            facts["mailbox"] = mailbox[:200]
            facts["size"] = len(message)
            line = f'APPEND "{mailbox[:200]}" {{{len(message)}}}'
        case c.List(reference=reference, pattern=pattern):
            line = f'LIST "{reference[:100]}" "{pattern[:100]}"'
        case c.Status(mailbox=mailbox, items=items):
            line = f'STATUS "{mailbox[:200]}" ({" ".join(items)})'
        case (
            c.Copy(sequence=sequence, mailbox=mailbox) | c.Move(sequence=sequence, mailbox=mailbox)
        ):
            line = f'{name} {str(sequence)[:100]} "{mailbox[:200]}"'
        case _:
            line = name
    if uid:
        line = f"UID {line}"
    facts["line"] = f"{facts['tag']} {line}"[:MAX_LINE]
    return facts


def _fetch_item(attribute: Any) -> str:
    if attribute.section is None:
        return str(attribute.name)
    peek = ".PEEK" if attribute.peek else ""
    return f"{attribute.name}{peek}[{attribute.section}]"


MAX_TOKEN = 16 * 1024


def token_claims(token: str | bytes) -> dict[str, Any]:
    """The claims that attribute a token to a software and a person, read without checking
    the signature: the platform checks it; the runner only needs to know whose token it was,
    valid or not (an expired token reused is exactly what it must see)."""
    if isinstance(token, bytes):
        token = token.decode("ascii", errors="replace")
    parts = token.split(".")
    if len(token) > MAX_TOKEN or len(parts) != 3:
        return {}
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded))
    except (ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(claims, dict):
        return {}
    idnat = claims.get("SubjectNameID") or claims.get("preferred_username") or ""
    picked = {
        "client_id": claims.get("azp") or claims.get("client_id") or "",
        "idnat": idnat,
        "jti": claims.get("jti") or "",
        "sid": claims.get("sid") or "",
        "exp": claims.get("exp"),
        "iat": claims.get("iat"),
    }
    return {
        k: (v[:128] if isinstance(v, str) else v)
        for k, v in picked.items()
        if isinstance(v, str | int) and not isinstance(v, bool)
    }
