"""Delivery status notification parameters of SMTP (RFC 3461), without I/O.

A client asks for notices with four ESMTP parameters: ``RET`` (FULL or HDRS: what of the
message a notice returns) and ``ENVID`` (its own id for the transaction, echoed in every
notice) on MAIL, ``NOTIFY`` (NEVER, or which of SUCCESS, FAILURE, DELAY) and ``ORCPT``
(the recipient as the client first knew it) on RCPT. ENVID and ORCPT are xtext: printable
ASCII with ``+XX`` (upper-case hex) for ``+``, ``=`` and anything outside ``!``..``~``.

aiosmtpd knows none of them (it answers 555 before a handler runs) and upper-cases every
parameter, while xtext values are case-sensitive: so the server takes these words off
the original command line (`mail_parameters`, `rcpt_parameters`) and lets aiosmtpd parse
what remains. Values that break the grammar or the limits are refused with
``501 5.5.4``, as RFC 3461 §4 wants, before they reach anything: decoded values are
printable ASCII only, so no CR, LF or NUL ever reaches a header written from them.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

MAX_ENVID = 100  # characters, decoded (RFC 3461 §4.4)
MAX_ORCPT = 500  # characters of the parameter's value, addr-type included (§4.2)
# what the parameters may add to a command line (SP keyword "=" value, xtext at worst
# three characters a character), over RFC 5321's 512
MAIL_LINE_EXTRA = len(" RET=HDRS") + len(" ENVID=") + 3 * MAX_ENVID
RCPT_LINE_EXTRA = len(" NOTIFY=SUCCESS,FAILURE,DELAY") + len(" ORCPT=") + MAX_ORCPT

_HEX = "0123456789ABCDEF"
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,64}")


class Notify(enum.StrEnum):
    """The events a recipient's NOTIFY asks to hear of."""

    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    DELAY = "DELAY"


class DsnSyntaxError(ValueError):
    """A DSN parameter that breaks RFC 3461's grammar or limits; `reply` is the SMTP
    answer (501 5.5.4)."""

    @property
    def reply(self) -> str:
        return f"501 5.5.4 {self.args[0]}"


@dataclass(frozen=True, slots=True)
class MailDsn:
    """MAIL's DSN parameters: `ret` FULL or HDRS, `envid` decoded (None: not given)."""

    ret: Literal["FULL", "HDRS"] | None = None
    envid: str | None = None

    def parameters(self) -> list[str]:
        """The ESMTP words that carry these to the next server."""
        words = [f"RET={self.ret}"] if self.ret else []
        if self.envid is not None:
            words.append(f"ENVID={xtext_encode(self.envid)}")
        return words


@dataclass(frozen=True, slots=True)
class RecipientDsn:
    """RCPT's DSN parameters. `notify`: None when not given, empty for NEVER; `orcpt`:
    (addr-type, address decoded) or None."""

    notify: frozenset[Notify] | None = None
    orcpt: tuple[str, str] | None = None

    def wants(self, event: Notify) -> bool:
        """Whether a notice of `event` is due: without NOTIFY, failures and delays only
        (RFC 3461 §4.1)."""
        if self.notify is None:
            return event in (Notify.FAILURE, Notify.DELAY)
        return event in self.notify

    def parameters(self) -> list[str]:
        words = []
        if self.notify is not None:
            order = [e for e in Notify if e in self.notify]
            words.append("NOTIFY=" + (",".join(order) if order else "NEVER"))
        if self.orcpt is not None:
            kind, address = self.orcpt
            words.append(f"ORCPT={kind};{xtext_encode(address)}")
        return words


def xtext_decode(text: str, what: str) -> str:
    """RFC 3461 §4's xtext decoded; `DsnSyntaxError` naming `what` when it is not xtext
    or does not decode to printable ASCII."""
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "+":
            pair = text[index + 1 : index + 3]
            if len(pair) != 2 or any(c not in _HEX for c in pair):
                raise DsnSyntaxError(
                    f"Bad {what} parameter: + must be followed by two upper-case hex digits"
                )
            out.append(chr(int(pair, 16)))
            index += 3
            continue
        if not "!" <= char <= "~" or char == "=":
            raise DsnSyntaxError(f"Bad {what} parameter: not xtext")
        out.append(char)
        index += 1
    decoded = "".join(out)
    if not decoded or any(not " " <= c <= "~" for c in decoded):
        raise DsnSyntaxError(f"Bad {what} parameter: not printable ASCII once decoded")
    return decoded


