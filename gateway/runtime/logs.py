"""The one logging setup: structured events, with the request or session they belong to.

Code logs with the standard `logging` module and puts facts in `extra={...}`; this module
renders them (console or JSON lines), adds the bound `request_id` / `session_id` and, once a
login said who, the `person` (idNat) and the `bal` of the session, and scrubs anything
shaped like a bearer token as a last line of defence: tokens are never logged.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from gateway.settings import LogSettings

if TYPE_CHECKING:
    from delegation.audit_trail import AuditEvent

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
session_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("session_id", default=None)
person: contextvars.ContextVar[str | None] = contextvars.ContextVar("person", default=None)
bal: contextvars.ContextVar[str | None] = contextvars.ContextVar("bal", default=None)
_CONTEXT = {"request_id": request_id, "session_id": session_id, "person": person, "bal": bal}
AUDIT_LOGGER = "lps_gateway.audit"
audit_log = logging.getLogger(AUDIT_LOGGER)

_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
_SECRET_PATTERNS = (
    re.compile(r"eyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*"),  # a compact JWS/JWT
    re.compile(r"(?i)(bearer\s+)[\w\-.~+/]+=*"),
    re.compile(
        r"(?i)((?:access_token|refresh_token|id_token|code|client_secret|password|otp|token)=)"
        r"[^&\s\"']+"
    ),
)


def new_id() -> str:
    return secrets.token_hex(6)


@contextmanager
def bound(*, request: str | None = None, session: str | None = None) -> Iterator[None]:
    """Bind a request or session id to every log record emitted inside the block."""
    tokens = []
    if request is not None:
        tokens.append((request_id, request_id.set(request)))
    if session is not None:
        tokens.append((session_id, session_id.set(session)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def identified(who: str, mailbox: str | None = None) -> None:
    """A login said who (and which BAL): every later line of the current task (the
    session's or the request's), and of the tasks it starts, names them. Never a token."""
    person.set(who)
    if mailbox is not None:
        bal.set(mailbox)


@contextmanager
def _anonymous() -> Iterator[None]:
    """Who a request identified stays with that request (a connection serves several)."""
    tokens = [(person, person.set(None)), (bal, bal.set(None))]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def log_audit_event(event: AuditEvent) -> None:
    """An audit event as one line of `lps_gateway.audit`, every field (`[log] audit_to_log`)."""
    fields = {
        f"audit_{name}" if name in ("id", "at") else name: getattr(event, name)
        for name in event.__dataclass_fields__
    }
    fields["audit_at"] = event.at.isoformat()
    audit_log.info("audit", extra=fields)


def scrub(text: str) -> str:
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "[redacted]", text)
    return text


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name in _CONTEXT:
        value = getattr(record, name, None)
        if value:
            fields[name] = value
    for key, value in vars(record).items():
        if key not in _STANDARD_ATTRS and key not in _CONTEXT:
            fields[key] = value
    return fields


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _CONTEXT.items():
            if getattr(record, name, None) is None:  # a line may name another BAL itself
                setattr(record, name, var.get())
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": scrub(record.getMessage()),
        }
        event.update({k: None if v is None else scrub(str(v)) for k, v in _fields(record).items()})
        if record.exc_info:
            event["exc"] = scrub(self.formatException(record.exc_info))
        line = json.dumps(event, ensure_ascii=False, default=str)
        # JSON allows them raw, but many readers (Python's splitlines, JavaScript) take them
        # for line ends: a client's U+2028 must not split a line in whoever ships the logs
        return line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = dt.datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        extras = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{when} {record.levelname:<7} {record.name}: {record.getMessage()} {extras}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return scrub(line.rstrip())


def configure_logging(settings: LogSettings) -> None:
    """Install the project's handler on the root logger (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else ConsoleFormatter())
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_lps_gateway", False)]:
        root.removeHandler(old)
    handler._lps_gateway = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(settings.level)
    # a SIEM's copy of the trail is wanted whatever the level of the rest
    audit_log.setLevel(logging.INFO if settings.audit_to_log else logging.NOTSET)
    for noisy in ("httpx", "httpcore", "aiosqlite", "uvicorn.error", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    smtp = logging.getLogger("mail.log")
    # aiosmtpd says every command line at INFO (envelope addresses, a patient's among them,
    # several lines per message), and every DATA line at DEBUG: its transcript only for a
    # gateway at DEBUG, and never the message contents (health data). The gateway's own
    # lines say what a session did (smtp.login, smtp.message_relayed...).
    smtp.setLevel(logging.INFO if root.level <= logging.DEBUG else max(logging.WARNING, root.level))
    if not any(isinstance(f, _LegacyLoginData) for f in smtp.filters):
        smtp.addFilter(_LegacyLoginData())
    if not any(isinstance(f, _ClientBytes) for f in smtp.filters):
        smtp.addFilter(_ClientBytes())


class _LegacyLoginData(logging.Filter):
    """aiosmtpd warns on every successful AUTH that it sets its own deprecated attribute:
    not ours to fix, and a warning per login would drown the real ones."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


class _ClientBytes(logging.Filter):
    """aiosmtpd decodes what clients send with surrogateescape and logs it (EHLO names,
    envelope addresses): a stray 8-bit byte becomes a lone surrogate that no UTF-8 encoder
    takes, and would break whatever ships the line. Such a line is logged escaped."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any("\ud800" <= c <= "\udfff" for c in message):
            record.msg = message.encode("utf-8", "backslashreplace").decode("utf-8")
            record.args = None
        return True


class RequestIdMiddleware:
    """ASGI middleware: a request id per HTTP request, bound for logs and echoed in a header."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = new_id()

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", rid.encode()))
            await send(message)

        with bound(request=rid), _anonymous():
            await self.app(scope, receive, send_with_id)
