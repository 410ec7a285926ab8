"""One worker of a node (`python -P -m gateway.workers.worker`, started by the
supervisor): a whole gateway on the sockets the supervisor bound, its settings read from
stdin. It stops on SIGTERM or SIGINT as a single-process node does (drain, then stop),
and also when the supervisor is gone (its channel closed): no worker outlives its node.
It ignores SIGHUP (a closed terminal's, sent to the whole group): the supervisor drains."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import pickle
import signal
import socket
import sys
from typing import Any

from gateway.runtime.lifecycle import run_command, run_until_signalled
from gateway.runtime.logs import configure_logging
from gateway.settings import Settings
from gateway.workers.channel import Channel, Message, RelayBus
from gateway.workers.gate import NodeGate
from gateway.workers.throttle import NodeThrottle

log = logging.getLogger(__name__)


class _WorkerField(logging.Filter):
    """Every line of a worker names it (`worker=1`), beside the fields of the event."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def main() -> None:
    # a closed terminal's SIGHUP reaches the whole group: the supervisor drains the node
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    spec: dict[str, Any] = pickle.load(sys.stdin.buffer)  # noqa: S301 (from our supervisor)
    settings = Settings.model_validate(spec["settings"])
    configure_logging(settings.log)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerField(spec["index"]))
    from gateway.server import ConfigurationError

    try:
        run_command("lps-gateway", _serve(spec, settings))
    except ConfigurationError as exc:
        print(f"lps-gateway: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


async def _serve(spec: dict[str, Any], settings: Settings) -> None:
    from delegation.db import is_postgresql
    from gateway.server import Gateway, WorkerRole

    channel = await Channel.open(socket.socket(fileno=spec["channel"]))
    sockets = {setting: socket.socket(fileno=fd) for setting, fd in spec["sockets"].items()}
    bus = None if is_postgresql(settings.database()) else RelayBus(channel.send)
    role = WorkerRole(spec["index"], spec["count"])
    migration = settings.migration
    gate = NodeGate(
        channel.send,
        role.index,
        role.count,
        max_wait=migration.hold_max,
        drain_wait=migration.drain_max,
    )
    gateway = Gateway(settings, sockets=sockets, bus=bus, worker=role, gate=gate)
    limits = settings.limits
    throttle = NodeThrottle(channel.send, limits.max_failed_logins, limits.failed_login_window)
    gateway.limits = dataclasses.replace(gateway.limits, logins=throttle)  # before start

    async def listen() -> None:
        while (message := await channel.receive()) is not None:
            dispatch(message, bus, throttle, gate)
        log.warning("workers.supervisor_gone")
        os.kill(os.getpid(), signal.SIGTERM)  # stop as on a signal: drain, then stop

    listening = asyncio.create_task(listen())

    def ready() -> None:
        channel.send({"t": "ready", "pid": os.getpid()})

    try:
        await run_until_signalled([gateway], ready, hangup=False)
    finally:
        listening.cancel()
        await gate.aclose()
        await channel.close()


def dispatch(
    message: Message, bus: RelayBus | None, throttle: NodeThrottle, gate: NodeGate
) -> None:
    """What the supervisor passed on, to what it concerns (`bus`: None on PostgreSQL)."""
    if message.get("t") == "event":
        if bus is not None:
            bus.received(message.get("event"))
    elif message.get("t") == "failed":
        throttle.received(message)
    else:
        if message.get("t") == "gone" and bus is not None:  # its events may be lost
            bus.gap()
        gate.received(message)


if __name__ == "__main__":
    main()
