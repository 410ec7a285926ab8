"""The supervisor of a node of several workers (`[server] workers` > 1).

It migrates the database, binds every listening socket the settings name, then starts
the workers: fresh interpreters (`python -P -m gateway.workers.worker`, safe whatever threads
and event loop this process runs, the demo's mock operator included), each handed its
sockets, its settings and one end of a channel. IMAP and SMTP: one socket per worker, all
on the same port with SO_REUSEPORT (port 0 gives every worker the same port, and the
kernel spreads the connections over the workers). HTTP (the API, the pages, the historic
web services, operations): worker 0 alone, since the pages' and the historic services'
sessions, CIBA requests and migration jobs live in its memory. It passes on what the
workers tell each other (a migration's holds, failed logins, and on SQLite the change
events; on PostgreSQL those go through LISTEN/NOTIFY, as between nodes).

A worker that dies is logged and started again on the same sockets (after 1 s, doubling
up to 30 s while it keeps dying young); one that fails while the node starts fails the
node. On SIGTERM, SIGINT or SIGHUP (a closed terminal: the workers ignore it) each
worker drains within `[ops] shutdown_grace` and exits; one still there `STOP_MARGIN`
seconds later is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import multiprocess

from delegation.db import is_postgresql, migrate
from gateway import admin_secret
from gateway.db import migrate_gateway
from gateway.metrics import MULTIPROC_DIR
from gateway.runtime.asgi_server import bind_tcp, ensure_free
from gateway.runtime.tls import ensure_dev_certificate
from gateway.server import check_settings
from gateway.settings import Settings
from gateway.workers.channel import Channel, Message, RelayBus

log = logging.getLogger(__name__)

STOP_MARGIN = 15.0  # seconds past shutdown_grace a worker has to exit before it is killed
RESTART_MIN = 1.0  # seconds before a dead worker is started again
RESTART_MAX = 30.0
STABLE = 30.0  # a worker that lived this long had nothing wrong at start: restart quickly
LAST_WORDS = 5.0  # seconds to read what a worker wrote before it exited


class NodeFailed(Exception):
    """A worker could not start (its own error is on stderr): neither can the node."""


WORKER_COMMAND = (sys.executable, "-P", "-m", "gateway.workers.worker")
"""`-P`: the working directory is not put first on the worker's sys.path, so a module
planted there (a `pickle.py`) is not imported in place of the standard library's before
the worker reads its settings."""

EVERY_WORKER = frozenset({"imap.port", "imap.implicit_tls_port", "smtp.port"})


def listeners(settings: Settings) -> list[tuple[str, str, int]]:
    """(setting, host, port) of each listener a gateway of these settings opens."""
    http, ops, imap, smtp = settings.http, settings.ops, settings.imap, settings.smtp
    found = [("http.port", http.host, http.port)]
    if ops.port is not None:
        found.append(("ops.port", ops.host, ops.port))
    found.append(("imap.port", imap.host, imap.port))
    if imap.implicit_tls_port is not None:
        found.append(("imap.implicit_tls_port", imap.host, imap.implicit_tls_port))
    found.append(("smtp.port", smtp.host, smtp.port))
    legacy = settings.legacy_front
    if legacy.enabled and legacy.https_port is not None:
        found.append(("legacy_front.https_port", legacy.https_host, legacy.https_port))
    return found


@dataclass
class _Port:
    """A listener as the banner reads it."""

    port: int


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    channel: Channel
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    delay: float = RESTART_MIN  # before the next restart, should this one die young
    listening: asyncio.Task[None] | None = None


class Node:
    """The supervisor as a service of `run_until_signalled` (start, drain, stop), and the
    node's listeners as `describe_gateway` prints them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.count = settings.server.count()
        self.relays = not is_postgresql(settings.database())
        # this process's own registry (the demo's mock) joins the relay on SQLite
        self.bus = RelayBus(self._from_supervisor)
        self.ports: dict[str, int] = {}
        self.failed = False  # a worker exited with an error: the node's exit status says so
        self.migrated = False  # the database is migrated already (the demo's seed did it)
        self._sockets: dict[str, list[socket.socket]] = {}
        self._workers: dict[int, _Worker] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._started = False
        self._stopping = False
        self._start_failure: str | None = None
        self._metrics_dir: str | None = None

    # -- what the banner says ----------------------------------------------------------------
    @property
    def http_url(self) -> str:
        http = self.settings.http
        return http.public_url or f"http://{http.host}:{self.ports['http.port']}"

    @property
    def ops_url(self) -> str | None:
        port = self.ports.get("ops.port")
        if port is None:
            return None
        host = self.settings.ops.host
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def _front(self, setting: str) -> _Port | None:
        port = self.ports.get(setting)
        return _Port(port) if port is not None else None

    @property
    def imap(self) -> _Port | None:
        return self._front("imap.port")

    @property
    def imaps(self) -> _Port | None:
        return self._front("imap.implicit_tls_port")

    @property
    def smtp(self) -> _Port | None:
        return self._front("smtp.port")

    @property
    def legacy_https_port(self) -> int | None:
        return self.ports.get("legacy_front.https_port")

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers.values()]

    # -- start -------------------------------------------------------------------------------
    async def start(self) -> None:
        settings = self.settings
        check_settings(settings)
        # a stop as on SIGTERM, never the default death that leaves the workers undrained
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGHUP, os.kill, os.getpid(), signal.SIGTERM
        )
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.migrated:
            url = settings.database()
            await migrate(url)
            await migrate_gateway(url)
        # what each worker would otherwise create at once, racing the others
        if settings.tls.cert is None or settings.tls.key is None:
            ensure_dev_certificate(settings.data_dir)
        admin_secret.ensure_admin_secret(settings.data_dir)
        self._bind()
        self._metrics_dir = tempfile.mkdtemp(prefix="lpsgw-metrics-")
        for index in range(self.count):
            await self._spawn(index)
        while not all(w.ready for w in self._workers.values()):
            if self._start_failure is not None:
                raise NodeFailed(self._start_failure)
            self._changed.clear()
            await self._changed.wait()
        self._started = True
        log.info("workers.started", extra={"workers": self.count, "pids": self.pids})

    def _bind(self) -> None:
        for setting, host, port in listeners(self.settings):
            every = setting in EVERY_WORKER
            if every and port:  # no other node there, SO_REUSEPORT or not
                ensure_free(host, port, setting)
            first = bind_tcp(host, port, setting, reuse_port=every)
            self._sockets[setting] = [first]
            self.ports[setting] = bound = first.getsockname()[1]
            for _ in range(self.count - 1 if every else 0):
                self._sockets[setting].append(bind_tcp(host, bound, setting, reuse_port=True))

    async def _spawn(self, index: int) -> None:
        sockets = {s: group[index] for s, group in self._sockets.items() if index < len(group)}
        ours, theirs = socket.socketpair()
        spec: dict[str, Any] = {
            "index": index,
            "count": self.count,
            "settings": self.settings.model_dump(),
            "sockets": {setting: sock.fileno() for setting, sock in sockets.items()},
            "channel": theirs.fileno(),
        }
        fds = [*spec["sockets"].values(), theirs.fileno()]
        assert self._metrics_dir is not None
        channel = await Channel.open(ours)
        try:
            process = await asyncio.create_subprocess_exec(
                *WORKER_COMMAND,
                stdin=asyncio.subprocess.PIPE,
                pass_fds=fds,
                env={**os.environ, MULTIPROC_DIR: self._metrics_dir},
            )
        except BaseException:
            await channel.close()
            raise
        finally:
            theirs.close()
        # known at once: a stop that began meanwhile ends it too, none is left running
        worker = self._workers[index] = _Worker(index, process, channel)
        worker.listening = self._task(self._listen(worker))
        self._task(self._watch(worker))
        if self._stopping:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        assert process.stdin is not None
        with contextlib.suppress(ConnectionError):  # it died already: `_watch` says so
            process.stdin.write(pickle.dumps(spec))  # settings with their secrets: a pipe
            await process.stdin.drain()
        process.stdin.close()

    def _task(self, work: Any) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- while it runs -----------------------------------------------------------------------
    async def _listen(self, worker: _Worker) -> None:
        while (message := await worker.channel.receive()) is not None:
            if message.get("t") == "ready":
                worker.ready = True
                self._changed.set()
                if self._started:
                    pid = worker.process.pid
                    log.info("workers.restarted", extra={"worker": worker.index, "pid": pid})
                continue
            if message.get("t") == "event":
                if not self.relays:
                    continue
                self.bus.received(message.get("event"))
            self._pass_on(message, worker.index)

    def _pass_on(self, message: Message, source: int | None) -> None:
        """A worker's message to the one it names (`to`), or to every other one (`source`
        None: this process's)."""
        if source is not None:
            message = {**message, "from": source}
        to = message.get("to")
        for worker in self._workers.values():
            if worker.index != source and to in (None, worker.index):
                worker.channel.send(message)

    def _from_supervisor(self, message: Message) -> None:
        if self.relays:
            self._pass_on(message, None)

    async def _watch(self, worker: _Worker) -> None:
        code = await worker.process.wait()
        if worker.listening is not None:  # its last lines (events) are still to be read
            await asyncio.wait([worker.listening], timeout=LAST_WORDS)
        await worker.channel.close()
        pid = worker.process.pid
        self._pass_on({"t": "gone", "worker": worker.index}, None)  # its holds end
        if self.relays:  # events it published may not have been passed on: re-check
            self.bus.gap()
        if self._metrics_dir is not None:
            multiprocess.mark_process_dead(pid, self._metrics_dir)  # type: ignore[no-untyped-call]
        if self._stopping:
            if code != 0:
                self.failed = True
                log.error(
                    "workers.failed", extra={"worker": worker.index, "pid": pid, "status": code}
                )
            return
        if not self._started:
            self._start_failure = f"worker {worker.index} exited with status {code} while starting"
            self._changed.set()
            return
        lived = time.monotonic() - worker.started
        delay = RESTART_MIN if lived >= STABLE else worker.delay
        log.error(
            "workers.died",
            extra={"worker": worker.index, "pid": pid, "status": code, "restart_in": delay},
        )
        await asyncio.sleep(delay)
        if self._stopping or self._workers.get(worker.index) is not worker:
            return
        try:
            await self._spawn(worker.index)
        except Exception:  # the node cannot make itself whole: let its orchestrator
            log.exception("workers.restart_failed", extra={"worker": worker.index})
            self.failed = True
            os.kill(os.getpid(), signal.SIGTERM)  # stop as on a signal, exit 1
            return
        self._workers[worker.index].delay = min(delay * 2, RESTART_MAX)

    # -- stop --------------------------------------------------------------------------------
    async def drain(self) -> None:
        """Every worker drains (its listeners closed, sessions told BYE, messages under way
        finished, within `[ops] shutdown_grace`) and exits."""
        self._stopping = True
        self._close_sockets()  # the workers hold their own: closed as each drains
        await self._end_workers(self.settings.ops.shutdown_grace + STOP_MARGIN)

    async def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        self._close_sockets()
        await self._end_workers(STOP_MARGIN)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._metrics_dir is not None:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
            self._metrics_dir = None
        await self.bus.close()

    async def _end_workers(self, within: float) -> None:
        running = [w.process for w in self._workers.values() if w.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        waits = [asyncio.create_task(p.wait()) for p in running]
        if not waits:
            return
        _done, late = await asyncio.wait(waits, timeout=within)
        for process in running:
            if process.returncode is None:
                log.error("workers.killed", extra={"pid": process.pid, "after": within})
                self.failed = True
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        if late:
            await asyncio.wait(late)

    def _close_sockets(self) -> None:
        for group in self._sockets.values():
            for sock in group:
                sock.close()
