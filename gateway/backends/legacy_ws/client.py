"""A client of the historic web services' REST face (DOMAIN.md §4), as the trusted gateway.

The gateway authenticates with HTTP Basic (the operator's credentials for the gateway,
which may then act on any BAL named by ``email``) and sends ``NUMHOMOLOGATION`` on every
request. `LegacyWsClient.call` wraps ``{"<op>Input": payload}`` and unwraps
``{"<op>Output": ...}``; the typed methods on top cover what the IMAP and SMTP fronts
need and check the shapes they rely on.

Failures come in three kinds, because the fronts answer them differently:

* `LegacyAuthError`: HTTP 403 with ``X-ErrorCode`` (or an OTP demand): our credentials
  are refused, nothing will work until someone fixes the configuration;
* `LegacyError`: the services answered with their error body (code 45, 41, ...): the
  request was understood and refused (IMAP ``NO``, SMTP 5.x.x);
* `LegacyUnavailable`: no usable answer (timeout, connection refused, 5xx without the
  error body, invalid JSON, wrong wrapper, an answer too deep): IMAP ``NO [UNAVAILABLE]``,
  SMTP 4.x.x; its kind `LegacyTooLarge` (an answer or a list past the caps, a folder
  past `max_messages`) would come again the same: IMAP ``NO [LIMIT]``.

The whole call, answer included, is bounded by `timeout` (an answer that trickles in
cannot hold a front forever) and the answer by `max_response_bytes` (read in a stream,
never more than the cap kept). The password is never logged nor shown by ``repr``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import ssl
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

import httpx

from psc_auth.trust import system_trust

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 15.0
DEFAULT_MAX_RESPONSE = 64 * 1024 * 1024
MAX_JSON_DEPTH = 32
MAX_LIST_ITEMS = 20_000
MAX_ID = 64
MAX_IDS_PER_CALL = 500  # the historic services take at most 1,000 ids a call
MAX_PAGE = 1_000
MAX_MESSAGES = 200_000
MAX_ERROR_MESSAGE = 500
UPDATE_OPERATIONS = frozenset(
    {"READ", "UNREAD", "FLAGGED", "UNFLAGGED", "SPAM", "UNSPAM", "TRASH", "DELETE"}
)
SORTS = frozenset({"DATE_ASC", "DATE_DESC", "SUBJECT_ASC", "SUBJECT_DESC", "SIZE_ASC", "SIZE_DESC"})
AUTH_IMPOSSIBLE = 8  # X-ErrorCode of "authentication impossible" (DOMAIN.md §4)


class LegacyWsError(Exception):
    """Any failure of a call to the historic web services."""


class LegacyAuthError(LegacyWsError):
    """The services refused our credentials (HTTP 403, ``X-ErrorCode``: 17, 22, 44, 8, 26)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(
            f"authentication refused (X-ErrorCode {code}){': ' if reason else ''}{reason}"
        )
        self.code = code
        self.reason = reason


class LegacyError(LegacyWsError):
    """A refusal in the services' own words: ``{"error": {"type", "code", "message"}}``."""

    def __init__(
        self, code: int, message: str, kind: Literal["FONCTIONNELLE", "TECHNIQUE"]
    ) -> None:
        super().__init__(f"{kind} {code}: {message}")
        self.code = code
        self.message = message
        self.kind = kind


