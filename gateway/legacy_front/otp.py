"""The one-time-password login of the historic web services, wherever the BAL lives.

The historic dialogue is two requests: ``IDNAT`` + ``PASSWORD`` + ``IDCANAL`` (answered
401 ``X-OTP-Required``: a code was sent), then the same with ``OTP``. The LPS keeps that
dialogue whoever answers it:

* `HistoricOtp`: while the person's BAL lives on the historic platform, both requests are
  passed to it (it holds the password and sends the SMS) and its verdict is taken;
* `CibaOtp`: once it has moved, Pro Santé Connect answers instead. The first request
  starts a CIBA request (poll mode) for the idNat with a short code as ``binding_message``;
  the person's e-CPS app shows that code, they approve and type it into the LPS as the
  OTP. The second request checks the code (constant time, `max_failures` then the channel
  is blocked: 44), then polls the token endpoint until PSC says the approval was given
  (within `max_wait`), and checks that the token names this idNat. The password of the
  first request is not checked: the platform that held it is gone, and the e-CPS approval
  proves more than it did. One pending request per idNat; a new one is started only when
  the previous has expired, so that nobody can flood a phone with approvals.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from gateway.mss.historic_ws import (
    AUTH_CHANNEL_BLOCKED,
    AUTH_IMPOSSIBLE,
    AUTH_INVALID_CREDENTIALS,
    AuthRefused,
    OtpRequired,
)
from psc_auth import TokenError, TokenValidator

log = logging.getLogger(__name__)

CIBA_GRANT = "urn:openid:params:grant-type:ciba"
CHANNELS = ("SMS", "MAIL")
CODE_DIGITS = 6
MAX_PENDING = 10_000
PROBE_PATH = "/Annuaire/rest/v1/listEmails"
MAX_PASSED_HEADER = 256  # characters of each header passed to the historic platform
OTP_HEADERS = ("idnat", "password", "idcanal", "otp", "numhomologation", "user-agent")


class OtpLogin(Protocol):
    """One way of answering the OTP dialogue; `verify` returns the means on success."""

    async def verify(self, idnat: str, headers: Mapping[str, str]) -> str: ...


class HistoricOtp:
    """The historic platform answers: the dialogue's headers are passed to it on a harmless
    call (listEmails) and its verdict is taken: 401 + X-OTP-Required (code sent), 403 +
    X-ErrorCode (refused). Only an answer of the operation itself proves the credentials:
    its output (200), or one of its functional errors (400 with the historic error body,
    e.g. 34 for a person with no BAL there); anything else (a proxy's 400 or 429, a 404,
    a redirect) refuses the login. Each header passed is bounded."""

    def __init__(self, services_url: str, client: httpx.AsyncClient) -> None:
        """`services_url`: the platform's ``.../mss-msg-services/services``."""
        self.base_url = services_url.rstrip("/")
        self.client = client

    async def verify(self, idnat: str, headers: Mapping[str, str]) -> str:
        passed = {k: v for k in OTP_HEADERS if (v := headers.get(k)) is not None}
        if any(len(v) > MAX_PASSED_HEADER for v in passed.values()):
            raise AuthRefused(AUTH_INVALID_CREDENTIALS, "credentials too long")
        try:
            answer = await self.client.post(
                self.base_url + PROBE_PATH, json={"listEmailsInput": {}}, headers=passed
            )
        except httpx.HTTPError as exc:
            log.warning(
                "legacy_front.otp.historic_unreachable", extra={"error": type(exc).__name__}
            )
            raise AuthRefused(AUTH_IMPOSSIBLE, "historic platform unreachable") from None
        if answer.status_code == 401 and "x-otp-required" in answer.headers:
            expires = _expires_in(answer)
            raise OtpRequired(answer.headers["x-otp-required"][:16], expires)
        if answer.status_code == 403:
            code = answer.headers.get("x-errorcode", "")
            raise AuthRefused(
                int(code) if code.isdigit() and len(code) < 4 else AUTH_IMPOSSIBLE,
                "refused by the historic platform",
            )
        if not _operation_answered(answer):
            log.warning("legacy_front.otp.unexpected", extra={"status": answer.status_code})
            raise AuthRefused(AUTH_IMPOSSIBLE, "unexpected answer of the historic platform")
        if "otp" not in headers:  # a password alone never opens a session
            raise AuthRefused(AUTH_IMPOSSIBLE, "the historic platform asked no code")
        return "otp"


