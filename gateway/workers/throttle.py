"""The failed-login windows of a node, shared by its workers: a failure one worker sees
is told to the others (through the supervisor), so that an address or a person gets
`[limits] max_failed_logins` tries per node, not per worker. A throttled attempt is not
a failure: it costs no message."""

from __future__ import annotations

import logging
from collections.abc import Callable

from gateway.runtime.limits import LoginThrottle
from gateway.workers.channel import Message

log = logging.getLogger(__name__)


class NodeThrottle(LoginThrottle):
    def __init__(self, send: Callable[[Message], None], max_failures: int, window: float) -> None:
        super().__init__(max_failures, window)
        self._send = send

    def failed(self, key: str) -> None:
        super().failed(key)
        self._send({"t": "failed", "key": key})

    def received(self, message: Message) -> None:
        """Another worker's failure, counted here as if seen here."""
        key = message.get("key")
        if isinstance(key, str) and len(key) <= 512:
            super().failed(key)
            log.debug("workers.failed_login_heard", extra={"from_worker": message.get("from")})
