"""A cap on request bodies, below every route: a declared length over the cap is answered 413
before a byte of the body is read, and a chunked body is answered 413 as soon as it passes
the cap, so that no form parser or JSON decoder ever holds more than the cap. The 413 says
`Connection: close`: the server then drops the connection instead of reading the rest."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.problems import problem

DEFAULT_MAX_BODY = 64 * 1024
_CLOSE = (b"connection", b"close")


class _OverTheCap(Exception):
    """Unwinds the application from `receive` once the body has passed the cap."""


class BodyLimit:
    """Pure ASGI middleware capping request bodies at `max_body` bytes."""

    def __init__(
        self,
        app: ASGIApp,
        max_body: int = DEFAULT_MAX_BODY,
        larger: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.larger = dict(larger or {})
        """Paths allowed a cap of their own (an uploaded directory file)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = self.larger.get(scope["path"], self.max_body)
        declared, chunked = _framing(scope)
        if declared is not None and declared > cap:
            await self._refuse(scope, receive, send, cap)
            return
        received = 0
        over = False
        complete = not chunked and not declared
        started = False

        async def capped_receive() -> Message:
            nonlocal received, over, complete
            if over:
                raise _OverTheCap
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    over = True
                    raise _OverTheCap
                complete = not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over and not started:
                return  # the application's answer to a body it could not read: ours instead
            if message["type"] == "http.response.start":
                started = True
                if not complete:  # answered without reading it all: do not read the rest
                    message = {**message, "headers": [*message.get("headers", []), _CLOSE]}
            await send(message)

        try:
            await self.app(scope, capped_receive, guarded_send)
        except _OverTheCap:
            if started:
                return  # a response already under way cannot become a 413; the server closes
        if over and not started:
            await self._refuse(scope, receive, send, cap)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, cap: int) -> None:
        response: Response
        path = scope["path"]
        if path.startswith(("/v1/", "/admin/")) or path == "/v1":
            response = problem(
                413,
                "Content Too Large",
                f"the request body is limited to {cap} bytes",
                kind="body-too-large",
                headers={"Connection": "close"},
            )
        else:
            response = PlainTextResponse(
                f"Requête trop volumineuse (au plus {cap} octets).",
                status_code=413,
                headers={"Connection": "close"},
            )
        await response(scope, receive, send)


def _framing(scope: Scope) -> tuple[int | None, bool]:
    """The declared Content-Length (None when absent or unreadable) and whether the body
    comes in chunks."""
    declared: int | None = None
    chunked = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                declared = None
        elif name == b"transfer-encoding":
            chunked = True
    return declared, chunked
