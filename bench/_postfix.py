"""Benchmark helper: a private Postfix (Debian's package) as the submission server behind
the gateway, beside a private Dovecot.

`ensure_postfix()` installs ``postfix`` from Debian when it is missing (root and apt-get
needed; a policy-rc.d refuses the package's attempt to start the system-wide instance,
as ``.ci/run`` does for Dovecot). `start_postfix()` runs an instance of its own in a
temporary directory: its own ``config_directory`` and ``queue_directory``, one smtpd on a
free loopback port, no chroot, every message discarded once queued
(``default_transport = discard``: the queue, cleanup and qmgr work is done, delivery is
not), SASL through Dovecot's auth service over TCP (``smtpd_sasl_type = dovecot``), so
that both the gateway (master login, authzid = the BAL) and a direct client (the BAL's
password) authenticate as they would on a platform.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

POSTFIX = Path("/usr/sbin/postfix")
POSTCONF = Path("/usr/sbin/postconf")
POLICY_RC = Path("/usr/sbin/policy-rc.d")


def ensure_postfix() -> str | None:
    """Postfix installed (installing it if needed); None when it is, else why not."""
    if POSTFIX.exists():
        return None
    apt = shutil.which("apt-get")
    if os.geteuid() != 0 or apt is None:
        return "postfix not installed (installing needs root and apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    placed = not POLICY_RC.exists()
    if placed:  # the package must not start (or enable) a system-wide Postfix
        POLICY_RC.write_text("#!/bin/sh\nexit 101\n")
        POLICY_RC.chmod(0o755)
    try:
        subprocess.run([apt, "update", "-qq"], env=env, check=False, timeout=300)
        done = subprocess.run(
            [apt, "install", "-y", "-qq", "--no-install-recommends", "postfix"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        if placed:
            POLICY_RC.unlink(missing_ok=True)
    if done.returncode != 0 or not POSTFIX.exists():
        return f"apt-get install postfix failed: {done.stderr.strip()[-300:]}"
    return None


@dataclass
class PostfixServer:
    host: str
    port: int
    base: Path

    @property
    def master_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.base / "queue" / "pid" / "master.pid").read_text().split()[0])
        return None

    def log(self) -> str:
        try:
            return (self.base / "maillog").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        pid = self.master_pid
        subprocess.run(
            [str(POSTFIX), "-c", str(self.base / "etc"), "stop"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if pid is not None:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                stat = Path(f"/proc/{pid}/stat").read_text(errors="replace")
                if stat.rpartition(")")[2].split()[0] == "Z":
                    break
                time.sleep(0.05)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.base, ignore_errors=True)


def start_postfix(auth_port: int, timeout: float = 30.0) -> PostfixServer:
    """A private Postfix on a free loopback port, SASL by Dovecot's auth service listening
    on ``127.0.0.1:auth_port``; RuntimeError (with its log) when it does not come up."""
    from _stack import free_port

    base = Path(tempfile.mkdtemp(prefix="lps-postfix-", dir="/tmp"))
    base.chmod(0o755)
    etc, queue, data = base / "etc", base / "queue", base / "data"
    for directory in (etc, queue, data):
        directory.mkdir()
    shutil.chown(data, "postfix", "postfix")
    port = free_port()
    (etc / "master.cf").write_text(
        Path("/etc/postfix/master.cf")
        .read_text()
        .replace("smtp      inet", f"127.0.0.1:{port} inet", 1)
    )
    (etc / "main.cf").write_text("")
    settings = {
        "compatibility_level": "3.6",
        "config_directory": str(etc),
        "queue_directory": str(queue),
        "data_directory": str(data),
        "maillog_file": str(base / "maillog"),
        "maillog_file_prefixes": str(base),
        "myhostname": "submission.bench.invalid",
        "mydomain": "bench.invalid",
        "mydestination": "",
        "relay_domains": "",
        "local_recipient_maps": "",
        "alias_maps": "",
        "alias_database": "",
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.0.0/8",
        "default_transport": "discard:bench",
        "relay_transport": "discard:bench",
        "smtpd_tls_security_level": "none",
        "smtp_tls_security_level": "none",
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_sasl_type": "dovecot",
        "smtpd_sasl_path": f"inet:127.0.0.1:{auth_port}",
        "smtpd_relay_restrictions": "permit_sasl_authenticated, reject",
        "smtpd_recipient_restrictions": "permit_sasl_authenticated, reject",
        "smtpd_client_connection_count_limit": "0",
        "smtpd_client_connection_rate_limit": "0",
        "message_size_limit": str(64 << 20),
        "biff": "no",
        "append_dot_mydomain": "no",
        "readme_directory": "no",
    }
    postconf = [str(POSTCONF), "-c", str(etc)]
    subprocess.run([*postconf, "-e", *(f"{k}={v}" for k, v in settings.items())], check=True)
    subprocess.run([*postconf, "-F", "-e", "*/*/chroot=n"], check=True)
    # No pickup nor local delivery: nothing arrives by the maildrop, nothing stays.
    subprocess.run([*postconf, "-M#", "pickup/unix"], check=False, capture_output=True)
    server = PostfixServer("127.0.0.1", port, base)
    started = subprocess.run(
        [str(POSTFIX), "-c", str(etc), "start"], capture_output=True, text=True, timeout=timeout
    )
    if started.returncode != 0 or not _ready(port, time.monotonic() + timeout):
        log = server.log()
        server.stop()
        raise RuntimeError(f"postfix did not start: {started.stderr.strip()}\n{log[-2000:]}")
    return server


def _ready(port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=2) as sock,
        ):
            if sock.recv(200).startswith(b"220"):
                return True
        time.sleep(0.1)
    return False
