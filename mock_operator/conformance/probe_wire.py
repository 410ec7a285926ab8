"""The probe's side of a connection to a server it does not trust: every step under a
deadline, every read bounded, and a transcript that never holds what the probe sent as a
secret (the server may echo it back)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.runtime.net import is_loopback
from mock_operator.conformance.probe_sasl import LoginPlan

CHUNK = 16 * 1024  # one read; the protocol readers bound what they keep of it
MAX_TRANSCRIPT_LINES = 60
MAX_SHOWN_CHARS = 300
CLOSE_GRACE = 1.0

WireFailure = Literal["connect", "timeout", "closed", "limit", "protocol", "tls", "refused"]


class WireError(Exception):
    """The server did not let the exchange finish: why, in one French sentence."""

    def __init__(self, kind: WireFailure, text: str) -> None:
        self.kind = kind
        self.text = text
        super().__init__(text)


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """``HOST:PORT`` or ``[V6]:PORT``; ValueError saying what is wrong."""
        host, sep, port = text.strip().rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{text!r}: expected HOST:PORT")
        if len(host) > 253 or any(c.isspace() or c in "/@" for c in host):
            raise ValueError(f"{text!r}: not a host name or address")
        return cls(host, int(port))


@dataclass(frozen=True)
class TlsPolicy:
    """How the probe checks the server's certificate: the system's CAs plus `cafiles`, for
    `server_name` (default: the host it connects to); `insecure` checks nothing."""

    cafiles: tuple[Path, ...] = ()
    insecure: bool = False
    server_name: str | None = None

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # the API LPS minimum
        for cafile in self.cafiles:
            context.load_verify_locations(cafile=str(cafile))
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def name_for(self, endpoint: Endpoint) -> str:
        return self.server_name or endpoint.host


@dataclass(frozen=True)
class TlsOutcome:
    version: str
    cipher: str
    server_name: str
    verified: bool

    def describe(self) -> str:
        check = (
            f"certificat vérifié pour {self.server_name}"
            if self.verified
            else "certificat NON vérifié (--insecure)"
        )
        return f"{self.version}, {self.cipher}, {check}"


class Transcript:
    """`C:`/`S:` lines of one connection, bounded in count and width. Whatever the probe
    sent as a secret is masked in everything recorded, server text included: a server may
    echo a token back, whole or in part."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.lines: list[str] = []
        self.dropped = 0
        self._secrets: tuple[str, ...] = ()
        self.hide(*secrets)

    def hide(self, *secrets: str) -> None:
        self._secrets += tuple(s for s in secrets if len(s) >= _WINDOW)

    def client(self, text: str) -> None:
        self._add(f"C: {text}")

    def server(self, text: str) -> None:
        self._add(f"S: {text}")

    def note(self, text: str) -> None:
        self._add(f"-- {text}")

    def _add(self, line: str) -> None:
        if len(self.lines) >= MAX_TRANSCRIPT_LINES:
            self.dropped += 1
            return
        line = _TOKEN_RUN.sub(self._mask, line[: MAX_SHOWN_CHARS * 4])
        if len(line) > MAX_SHOWN_CHARS:
            line = line[:MAX_SHOWN_CHARS] + "…"
        self.lines.append(line)

    def _mask(self, match: re.Match[str]) -> str:
        """A run of token characters holding a piece of a secret (any piece of 17
        characters or more holds one of these windows) is masked whole."""
        run = match.group()
        last = len(run) - _WINDOW
        for start in (*range(0, last, _WINDOW // 2), last):
            piece = run[start : start + _WINDOW]
            if any(piece in secret for secret in self._secrets):
                return "<masqué>"
        return run

    def excerpt(self, start: int = 0) -> tuple[str, ...]:
        """The lines from `start` on (a login's own, without its connection's set-up)."""
        tail = (f"… ({self.dropped} lignes de plus)",) if self.dropped else ()
        return (*self.lines[start:], *tail)


_WINDOW = 12
_TOKEN_RUN = re.compile(r"[A-Za-z0-9+/=_.~-]{12,}")  # _WINDOW or more


def shown(data: bytes) -> str:
    """A server line as the transcript shows it (its first line, never all of it)."""
    line = data.split(b"\r\n", 1)[0][: MAX_SHOWN_CHARS + 1]
    return line.decode("utf-8", "replace")


class Wire:
    """One TCP connection (then TLS) whose every step runs under `timeout` seconds."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        transcript: Transcript,
        timeout: float,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.transcript = transcript
        self.timeout = timeout
        self.tls: TlsOutcome | None = None

    @classmethod
    async def connect(cls, endpoint: Endpoint, transcript: Transcript, step: float) -> Wire:
        """Connect within `step` seconds, the deadline of each later step too."""
        try:
            async with asyncio.timeout(step):
                reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
        except TimeoutError:
            raise WireError("timeout", f"pas de connexion à {endpoint} en {step:g} s") from None
        except OSError as exc:
            raise WireError("connect", f"connexion à {endpoint} impossible : {exc}") from None
        return cls(reader, writer, transcript, step)

    @property
    def loopback(self) -> bool:
        """Whether the server is on a loopback address (where plaintext login is allowed)."""
        return is_loopback(self.writer.get_extra_info("peername"))

    @contextlib.asynccontextmanager
    async def step(self, what: str) -> AsyncIterator[None]:
        """One exchange under the deadline; a silent or broken peer becomes a `WireError`."""
        try:
            async with asyncio.timeout(self.timeout):
                yield
        except TimeoutError:
            raise WireError("timeout", f"{what} : pas de réponse en {self.timeout:g} s") from None
        except ssl.SSLError as exc:
            raise WireError("tls", f"{what} : erreur TLS ({exc.reason or exc})") from None
        except OSError as exc:
            raise WireError("closed", f"{what} : connexion perdue ({exc})") from None

    async def receive(self) -> bytes:
        """Up to `CHUNK` bytes; b"" at end of stream. Call within a `step`."""
        return await self.reader.read(CHUNK)

    async def send(self, data: bytes, shown_as: str) -> None:
        """Write `data`; the transcript records `shown_as` (never the bytes of a secret)."""
        self.transcript.client(shown_as)
        async with self.step("envoi"):
            self.writer.write(data)
            await self.writer.drain()

    async def start_tls(self, context: ssl.SSLContext, server_name: str) -> TlsOutcome:
        try:
            async with asyncio.timeout(self.timeout):
                await self.writer.start_tls(context, server_hostname=server_name)
        except TimeoutError:
            raise WireError("tls", f"négociation TLS non finie en {self.timeout:g} s") from None
        except ssl.SSLCertVerificationError as exc:
            why = exc.verify_message or exc.reason or str(exc)
            raise WireError(
                "tls",
                f"certificat refusé pour {server_name} ({why}) : --ca FICHIER pour une "
                "autorité de test, --host-name NOM pour le nom attendu",
            ) from None
        except (ssl.SSLError, OSError) as exc:
            raise WireError("tls", f"négociation TLS échouée : {exc}") from None
        ssl_object = self.writer.get_extra_info("ssl_object")
        if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
            raise WireError("tls", "négociation TLS sans session TLS")
        cipher = ssl_object.cipher()
        self.tls = TlsOutcome(
            version=ssl_object.version() or "?",
            cipher=cipher[0] if cipher else "?",
            server_name=server_name,
            verified=context.verify_mode == ssl.CERT_REQUIRED,
        )
        self.transcript.note(f"TLS : {self.tls.describe()}")
        return self.tls

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_GRACE):
                await self.writer.wait_closed()


class ProbeSide:
    """What the IMAP and the SMTP side of a probe run share: the endpoint, whom to log in
    as, how the certificate is checked, and the deadline of each step."""

    def __init__(
        self,
        endpoint: Endpoint,
        plan: LoginPlan,
        policy: TlsPolicy,
        context: ssl.SSLContext,
        step: float,
    ) -> None:
        self.endpoint = endpoint
        self.plan = plan
        self.policy = policy
        self.context = context
        self.step = step
        self.tls = False  # logins negotiate TLS (the setup connection did)
