"""The local administrator's secret: what `lps-gateway` commands run on the gateway's own
machine present to its `/admin` API, instead of an administrator's PSC token.

The gateway writes it in its data directory (`admin.secret`, mode 0600) on its first start
and keeps it afterwards; whoever can read that file administers the gateway, as whoever can
read its database could. It is sent as `Authorization: Bearer lpsgw-admin.<random>`: the
prefix can never begin a PSC token (a JWT begins with `eyJ`), so the API tells the two apart
before any validation, and a local secret is never sent to the identity provider.

Beside it, `admin.url` says where the running gateway's HTTP listener is (its bound port,
on loopback when it listens on every address); the gateway removes it when it stops.
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path

from gateway.runtime.files import write_private

SECRET_FILE = "admin.secret"  # noqa: S105 (a file name)
URL_FILE = "admin.url"
PREFIX = "lpsgw-admin."
MAX_SECRET = 256  # an Authorization value longer than this is not ours


def is_local(credentials: str) -> bool:
    """Does this bearer value claim to be the local secret (rather than a PSC token)?"""
    return credentials.startswith(PREFIX)


def ensure_admin_secret(data_dir: Path) -> str:
    """The secret kept in `data_dir`, created (random, 0600) when absent."""
    path = data_dir / SECRET_FILE
    try:
        write_private(path, (PREFIX + secrets.token_urlsafe(32) + "\n").encode(), exclusive=True)
    except FileExistsError:
        path.chmod(0o600)  # an operator's copy keeps it to its owner
    return read_admin_secret(data_dir)


def read_admin_secret(data_dir: Path) -> str:
    """The secret as the commands read it (`FileNotFoundError` when the gateway never ran
    there, `PermissionError` for another user)."""
    value = (data_dir / SECRET_FILE).read_text(encoding="ascii").strip()
    if not is_local(value) or len(value) > MAX_SECRET:
        raise ValueError(f"{data_dir / SECRET_FILE} does not hold an admin secret")
    return value


def matches(expected: str, presented: str) -> bool:
    """Constant-time comparison (bytes: `compare_digest` refuses non-ASCII str)."""
    return hmac.compare_digest(expected.encode(), presented.encode("utf-8", "surrogateescape"))


def loopback_url(host: str, port: int) -> str:
    """How a command on this machine reaches a listener bound to `host`."""
    if host in ("", "0.0.0.0"):  # noqa: S104 (reading a bind address, not binding)
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def publish_url(data_dir: Path, url: str) -> None:
    (data_dir / URL_FILE).write_text(url + "\n", encoding="utf-8")


def withdraw_url(data_dir: Path, url: str) -> None:
    """Remove `admin.url` if it is still this gateway's (another may have started since)."""
    path = data_dir / URL_FILE
    try:
        if path.read_text(encoding="utf-8").strip() == url:
            path.unlink()
    except FileNotFoundError:
        pass
