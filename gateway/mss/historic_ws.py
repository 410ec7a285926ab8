"""The historic web services' contract (DOMAIN.md §4): service and operation names, error
codes, field limits, well-known folders, and the seam between a platform's operations and
its HTTP faces (REST, SOAP). One module that the mock's historic platform implements and the
gateway speaks (its `legacy_ws` backend; the historic interfaces it serves over any platform).

`HistoricOperations.call` runs one operation for an authenticated caller: `payload` is the
content of ``{"<op>Input": {...}}`` (or of the SOAP body element), the result the content
of ``{"<op>Output": {...}}``. Failures are `HistoricError`s carrying the codes of DOMAIN.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

NAMESPACE = "http://services.msg.mss.asip.fr/"
SESSION_COOKIE = "MSS_SESSION"

OPERATIONS: dict[str, tuple[str, ...]] = {
    "Annuaire": ("listEmails", "searchRecipient"),
    "Folder": (
        "listFolders",
        "createFolder",
        "renameFolder",
        "moveFolder",
        "deleteFolder",
        "emptyFolder",
        "trashFolder",
    ),
    "Item": (
        "searchMessages",
        "syncMessages",
        "sendMessage",
        "draftMessage",
        "updateMessages",
        "moveMessages",
    ),
    "Attachment": ("downloadAttachment",),
}

# Functional error codes (DOMAIN.md §4).
EMAIL_MISSING = 23
EMAIL_INVALID = 24
FIELD_MISSING = 28
FOLDER_DUPLICATE = 30
ATTACHMENTS_TOO_LARGE = 32
NO_ADDRESS = 34
INVALID_FORMAT = 36
CONTENT_TOO_LARGE = 39
FOLDER_MISSING = 41
MESSAGE_MISSING = 45
ATTACHMENT_MISSING = 46
# Authentication codes, sent as X-ErrorCode on HTTP 403.
AUTH_INVALID_CREDENTIALS = 17
AUTH_ACCOUNT_LOCKED = 22
AUTH_CHANNEL_BLOCKED = 44
AUTH_IMPOSSIBLE = 8
AUTH_INVALID_SESSION = 26

# Field limits (DOMAIN.md §4).
MAX_SUBJECT = 250
MAX_BODY = 50_000
MAX_SEARCH_STRING = 256
MAX_RECIPIENT_SEARCH = 30
MAX_IDNAT = 32

# The historic message flags that mean an IMAP flag when present (UNREAD is the one that
# means \Seen when absent): the mapping of both the platform's own IMAP and the gateway.
IMAP_FLAGS: tuple[tuple[str, str], ...] = (
    ("\\Flagged", "FLAGGED"),
    ("\\Answered", "REPLIED"),
    ("\\Deleted", "DELETED"),
    ("\\Draft", "DRAFT"),
    ("$Forwarded", "FORWARDED"),
)

# Well-known folder ids (the historic backend was Zimbra).
INBOX, TRASH, SENT, DRAFTS = 2, 3, 5, 6


class HistoricError(Exception):
    """A refusal of the historic services: a functional code, or a technical failure."""

    def __init__(
        self,
        code: int,
        message: str,
        kind: Literal["FONCTIONNELLE", "TECHNIQUE"] = "FONCTIONNELLE",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.kind = kind


@dataclass(frozen=True)
class Caller:
    """Who calls: a person (idNat, from a CPS certificate or an OTP session) or the trusted
    gateway acting on the BAL named in the input; `software` is NUMHOMOLOGATION."""

    idnat: str | None
    software: str | None = None
    trusted_gateway: bool = False
    means: str | None = None  # how the person proved who they are: card, otp, ciba, token
    user_agent: str | None = None


class AuthRefused(Exception):
    """Authentication failed: HTTP 403 with ``X-ErrorCode: code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class OtpRequired(Exception):
    """The password was right: a code was sent on `channel`; repeat with the OTP header."""

    def __init__(self, channel: str, expires_in: int) -> None:
        super().__init__(f"one-time password sent by {channel}")
        self.channel = channel
        self.expires_in = expires_in


@dataclass(frozen=True)
class HistoricSession:
    token: str = field(repr=False)
    idnat: str
    expires_at: float


@dataclass(frozen=True)
class Authenticated:
    """The caller, and the session to hand out as a cookie when one was just opened."""

    caller: Caller
    new_session: HistoricSession | None = None


class HistoricOperations(Protocol):
    async def call(
        self, service: str, operation: str, caller: Caller, payload: dict[str, Any]
    ) -> dict[str, Any]: ...
