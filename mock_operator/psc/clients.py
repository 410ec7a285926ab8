"""OAuth clients registered with the mock PSC, from `clients.toml` in the data directory."""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from gateway.runtime.files import write_private

CIBA_GRANT = "urn:openid:params:grant-type:ciba"


@dataclass(frozen=True)
class Client:
    client_id: str
    client_secret: str = field(repr=False)
    redirect_uris: tuple[str, ...] = ()
    grant_types: tuple[str, ...] = ("authorization_code", "refresh_token", CIBA_GRANT)
    post_logout_redirect_uris: tuple[str, ...] = ()

    def check_secret(self, secret: str) -> bool:
        return hmac.compare_digest(self.client_secret.encode(), secret.encode())

    def accepts_redirect(self, uri: str) -> bool:
        """Exact match, except that a loopback redirect may use any port (RFC 8252 §7.3)."""
        if uri in self.redirect_uris:
            return True
        asked = urlsplit(uri)
        if asked.scheme != "http" or asked.hostname not in ("127.0.0.1", "::1", "localhost"):
            return False
        for registered in self.redirect_uris:
            known = urlsplit(registered)
            if (
                known.scheme == "http"
                and known.hostname == asked.hostname
                and known.path == asked.path
                and known.query == asked.query
            ):
                return True
        return False


class ClientError(Exception):
    """`invalid_client` (RFC 6749 §5.2): answered 401 with a Basic challenge."""


class ClientRegistry:
    def __init__(self, clients: list[Client]) -> None:
        self._clients = {c.client_id: c for c in clients}

    def get(self, client_id: str) -> Client | None:
        return self._clients.get(client_id)

    def all(self) -> list[Client]:
        return list(self._clients.values())

    def authenticate(self, authorization: str | None, form: dict[str, str]) -> Client:
        """client_secret_basic or client_secret_post, exactly one of them."""
        basic = authorization is not None and authorization[:6].lower() == "basic "
        posted = "client_secret" in form
        if basic and posted:
            raise ClientError("use one client authentication method")
        if basic:
            assert authorization is not None
            try:
                raw = base64.b64decode(authorization[6:].strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise ClientError("malformed Basic credentials") from None
            client_id, sep, secret = raw.partition(":")
            if not sep:
                raise ClientError("malformed Basic credentials")
            client_id, secret = unquote(client_id), unquote(secret)
        elif posted:
            client_id, secret = form.get("client_id", ""), form["client_secret"]
        else:
            raise ClientError("client authentication required")
        client = self._clients.get(client_id)
        if client is None or not client.check_secret(secret):
            raise ClientError("unknown client or wrong secret")
        return client

    @classmethod
    def load(cls, path: Path) -> ClientRegistry:
        """Read `path`, creating it with the default clients and fresh secrets on first start."""
        if not path.exists():
            _write_defaults(path)
        data = tomllib.loads(path.read_text("utf-8"))
        return cls(
            [
                Client(
                    client_id=raw["client_id"],
                    client_secret=raw["client_secret"],
                    redirect_uris=tuple(raw.get("redirect_uris", ())),
                    grant_types=tuple(raw.get("grant_types", Client.grant_types)),
                    post_logout_redirect_uris=tuple(raw.get("post_logout_redirect_uris", ())),
                )
                for raw in data.get("client", [])
            ]
        )


def _write_defaults(path: Path) -> None:
    text = f"""\
# OAuth clients registered with the mock Pro Santé Connect. Edit, then restart the mock.
# Loopback redirect URIs accept any port (RFC 8252 §7.3).

# The gateway: introspection, the login of its web pages, and CIBA (an e-CPS approval
# answers the historic OTP dialogue once a BAL has left the historic platform).
[[client]]
client_id = "lps-gateway"
client_secret = "{secrets.token_urlsafe(24)}"
redirect_uris = ["http://127.0.0.1:8080/ui/callback"]
post_logout_redirect_uris = ["http://127.0.0.1:8080/ui/"]
grant_types = ["authorization_code", "refresh_token", "{CIBA_GRANT}"]

# A practice software (LPS) under test: authorization code + PKCE, refresh, CIBA.
[[client]]
client_id = "lps-demo"
client_secret = "{secrets.token_urlsafe(24)}"
redirect_uris = ["http://127.0.0.1/callback", "http://localhost/callback"]
grant_types = ["authorization_code", "refresh_token", "{CIBA_GRANT}"]
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, text.encode("utf-8"), exclusive=True)
