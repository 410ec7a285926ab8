"""What the legacy front tells the usage figures: the historic web services are stateless
calls, so a "session" is a visit: the first successful call of a person on a BAL with a
software, then none for the same three until `window` seconds pass without a call.
A successful sendMessage is a message. The software is NUMHOMOLOGATION (the approval
number historic LPS send), else the HTTP User-Agent.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from gateway.mss.historic_ws import Caller
from gateway.usage import UsageRecorder
from gateway.usage.access import Access

DEFAULT_WINDOW = 1_800.0
MAX_VISITS = 100_000


class LegacyUsage:
    def __init__(
        self,
        recorder: UsageRecorder,
        *,
        window: float = DEFAULT_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.recorder = recorder
        self.window = window
        self.clock = clock
        self._visits: OrderedDict[tuple[str, str, str], float] = OrderedDict()

    def __call__(
        self,
        service: str,
        operation: str,
        caller: Caller,
        bal: str | None,
        backend: str | None,
        delegated: bool,
        ok: bool,
    ) -> None:
        if not ok or bal is None or caller.idnat is None:
            return
        software = caller.software or caller.user_agent or ""
        now = self.clock()
        key = (caller.idnat, bal, software)
        last = self._visits.pop(key, None)
        self._visits[key] = now
        while len(self._visits) > MAX_VISITS:
            self._visits.popitem(last=False)
        kinds = [] if last is not None and now - last < self.window else ["session"]
        if operation == "sendMessage":
            kinds.append("message")
        for kind in kinds:
            self.recorder.record(
                Access(
                    at=self.recorder.clock(),
                    interface="historic-ws",
                    software=software,
                    version="",
                    bal=bal,
                    platform=backend or "",
                    idnat=caller.idnat,
                    delegated=delegated,
                    kind="session" if kind == "session" else "message",
                )
            )
