"""CIBA (backchannel authentication) requests: the card reader or the phone approves.

Poll mode only, as PSC. A request is approved automatically after a configurable delay,
or from the mock's approval page; it can be denied there, and it expires.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_PENDING = 1_000
SLOW_DOWN_STEP = 5  # seconds added to the interval after a too-early poll (CIBA §11)


class CibaError(Exception):
    """A token-endpoint error for a CIBA poll: `authorization_pending`, `slow_down`, ..."""

    def __init__(self, error: str, description: str) -> None:
        self.error = error
        self.description = description
        super().__init__(f"{error}: {description}")


@dataclass
class CibaRequest:
    auth_req_id: str
    client_id: str
    persona: str
    means: str
    binding_message: str
    scope: str
    created_at: float
    expires_at: float
    interval: int
    status: str = "pending"  # pending | approved | denied
    last_poll: float | None = field(default=None)


class CibaBroker:
    def __init__(
        self,
        *,
        expires_in: int,
        interval: int,
        auto_approve_after: float | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._expires_in = expires_in
        self._interval = interval
        self._auto_approve_after = auto_approve_after
        self._clock = clock
        self._requests: dict[str, CibaRequest] = {}

    def start(
        self, *, client_id: str, persona: str, means: str, binding_message: str, scope: str
    ) -> CibaRequest:
        self._forget_expired()
        if len(self._requests) >= MAX_PENDING:
            raise CibaError("slow_down", "too many pending authentication requests")
        now = self._clock()
        request = CibaRequest(
            auth_req_id=secrets.token_urlsafe(24),
            client_id=client_id,
            persona=persona,
            means=means,
            binding_message=binding_message,
            scope=scope,
            created_at=now,
            expires_at=now + self._expires_in,
            interval=self._interval,
        )
        self._requests[request.auth_req_id] = request
        return request

    def pending(self) -> list[CibaRequest]:
        self._forget_expired()
        return [r for r in self._requests.values() if self._status(r) == "pending"]

    def approved(self) -> list[CibaRequest]:
        """Approved requests their client has not collected yet: the phone still shows the
        code (the gateway's OTP path asks the person to type it)."""
        self._forget_expired()
        return [r for r in self._requests.values() if self._status(r) == "approved"]

    def decide(self, auth_req_id: str, *, approve: bool) -> bool:
        request = self._requests.get(auth_req_id)
        if request is None or self._status(request) != "pending":
            return False
        request.status = "approved" if approve else "denied"
        return True

    def poll(self, auth_req_id: str, client_id: str) -> CibaRequest:
        """The approved request (consumed), or a `CibaError` naming the polling outcome."""
        request = self._requests.get(auth_req_id)
        if request is None or request.client_id != client_id:
            raise CibaError("invalid_grant", "unknown auth_req_id")
        now = self._clock()
        if now >= request.expires_at:
            del self._requests[auth_req_id]
            raise CibaError("expired_token", "the authentication request has expired")
        too_early = request.last_poll is not None and now - request.last_poll < request.interval
        request.last_poll = now
        if too_early:
            request.interval += SLOW_DOWN_STEP
            raise CibaError("slow_down", f"poll at most every {request.interval} s")
        status = self._status(request)
        if status == "denied":
            del self._requests[auth_req_id]
            raise CibaError("access_denied", "the user refused the authentication")
        if status == "pending":
            raise CibaError("authorization_pending", "waiting for the user's approval")
        del self._requests[auth_req_id]
        return request

    def _status(self, request: CibaRequest) -> str:
        if (
            request.status == "pending"
            and self._auto_approve_after is not None
            and self._clock() - request.created_at >= self._auto_approve_after
        ):
            request.status = "approved"
        return request.status

    def _forget_expired(self) -> None:
        now = self._clock()
        for key in [k for k, r in self._requests.items() if now >= r.expires_at]:
            del self._requests[key]
