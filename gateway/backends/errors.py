"""The one error family of backends, whatever their kind.

A backend says what went wrong in mail-system terms and never writes a protocol reply:
the fronts turn these into IMAP response codes or SMTP replies from their own tables
(`gateway.fronts.replies`). Two families because the client's next move differs:
`BackendUnavailable` (no usable answer: retry later, nothing was done) and
`BackendRefused` (the backend answered no: its verdict is the client's to handle).
`detail` is for logs and never holds a credential.
"""

from __future__ import annotations

import re

_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def one_line(text: str, limit: int = 400) -> str:
    """A backend's (possibly multi-line, possibly hostile) text, fit for one line."""
    flat = _UNPRINTABLE.sub("?", " ".join(text.split()))
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class BackendError(Exception):
    """Base of every backend failure. `kind` is the metrics label."""

    kind = "error"

    def __init__(self, detail: str = "", *, kind: str | None = None) -> None:
        if kind is not None:
            self.kind = kind
        self.detail = detail
        super().__init__(f"{self.kind}: {detail}" if detail else self.kind)


class BackendUnavailable(BackendError):
    """No usable answer: unreachable, TLS failed, our login refused, timed out, connection
    lost, misconfigured. Temporary for the client: nothing was done, it may retry.
    `kind`: connect, tls, login, credentials (the platform refused the gateway itself),
    protocol, timeout, closed, disconnected, unavailable, misconfigured. `after`: the
    seconds waited, for a timeout."""

    kind = "unavailable"

    def __init__(self, kind: str, detail: str = "", *, after: float | None = None) -> None:
        super().__init__(detail, kind=kind)
        self.after = after


class BackendRefused(BackendError):
    """The backend answered no. `text` is its own word (one line). `code` is its SMTP basic
    code when it speaks SMTP (its reply is then passed on as it is); `status` an RFC 3463
    enhanced status saying what the refusal means when the platform has its own error
    codes (the historic platform's functional codes); `permanent` whether retrying can help."""

    kind = "refused"

    def __init__(
        self,
        text: str,
        *,
        code: int | None = None,
        status: str | None = None,
        permanent: bool | None = None,
        detail: str = "",
    ) -> None:
        self.text = one_line(text)
        self.code = code
        self.status = status
        if permanent is None:
            permanent = code >= 500 if code is not None else not (status or "5").startswith("4")
        self.permanent = permanent
        super().__init__(detail or self.text)


class BackendTooLarge(BackendRefused):
    """A message or an answer beyond what the backend (or our limit on it) takes."""

    kind = "too-large"

    def __init__(self, text: str, *, status: str = "5.3.4") -> None:
        super().__init__(text, status=status, permanent=True)


class BackendNotFound(BackendRefused):
    """A folder or message the tool access asked for is not there (any more)."""

    kind = "not-found"

    def __init__(self, text: str) -> None:
        super().__init__(text, status="5.1.0", permanent=True)


class BackendCannot(BackendRefused):
    """The backend cannot do this at all (the historic web services outside Drafts)."""

    kind = "cannot"

    def __init__(self, text: str) -> None:
        super().__init__(text, status="5.5.1", permanent=True)


class BackendCannotCarry(BackendRefused):
    """The message cannot be represented on this platform (the historic message object):
    refused before anything was sent."""

    kind = "cannot-carry"


class BackendTokenOnly(BackendRefused):
    """The backend is configured to log users in with their own PSC token (``login =
    "token"``): a session without one (a CPS card login) cannot be opened on it."""

    kind = "token-only"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"the platform of this BAL ({name}) takes PSC tokens only: log in with a token",
            permanent=True,
        )
