"""A node stopped by SIGTERM (`lps-gateway demo`, a real process): its listeners close
first and /readyz says 503, logged-in IMAP clients (between commands, or in IDLE) hear
`* BYE [UNAVAILABLE]`, an SMTP message whose DATA was under way when the signal came is
still taken (250, then 421 4.3.2), and the process exits 0."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.imap_raw import Raw
from tests.support.sasl import xoauth2, xoauth2_b64
from tests.support.smtp_raw import RawSmtp
from tests.test_cli import DEMO_PORTS, command, demo_banner, start, wait_for_url

pytestmark = pytest.mark.slow

MARTIN = "claire.martin@medecin.mssante.fr"
DURAND = "luc.durand@infirmier.mssante.fr"
BYE = b"* BYE [UNAVAILABLE] server shutting down"


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


@pytest.fixture
def demo(tmp_path: Path) -> subprocess.Popen[str]:
    env = {**DEMO_PORTS, "LPSGW_OPS__SHUTDOWN_GRACE": "60"}
    return start([command("lps-gateway"), "demo"], tmp_path, env=env)


async def test_sigterm_drains_the_node(demo: subprocess.Popen[str]):
    try:
        mock = wait_for_url(demo)
        banner = demo_banner(demo)
        gateway = re.search(r"lps-gateway listening on (http://127\.0\.0\.1:\d+)", banner)
        imap_port = re.search(r"API LPS IMAP \(STARTTLS\): +127\.0\.0\.1:(\d+)", banner)
        smtp_port = re.search(r"API LPS SMTP \(STARTTLS\): +127\.0\.0\.1:(\d+)", banner)
        assert gateway is not None, banner
        assert imap_port is not None, banner
        assert smtp_port is not None, banner
        imap, smtp = int(imap_port.group(1)), int(smtp_port.group(1))
        async with httpx.AsyncClient(timeout=10) as http:
            answer = await http.post(f"{mock}/_test/token", json={"persona": "dr-martin"})
            token = answer.json()["access_token"]

            quiet, idling = await Raw.open(imap), await Raw.open(imap)
            for client in (quiet, idling):
                await client.ok("AUTHENTICATE XOAUTH2 ", xoauth2(MARTIN, token))
                await client.ok("SELECT INBOX")
            await idling.send(b"I1 IDLE\r\n")
            assert (await idling.line(wait=30)).startswith(b"+")
            sender = await RawSmtp.open(smtp)
            await sender.command(b"EHLO lps.example", b"250")
            await sender.command(b"AUTH XOAUTH2 " + xoauth2_b64(MARTIN, token), b"235")
            await sender.command(f"MAIL FROM:<{MARTIN}>".encode(), b"250")
            await sender.command(f"RCPT TO:<{DURAND}>".encode(), b"250")
            await sender.command(b"DATA", b"354")
            sender.writer.write(f"From: {MARTIN}\r\nTo: {DURAND}\r\n".encode())

            demo.send_signal(signal.SIGTERM)
            assert await quiet.line(wait=30) == BYE
            assert await idling.line(wait=30) == BYE
            assert await refused(imap), "no new IMAP session on a node shutting down"
            assert await refused(smtp), "no new SMTP session either"
            ready = await http.get(f"{gateway.group(1)}/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["shutdown"] == "failed"

            sender.writer.write(b"Subject: in flight\r\nX-MSS-NIL: 0\r\n\r\nBonjour\r\n.\r\n")
            assert (await sender.reply()).startswith(b"250 ")
            assert await sender.reply() == b"421 4.3.2 Service shutting down\r\n"
        assert await asyncio.to_thread(demo.wait, 60) == 0
        assert demo.stderr is not None
        assert "gateway.drained" in demo.stderr.read()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()


async def test_sigterm_without_sessions_exits_at_once(demo: subprocess.Popen[str]):
    """Nothing to drain: the node does not wait for the grace (60 s here)."""
    try:
        wait_for_url(demo)
        demo_banner(demo)
        demo.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(demo.wait, 30) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