def _operation_answered(answer: httpx.Response) -> bool:
    """The probe ran: its output, or a functional error of the historic contract."""
    if answer.status_code == 200:
        return "listEmailsOutput" in _json(answer)
    if answer.status_code == 400:
        error = _json(answer).get("error")
        return isinstance(error, dict) and error.get("type") == "FONCTIONNELLE"
    return False


def _expires_in(answer: httpx.Response) -> int:
    try:
        value = answer.json().get("otpRequired", {}).get("expiresIn", 300)
    except (ValueError, AttributeError):
        return 300
    return value if isinstance(value, int) and 0 < value < 86_400 else 300


@dataclass
class _Pending:
    auth_req_id: str = field(repr=False)
    code: str = field(repr=False)
    expires_at: float
    interval: float
    failures: int = 0


class CibaOtp:
    """Pro Santé Connect answers, by CIBA, as the gateway's own PSC client."""

    def __init__(
        self,
        validator: TokenValidator,
        client: httpx.AsyncClient,
        *,
        client_id: str,
        client_secret: str,
        max_failures: int = 3,
        lockout: float = 900.0,
        max_wait: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.validator = validator
        self.client = client
        self.client_id = client_id
        self._secret = client_secret
        self.max_failures = max_failures
        self.lockout = lockout
        self.max_wait = max_wait
        self.clock = clock
        self._pending: dict[str, _Pending] = {}
        self._starting: dict[str, asyncio.Future[_Pending]] = {}
        self._blocked: dict[str, float] = {}

    async def verify(self, idnat: str, headers: Mapping[str, str]) -> str:
        now = self.clock()
        if self._blocked.get(idnat, 0.0) > now:
            raise AuthRefused(AUTH_CHANNEL_BLOCKED, "too many wrong codes: channel blocked")
        otp = headers.get("otp")
        pending = self._pending.get(idnat)
        if pending is not None and pending.expires_at <= now:
            del self._pending[idnat]
            pending = None
        if otp is None:
            channel = (headers.get("idcanal") or "").upper()
            if channel not in CHANNELS:
                raise AuthRefused(AUTH_IMPOSSIBLE, "IDCANAL must be SMS or MAIL")
            if pending is None:
                pending = await self._start_once(idnat)
            raise OtpRequired(channel, max(1, int(pending.expires_at - now)))
        if pending is None:
            raise AuthRefused(AUTH_IMPOSSIBLE, "no code pending: ask for one first")
        if not hmac.compare_digest(otp.strip().encode(), pending.code.encode()):
            pending.failures += 1
            if pending.failures >= self.max_failures:
                del self._pending[idnat]
                self._blocked[idnat] = now + self.lockout
                raise AuthRefused(AUTH_CHANNEL_BLOCKED, "too many wrong codes: channel blocked")
            raise AuthRefused(AUTH_INVALID_CREDENTIALS, "wrong code")
        await self._approved(idnat, pending)
        self._pending.pop(idnat, None)
        return "ciba"

    async def _metadata(self) -> Mapping[str, Any]:
        return await self.validator.provider.metadata()

    async def _start_once(self, idnat: str) -> _Pending:
        """`_start`, shared by the first requests that arrive while it runs: an LPS (or a
        flood) asking many times at once still rings the phone once."""
        starting = self._starting.get(idnat)
        if starting is None:
            starting = asyncio.ensure_future(self._start(idnat))
            self._starting[idnat] = starting
            starting.add_done_callback(lambda _: self._starting.pop(idnat, None))
        return await asyncio.shield(starting)

    async def _start(self, idnat: str) -> _Pending:
        if len(self._pending) >= MAX_PENDING:
            self._forget_expired()
            if len(self._pending) >= MAX_PENDING:
                raise AuthRefused(AUTH_IMPOSSIBLE, "too many logins pending, try again later")
        code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
        try:
            endpoint = str((await self._metadata())["backchannel_authentication_endpoint"])
            answer = await self.client.post(
                endpoint,
                data={
                    "scope": "openid",
                    "login_hint": idnat,
                    "binding_message": code,
                    "channel": "MOBILE",
                },
                auth=(self.client_id, self._secret),
            )
        except (httpx.HTTPError, KeyError, TokenError) as exc:
            log.warning("legacy_front.ciba.unreachable", extra={"error": type(exc).__name__})
            raise AuthRefused(AUTH_IMPOSSIBLE, "Pro Santé Connect unreachable") from None
        body = _json(answer)
        if answer.status_code != 200 or not isinstance(body.get("auth_req_id"), str):
            error = str(body.get("error", answer.status_code))[:64]
            log.info(
                "legacy_front.ciba.refused",
                extra={
                    "idnat": idnat,
                    "error": error,
                    "detail": str(body.get("error_description"))[:200],
                },
            )
            code_ = AUTH_INVALID_CREDENTIALS if error == "unknown_user_id" else AUTH_IMPOSSIBLE
            raise AuthRefused(code_, f"Pro Santé Connect refused the request: {error}")
        expires_in = body.get("expires_in", 120)
        interval = body.get("interval", 5)
        pending = _Pending(
            auth_req_id=body["auth_req_id"][:512],
            code=code,
            expires_at=self.clock() + (expires_in if isinstance(expires_in, int) else 120),
            interval=float(interval) if isinstance(interval, int) and 0 < interval < 60 else 5.0,
        )
        self._pending[idnat] = pending
        log.info("legacy_front.ciba.started", extra={"idnat": idnat})
        return pending

    async def _approved(self, idnat: str, pending: _Pending) -> None:
        """Poll until PSC has the approval (within `max_wait`), then check the idNat."""
        deadline = self.clock() + self.max_wait
        endpoint = str((await self._metadata())["token_endpoint"])
        while True:
            try:
                answer = await self.client.post(
                    endpoint,
                    data={"grant_type": CIBA_GRANT, "auth_req_id": pending.auth_req_id},
                    auth=(self.client_id, self._secret),
                )
            except httpx.HTTPError as exc:
                log.warning("legacy_front.ciba.unreachable", extra={"error": type(exc).__name__})
                raise AuthRefused(AUTH_IMPOSSIBLE, "Pro Santé Connect unreachable") from None
            body = _json(answer)
            if answer.status_code == 200 and isinstance(body.get("access_token"), str):
                break
            error = body.get("error")
            if error == "slow_down":
                pending.interval += 5
            elif error != "authorization_pending":
                self._pending.pop(idnat, None)
                if error == "access_denied":
                    raise AuthRefused(AUTH_INVALID_CREDENTIALS, "refused on the e-CPS app")
                raise AuthRefused(AUTH_IMPOSSIBLE, f"approval not obtained: {str(error)[:64]}")
            if self.clock() + pending.interval > deadline:
                raise AuthRefused(
                    AUTH_IMPOSSIBLE, "not yet approved: approve on the e-CPS app, then retry"
                )
            await asyncio.sleep(pending.interval)
        try:
            identity = await self.validator.validate(body["access_token"])
        except TokenError:
            raise AuthRefused(
                AUTH_IMPOSSIBLE, "Pro Santé Connect's token did not validate"
            ) from None
        if str(identity.idnat) != idnat:
            raise AuthRefused(AUTH_INVALID_CREDENTIALS, "approved by someone else")

    def _forget_expired(self) -> None:
        now = self.clock()
        for idnat in [k for k, p in self._pending.items() if p.expires_at <= now]:
            del self._pending[idnat]
        for idnat in [k for k, until in self._blocked.items() if until <= now]:
            del self._blocked[idnat]


def _json(answer: httpx.Response) -> dict[str, Any]:
    try:
        body = answer.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
