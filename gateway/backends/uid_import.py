"""`UidImport` over a platform's import API (`import_url`, HTTP Basic with the backend's
master credentials; the mock's modern platform answers it with its operator API): a
folder's UIDVALIDITY, then each message under its UID. A 409 is the platform saying the
folder's state forbids it (messages there already, UIDs past it): the migration then
appends instead. Every other failure is a backend error."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from urllib.parse import quote

import httpx

from gateway.backends.errors import (
    BackendRefused,
    BackendTooLarge,
    BackendUnavailable,
    one_line,
)
from gateway.backends.provisioning import http_verify
from gateway.settings import BackendSettings


class OperatorImport:
    """The import API of one BAL on one platform. Close it with `aclose`."""

    def __init__(self, name: str, settings: BackendSettings, bal: str) -> None:
        assert settings.import_url is not None
        self._name = name
        self._base = f"{settings.import_url.rstrip('/')}/{quote(bal.lower(), safe='@')}/import"
        self._settings = settings
        self._http: httpx.AsyncClient | None = None  # made at the first import

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                verify=http_verify(self._settings),
                timeout=self._settings.reply_timeout,
                trust_env=False,
                auth=httpx.BasicAuth(self._settings.master_user, self._settings.password()),
            )
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def import_folder(self, folder: str, uidvalidity: int) -> bool:
        answer = await self._call(
            "PUT", "/uidvalidity", json={"folder": folder, "uidvalidity": uidvalidity}
        )
        return answer is not None

    async def import_message(
        self,
        folder: str,
        uid: int,
        message: bytes,
        flags: Collection[str],
        internal_date: dt.datetime,
    ) -> int | None:
        if internal_date.tzinfo is None:
            internal_date = internal_date.replace(tzinfo=dt.UTC)
        params: list[tuple[str, str | int | float | bool | None]] = [
            ("folder", folder),
            ("uid", uid),
            ("internal_date", internal_date.isoformat()),
        ]
        params += [("flag", f) for f in sorted(flags) if f.lower() != "\\recent"]
        answer = await self._call(
            "POST",
            "/messages",
            params=params,
            content=message,
            headers={"content-type": "message/rfc822"},
        )
        if answer is None:
            return None
        stored = answer.json().get("uid")
        if stored != uid:
            raise BackendUnavailable("protocol", f"{self._name}: import stored UID {stored!r}")
        return uid

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, object] | None = None,
        params: list[tuple[str, str | int | float | bool | None]] | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response | None:
        """The answer when 2xx, None on a 409; otherwise a backend error."""
        try:
            answer = await self._client().request(
                method,
                self._base + path,
                json=json,
                params=params,
                content=content,
                headers=headers,
            )
        except httpx.TransportError as exc:
            raise BackendUnavailable(
                "disconnected", f"{self._name}: import API ({type(exc).__name__})"
            ) from None
        if answer.is_success:
            return answer
        if answer.status_code == 409:
            return None
        text = one_line(
            f"{self._name}: import {path[1:]} answered {answer.status_code}: {answer.text}"
        )
        if answer.status_code == 413:
            raise BackendTooLarge(text)
        if answer.status_code >= 500:
            raise BackendUnavailable("unavailable", text)
        raise BackendRefused(text)