class LegacyUnavailable(LegacyWsError):
    """No usable answer: the historic platform is down, slow, or talking nonsense."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LegacyTooLarge(LegacyUnavailable):
    """More than the gateway takes in one answer: asking again the same way gives the
    same (a folder past the cap, an answer past `max_response_bytes`, a list too long)."""


@dataclass(frozen=True)
class SyncResult:
    """syncMessages: the next token, the messages changed since, the ids deleted since."""

    token: str
    modified: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


class LegacyWsClient:
    """The REST face at `base_url` (``.../mss-msg-services/services``), as the trusted gateway.

    Each call has `timeout` seconds in all (`connect_timeout` of them to connect); `tls`
    is the context for an https URL (the backend's CA and verification). `http` lets the
    caller share a connection pool (it is then not closed here); without it the client
    owns one, closed by `aclose` or ``async with``. Environment proxies are
    not used by the client's own pool: the historic services are reached directly.
    """

    def __init__(
        self,
        base_url: str,
        *,
        user: str,
        password: str,
        numhomologation: str,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE,
        tls: ssl.SSLContext | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must be an http:// or https:// URL")
        if timeout <= 0 or max_response_bytes <= 0:
            raise ValueError("timeout and max_response_bytes must be positive")
        if any(c in numhomologation for c in "\r\n\0"):
            raise ValueError("NUMHOMOLOGATION must be one line")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._timeouts = httpx.Timeout(timeout, connect=min(connect_timeout or timeout, timeout))
        self.max_response_bytes = max_response_bytes
        self._auth = httpx.BasicAuth(user, password)
        self._user = user
        self._headers = {"NUMHOMOLOGATION": numhomologation, "Accept": "application/json"}
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(
            trust_env=False,
            follow_redirects=False,
            verify=tls if tls is not None else system_trust(),
        )

    def __repr__(self) -> str:
        return f"LegacyWsClient({self.base_url!r}, user={self._user!r})"

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the generic call ----------------------------------------------------------------

    async def call(
        self, service: str, operation: str, payload: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Run ``<service>/<operation>`` with `payload` as ``<op>Input``; its ``<op>Output``."""
        if not (service.isalnum() and operation.isalnum()):
            raise ValueError("service and operation are plain names")
        url = f"{self.base_url}/{service}/rest/v1/{operation}"
        body = json.dumps({f"{operation}Input": dict(payload)}, separators=(",", ":"))
        started = time.monotonic()
        status: int | str = "-"
        try:
            async with asyncio.timeout(self.timeout):
                status, headers, data = await self._post(url, body.encode())
            return _outcome(status, headers, data, operation)
        except TimeoutError:
            status = "timeout"
            raise LegacyUnavailable(
                f"{service}/{operation}: no answer within {self.timeout:g} s"
            ) from None
        except httpx.HTTPError as exc:
            status = type(exc).__name__
            raise LegacyUnavailable(f"{service}/{operation}: {type(exc).__name__}: {exc}") from exc
        finally:
            log.debug(
                "legacy_ws.call",
                extra={
                    "operation": f"{service}/{operation}",
                    "bal": payload.get("email"),
                    "status": status,
                    "ms": round((time.monotonic() - started) * 1000),
                },
            )

    async def _post(self, url: str, body: bytes) -> tuple[int, httpx.Headers, bytes]:
        """POST and read the answer, refusing it past `max_response_bytes`."""
        headers = {**self._headers, "Content-Type": "application/json"}
        request = self._http.build_request(
            "POST", url, content=body, headers=headers, timeout=self._timeouts
        )
        response = await self._http.send(request, auth=self._auth, stream=True)
        try:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_response_bytes:
                raise LegacyTooLarge(f"answer of {declared} bytes refused (too large)")
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > self.max_response_bytes:
                    raise LegacyTooLarge(
                        f"answer larger than {self.max_response_bytes} bytes refused"
                    )
            return response.status_code, response.headers, bytes(data)
        finally:
            await response.aclose()

    # -- Annuaire, Folder ----------------------------------------------------------------

    async def list_emails(self) -> list[str]:
        """Every BAL the trusted gateway may act on (listEmails without a person)."""
        output = await self.call("Annuaire", "listEmails", {})
        emails = output.get("emails", [])
        if not isinstance(emails, list) or not all(isinstance(e, str) for e in emails):
            raise LegacyUnavailable("listEmails: emails is not a list of strings")
        return emails

    async def list_folders(self, bal: str, folder_id: int | None = None) -> list[dict[str, Any]]:
        """The folder tree: ``[{"id", "name", "unreadCount", "totalCount", "parentId",
        "children": [...]}]`` (ids checked to be integers, names strings)."""
        payload: dict[str, Any] = {"email": bal}
        if folder_id is not None:
            payload["folderId"] = folder_id
        output = await self.call("Folder", "listFolders", payload)
        folders = _objects(output, "folders", "listFolders")
        for folder in _walk_folders(folders):
            _check_folder(folder)
        return folders

    async def create_folder(
        self, bal: str, name: str, parent_id: int | None = None
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {"email": bal, "name": name}
        if parent_id is not None:
            payload["parentId"] = parent_id
        output = await self.call("Folder", "createFolder", payload)
        folder = output.get("folder")
        if not isinstance(folder, dict):
            raise LegacyUnavailable("createFolder: no folder in the answer")
        _check_folder(folder)
        return folder

    async def rename_folder(self, bal: str, folder_id: int, name: str) -> None:
        await self.call(
            "Folder", "renameFolder", {"email": bal, "folderId": folder_id, "name": name}
        )

    async def move_folder(self, bal: str, folder_id: int, parent_id: int) -> None:
        await self.call(
            "Folder", "moveFolder", {"email": bal, "folderId": folder_id, "parentId": parent_id}
        )

    async def delete_folder(self, bal: str, folder_id: int) -> None:
        await self.call("Folder", "deleteFolder", {"email": bal, "folderId": folder_id})

    # -- Item ----------------------------------------------------------------------------

    async def search_messages(
        self,
        bal: str,
        folder_id: int | None = None,
        *,
        query: Mapping[str, Any] | None = None,
        html: bool = True,
        sort_by: str = "DATE_ASC",
        page_size: int = 500,
        max_messages: int = MAX_MESSAGES,
    ) -> list[dict[str, Any]]:
        """Every message matching, all pages read (oldest first by default, so that mail
        arriving meanwhile lands on the last page). Offset paging is not a snapshot: take
        a `sync_messages` token *before* listing and replay the changes after it. More
        than `max_messages` is refused (`LegacyTooLarge`, from the first page's total)
        rather than silently cut."""
        if sort_by not in SORTS:
            raise ValueError(f"sort_by: one of {sorted(SORTS)}")
        if not 1 <= page_size <= MAX_PAGE:
            raise ValueError(f"page_size: 1 to {MAX_PAGE}")
        criteria_query: dict[str, Any] = dict(query or {})
        if folder_id is not None:
            criteria_query["folderId"] = folder_id
        found: dict[str, dict[str, Any]] = {}
        offset = 0
        for _ in range(max_messages // page_size + 2):
            criteria = {
                "limit": page_size,
                "offset": offset,
                "html": html,
                "sortBy": sort_by,
                "query": criteria_query,
            }
            output = await self.call(
                "Item", "searchMessages", {"email": bal, "searchCriteria": criteria}
            )
            page = [_message(m) for m in _objects(output, "messages", "searchMessages")]
            total = output.get("total", 0)
            if not isinstance(total, int) or isinstance(total, bool) or total < 0:
                raise LegacyUnavailable("searchMessages: total is not a count")
            if total > max_messages or len(found) + len(page) > max_messages:
                raise LegacyTooLarge(f"searchMessages: more than {max_messages} messages")
            for message in page:
                found.setdefault(message["messageId"], message)
            offset += len(page)
            if not page or offset >= total:
                return list(found.values())
        raise LegacyUnavailable("searchMessages: paging does not end")

    async def sync_messages(
        self, bal: str, token: str | None = None, *, html: bool = True
    ) -> SyncResult:
        """Changes since `token` (None: the current token, and possibly everything)."""
        payload: dict[str, Any] = {"email": bal, "html": html}
        if token is not None:
            payload["token"] = token
        output = await self.call("Item", "syncMessages", payload)
        new_token = output.get("token")
        if isinstance(new_token, int) and not isinstance(new_token, bool):
            new_token = str(new_token)
        if not isinstance(new_token, str) or not 0 < len(new_token) <= MAX_ID:
            raise LegacyUnavailable("syncMessages: no usable token")
        deleted = output.get("deletedMessageIds") or []
        if not isinstance(deleted, list):
            raise LegacyUnavailable("syncMessages: deletedMessageIds is not a list")
        return SyncResult(
            token=new_token,
            modified=[_message(m) for m in _objects(output, "modifiedMessages", "syncMessages")],
            deleted=[_id(d, "syncMessages") for d in deleted],
        )

    async def update_messages(self, bal: str, message_ids: Sequence[str], operation: str) -> None:
        """READ, UNREAD, FLAGGED, UNFLAGGED, SPAM, UNSPAM, TRASH or DELETE, in batches."""
        if operation not in UPDATE_OPERATIONS:
            raise ValueError(f"operation: one of {sorted(UPDATE_OPERATIONS)}")
        for batch in _batches(message_ids):
            await self.call(
                "Item",
                "updateMessages",
                {"email": bal, "messageIds": batch, "operation": operation},
            )

    async def move_messages(
        self, bal: str, message_ids: Sequence[str], destination_folder_id: int
    ) -> None:
        for batch in _batches(message_ids):
            await self.call(
                "Item",
                "moveMessages",
                {"email": bal, "messageIds": batch, "destinationFolderId": destination_folder_id},
            )

    async def draft_message(self, bal: str, message: Mapping[str, Any]) -> dict[str, Any]:
        """Save a draft (``message`` as `mime.rfc5322_to_message` builds it); the draft."""
        output = await self.call("Item", "draftMessage", {"email": bal, "message": dict(message)})
        return _message(output.get("message"))

    async def send_message(self, bal: str, message: Mapping[str, Any]) -> dict[str, Any]:
        """Send; the copy kept in Sent. Accepted only when this returns (end-to-end rule)."""
        output = await self.call("Item", "sendMessage", {"email": bal, "message": dict(message)})
        return _message(output.get("message"))

    # -- Attachment ----------------------------------------------------------------------

    async def download_attachment(self, bal: str, message_id: str, part: str) -> bytes:
        output = await self.call(
            "Attachment",
            "downloadAttachment",
            {"email": bal, "messageId": message_id, "part": part},
        )
        encoded = output.get("file")
        if not isinstance(encoded, str):
            raise LegacyUnavailable("downloadAttachment: no file in the answer")
        try:
            return base64.b64decode("".join(encoded.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise LegacyUnavailable("downloadAttachment: file is not base64") from exc


# -- answers ------------------------------------------------------------------------------


def _outcome(status: int, headers: httpx.Headers, data: bytes, operation: str) -> dict[str, Any]:
    """The ``<op>Output`` of a successful answer, or the matching exception."""
    if status == 403:
        code = headers.get("x-errorcode", "").strip()
        if code.isdigit() and len(code) <= 6:
            raise LegacyAuthError(int(code), _error_text(data))
        raise LegacyUnavailable("HTTP 403 without X-ErrorCode")
    if status == 401:  # an OTP demand: not a path the trusted gateway can take
        raise LegacyAuthError(AUTH_IMPOSSIBLE, "one-time password demanded")
    if status == 200:
        document = _json(data, operation)
        wrapper = f"{operation}Output"
        if not isinstance(document, dict) or set(document) != {wrapper}:
            raise LegacyUnavailable(f'{operation}: answer is not {{"{wrapper}": ...}}')
        output = document[wrapper]
        if output is None:
            return {}
        if not isinstance(output, dict):
            raise LegacyUnavailable(f"{operation}: {wrapper} is not an object")
        return output
    if status in (400, 500):
        error = _error_body(data)
        if error is not None:
            raise error
    raise LegacyUnavailable(f"{operation}: HTTP {status}")


def _json(data: bytes, operation: str) -> Any:
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise LegacyUnavailable(f"{operation}: answer is not JSON") from None
    _check_shape(document, operation)
    return document


def _check_shape(value: Any, operation: str) -> None:
    """Refuse nesting deeper than `MAX_JSON_DEPTH` and lists longer than `MAX_LIST_ITEMS`
    (without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            if level > MAX_JSON_DEPTH:
                raise LegacyUnavailable(f"{operation}: answer nested too deeply")
            if len(item) > MAX_LIST_ITEMS:
                raise LegacyTooLarge(f"{operation}: answer with a list too long")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)


def _error_body(data: bytes) -> LegacyError | None:
    """The services' ``{"error": {"type", "code", "message"}}``, if that is what `data` is."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        return None
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict):
        return None
    code, kind, message = error.get("code"), error.get("type"), error.get("message", "")
    if isinstance(code, str) and code.isdigit() and len(code) <= 6:
        code = int(code)
    if (
        not isinstance(code, int)
        or isinstance(code, bool)
        or kind not in ("FONCTIONNELLE", "TECHNIQUE")
    ):
        return None
    text = message if isinstance(message, str) else ""
    return LegacyError(code, text[:MAX_ERROR_MESSAGE], kind)


def _error_text(data: bytes) -> str:
    error = _error_body(data[: 64 * 1024])
    return error.message if error is not None else ""


def _objects(output: Mapping[str, Any], key: str, operation: str) -> list[dict[str, Any]]:
    value = output.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise LegacyUnavailable(f"{operation}: {key} is not a list of objects")
    return value


def _id(value: Any, operation: str) -> str:
    """A historic id as a string ("257"; numbers accepted, as Zimbra's ids are)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID or not value.isprintable():
        raise LegacyUnavailable(f"{operation}: invalid message id")
    return value


def _message(value: Any) -> dict[str, Any]:
    """A message object with a usable ``messageId`` (normalised to a string)."""
    if not isinstance(value, dict):
        raise LegacyUnavailable("message is not an object")
    message = dict(value)
    message["messageId"] = _id(message.get("messageId"), "message")
    return message


def _walk_folders(folders: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    stack = list(folders)
    while stack:
        folder = stack.pop()
        yield folder
        children = folder.get("children") or []
        if not isinstance(children, list) or not all(isinstance(c, dict) for c in children):
            raise LegacyUnavailable("listFolders: children is not a list of objects")
        stack.extend(children)


def _check_folder(folder: Mapping[str, Any]) -> None:
    folder_id, name = folder.get("id"), folder.get("name")
    if not isinstance(folder_id, int) or isinstance(folder_id, bool) or not isinstance(name, str):
        raise LegacyUnavailable("folder without an integer id and a name")


def _batches(message_ids: Sequence[str]) -> Iterator[list[str]]:
    ids = list(dict.fromkeys(message_ids))
    for message_id in ids:
        if not isinstance(message_id, str) or not 0 < len(message_id) <= MAX_ID:
            raise ValueError(f"invalid historic message id: {message_id!r}")
    for start in range(0, len(ids), MAX_IDS_PER_CALL):
        yield ids[start : start + MAX_IDS_PER_CALL]