def xtext_encode(text: str) -> str:
    """`text` (printable ASCII) as xtext."""
    return "".join(c if "!" <= c <= "~" and c not in "+=" else f"+{ord(c):02X}" for c in text)


def mail_parameters(arg: str) -> tuple[str, MailDsn]:
    """MAIL's argument without its DSN words, and those words parsed."""
    rest, found = _take(arg, "FROM:", ("RET", "ENVID"))
    ret = found.get("RET")
    if ret is not None and ret.upper() not in ("FULL", "HDRS"):
        raise DsnSyntaxError("Bad RET parameter: FULL or HDRS")
    envid = found.get("ENVID")
    if envid is not None:
        envid = xtext_decode(envid, "ENVID")
        if len(envid) > MAX_ENVID:
            raise DsnSyntaxError(f"Bad ENVID parameter: over {MAX_ENVID} characters")
    kind: Literal["FULL", "HDRS"] | None = None
    if ret is not None:
        kind = "FULL" if ret.upper() == "FULL" else "HDRS"
    return rest, MailDsn(kind, envid)


def rcpt_parameters(arg: str) -> tuple[str, RecipientDsn]:
    """RCPT's argument without its DSN words, and those words parsed."""
    rest, found = _take(arg, "TO:", ("NOTIFY", "ORCPT"))
    notify: frozenset[Notify] | None = None
    if (value := found.get("NOTIFY")) is not None:
        notify = _notify(value)
    orcpt: tuple[str, str] | None = None
    if (value := found.get("ORCPT")) is not None:
        if len(value) > MAX_ORCPT:
            raise DsnSyntaxError(f"Bad ORCPT parameter: over {MAX_ORCPT} characters")
        kind, semicolon, address = value.partition(";")
        if not semicolon or not _ATOM.fullmatch(kind):
            raise DsnSyntaxError("Bad ORCPT parameter: addr-type;xtext")
        orcpt = (kind.lower(), xtext_decode(address, "ORCPT"))
    return rest, RecipientDsn(notify, orcpt)


def _notify(value: str) -> frozenset[Notify]:
    words = value.upper().split(",")
    if words == ["NEVER"]:
        return frozenset()
    try:
        return frozenset(Notify(word) for word in words)
    except ValueError:
        raise DsnSyntaxError(
            "Bad NOTIFY parameter: NEVER, or a list of SUCCESS, FAILURE, DELAY"
        ) from None


def _take(arg: str, keyword: str, names: Iterable[str]) -> tuple[str, dict[str, str]]:
    """Split `arg` (``FROM:<address> params``) into itself without the parameters named
    `names` (whatever their case) and those parameters' values, as written. An argument
    whose address cannot be found is left whole, for aiosmtpd to answer."""
    wanted = set(names)
    end = _address_end(arg, keyword)
    if end is None:
        return arg, {}
    found: dict[str, str] = {}
    kept: list[str] = []
    for word in arg[end:].split():
        name, equals, value = word.partition("=")
        if name.upper() not in wanted:
            kept.append(word)
            continue
        if not equals or not value:
            raise DsnSyntaxError(f"Bad {name.upper()} parameter: a value is needed")
        if name.upper() in found:
            raise DsnSyntaxError(f"{name.upper()} parameter given twice")
        found[name.upper()] = value
    return " ".join([arg[:end].rstrip(), *kept]), found


def _address_end(arg: str, keyword: str) -> int | None:
    """Where the address of ``FROM:<address> params`` ends: after the ``>`` that closes
    it (quoted strings and backslash escapes skipped), or at the first white space for
    an address without brackets. None when `arg` does not start with `keyword`."""
    if arg[: len(keyword)].upper() != keyword:
        return None
    index = len(keyword)
    while index < len(arg) and arg[index] in " \t":
        index += 1
    bracketed = arg[index : index + 1] == "<"
    if bracketed and '"' not in arg and "\\" not in arg:  # nothing to skip: the first ">"
        close = arg.find(">", index)
        return close + 1 if close >= 0 else len(arg)
    return _scanned_address_end(arg, index, bracketed)


def _scanned_address_end(arg: str, index: int, bracketed: bool) -> int:
    """`_address_end` character by character from `index`, quotes and escapes skipped."""
    quoted = False
    while index < len(arg):
        char = arg[index]
        if char == "\\":
            index += 2
            continue
        if char == '"':
            quoted = not quoted
        elif not quoted and (char == ">" if bracketed else char in " \t"):
            return index + 1 if bracketed else index
        index += 1
    return len(arg)
