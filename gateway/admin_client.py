"""How `lps-gateway` commands reach the running gateway's `/admin` API: its data directory
(from `--config FILE`, `--data DIR`, or the current directory's `.lps-gateway`, as the demo
makes it) holds the local admin secret and the URL the gateway listens on
(`gateway.admin_secret`). Commands drive the running gateway rather than its database:
only the gateway can hold a BAL's writes and end its live sessions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway import admin_secret
from gateway.settings import Settings, load_settings

HOW_TO_START = (
    "start it with `lps-gateway serve --config FILE` (or `lps-gateway demo` in this "
    "directory), or say which gateway with --config FILE or --data DIR"
)


class AdminClientError(Exception):
    """A command could not get its answer; `exit_code` is what the command exits with."""

    exit_code = 1


class GatewayUnreachable(AdminClientError):
    """No running gateway there (exit 2): the message says how to start one."""

    exit_code = 2


class AdminRefused(AdminClientError):
    """The gateway refused the secret or token (401/403)."""


class RequestRefused(AdminClientError):
    """The gateway refused what was asked (400, 422: a usage error, exit 2)."""

    exit_code = 2


@dataclass(frozen=True)
class AdminTarget:
    """Where the gateway's API is, and what to present to it."""

    url: str
    authorization: str  # the local secret, or an administrator's PSC token
    data_dir: Path

    @classmethod
    def locate(
        cls, config: Path | None = None, data: Path | None = None, token: str | None = None
    ) -> AdminTarget:
        """The gateway of `config` (or `data`, or the current directory's data directory)."""
        overrides = {"data_dir": data} if data is not None else {}
        try:
            settings = load_settings(config, **overrides)
        except FileNotFoundError as exc:
            raise GatewayUnreachable(str(exc)) from None
        return cls.of(settings, token)

    @classmethod
    def of(cls, settings: Settings, token: str | None = None) -> AdminTarget:
        data_dir = settings.data_dir
        try:
            url = (data_dir / admin_secret.URL_FILE).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise GatewayUnreachable(
                f"no gateway is running with data directory {data_dir.resolve()}: " + HOW_TO_START
            ) from None
        if token is not None:
            return cls(url, token, data_dir)
        try:
            secret = admin_secret.read_admin_secret(data_dir)
        except FileNotFoundError:
            raise GatewayUnreachable(
                f"no admin secret in {data_dir.resolve()}: " + HOW_TO_START
            ) from None
        except (PermissionError, ValueError) as exc:
            raise AdminRefused(
                f"cannot read the admin secret ({exc}): run the command as the gateway's "
                "user, or give an administrator's PSC token"
            ) from None
        return cls(url, secret, data_dir)


class AdminClient:
    """Calls to `/admin` of one gateway (httpx, synchronous: a command does one thing)."""

    def __init__(self, target: AdminTarget, *, timeout: float = 30.0) -> None:
        self.target = target
        self._http = httpx.Client(
            base_url=target.url,
            headers={"Authorization": f"Bearer {target.authorization}"},
            timeout=timeout,
            trust_env=False,  # a proxy of the environment must not see the secret
        )

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of `/admin{path}`; `AdminClientError` otherwise."""
        try:
            response = self._http.request(method, f"/admin{path}", **kwargs)
        except httpx.TransportError as exc:
            raise GatewayUnreachable(
                f"the gateway at {self.target.url} does not answer ({type(exc).__name__}): "
                + HOW_TO_START
            ) from None
        if response.status_code in (401, 403):
            raise AdminRefused(
                f"the gateway refused the credentials ({response.status_code}: {_detail(response)})"
            )
        if response.status_code in (400, 422):
            raise RequestRefused(_detail(response))
        if response.is_error:
            status = response.status_code
            raise AdminClientError(f"{method} /admin{path}: {status} {_detail(response)}")
        return response.json()

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        detail = str(body.get("detail") or body.get("title") or body)
        errors = body.get("errors")
        if isinstance(errors, list):  # the validation's: where, and what
            detail += ": " + "; ".join(
                f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg', '')}"
                for e in errors
                if isinstance(e, dict)
            )
        return detail[:300]
    return str(body)[:200]
