"""One access as the usage tables count it, and the cleaning of the labels clients send."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from dataclasses import dataclass
from typing import Literal, get_args

Interface = Literal[
    "api-lps-imap", "api-lps-smtp", "historic-ws", "historic-imap-cps", "historic-smtp-cps"
]
INTERFACES: tuple[Interface, ...] = get_args(Interface)
Kind = Literal["session", "message"]

SOFTWARE_LENGTH = 64
VERSION_LENGTH = 32
BAL_LENGTH = 255
IDNAT_LENGTH = 32
PLATFORM_LENGTH = 64
UNKNOWN = "unknown"

# What a software name may keep: letters and digits of any script, and the punctuation
# vendors use in names and versions. The rest (controls, quotes, angle brackets, CSV
# formula starters at the front) goes: these strings come from clients and end up in
# tables, CSV files, HTML pages and Prometheus labels.
_DROPPED = re.compile(r"[^\w .:/+()#@,-]", re.UNICODE)
_SPACES = re.compile(r"\s+")


def clean_label(value: str | None, limit: int = SOFTWARE_LENGTH) -> str:
    """`value` as a bounded, printable label ("" when nothing is left)."""
    if not value:
        return ""
    text = unicodedata.normalize("NFKC", value[: limit * 4])
    text = _DROPPED.sub("", text)
    text = _SPACES.sub(" ", text).strip().lstrip("=+-@ ")
    return text[:limit].rstrip()


def interface_for(front: Literal["imap", "smtp"], by_card: bool = False) -> Interface:
    """The interface a login on the API LPS fronts counts under: a CPS card (mutual TLS,
    SASL EXTERNAL) is the historic IMAP/SMTP access, a PSC token the API LPS."""
    if front == "imap":
        return "historic-imap-cps" if by_card else "api-lps-imap"
    return "historic-smtp-cps" if by_card else "api-lps-smtp"


@dataclass(frozen=True, slots=True)
class Access:
    """One session opened on a BAL, or one message submitted from it.

    `software`/`version`: what the client says it is (IMAP ID, EHLO, X-MSS-NIL,
    NUMHOMOLOGATION, User-Agent), cleaned here; `platform`: the backend holding the BAL
    at the time; `idnat`: the person; `delegated`: through a delegation, not as holder."""

    at: dt.datetime
    interface: Interface
    software: str
    version: str
    bal: str
    platform: str
    idnat: str
    delegated: bool
    kind: Kind = "session"

    def __post_init__(self) -> None:
        if self.interface not in INTERFACES:
            raise ValueError(f"unknown interface {self.interface!r}")
        if self.at.tzinfo is None:
            raise ValueError("naive datetime")
        setter = object.__setattr__
        setter(self, "software", clean_label(self.software) or UNKNOWN)
        setter(self, "version", clean_label(self.version, VERSION_LENGTH))
        setter(self, "bal", self.bal.strip().lower()[:BAL_LENGTH])
        setter(self, "platform", self.platform[:PLATFORM_LENGTH])
        setter(self, "idnat", self.idnat[:IDNAT_LENGTH])

    @property
    def day(self) -> dt.date:
        return self.at.astimezone(dt.UTC).date()
