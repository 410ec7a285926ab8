"""A private Dovecot (Debian's dovecot-imapd) for tests: the reference IMAP server.

`start_dovecot()` writes a throw-away configuration under /tmp (not under /root, which
Dovecot's unprivileged processes cannot traverse), runs ``dovecot -c FILE`` on a free
loopback port and returns a `DovecotServer` whose `stop()` kills the master by the pid in
``base_dir/master.pid``. Mail is stored as maildir owned by ``nobody``/``nogroup``.

With `master_user`/`master_password`, a master passdb is placed before the normal one
(``master = yes``, ``result_success = continue``): SASL PLAIN with authzid=<user>,
authcid=<master> and the master's password logs in as <user> (so does LOGIN
``<user>*<master>``). Used both to compare our FETCH output with Dovecot's and as a real
IMAP backend.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from gateway.settings import BackendSettings

DOVECOT = Path("/usr/sbin/dovecot")
DOVEADM = Path("/usr/bin/doveadm")
MAIL_USER = "nobody"
MAIL_GROUP = "nogroup"
TEST_USER = "alice@example.org"
TEST_PASSWORD = "alice-pass"
MASTER = "lps-gateway-master"  # the gateway's master login on test Dovecots
MASTER_PW = "master-dovecot-secret"


def dovecot_available() -> bool:
    """Dovecot is installed and we are root (its master must start as root here)."""
    return DOVECOT.exists() and os.geteuid() == 0


@dataclass
class DovecotServer:
    """A running private Dovecot. `users` maps every normal login to its password."""

    host: str
    port: int
    user: str
    password: str
    base: Path
    master_user: str | None = None
    master_password: str | None = None
    users: dict[str, str] = field(default_factory=dict)
    _stopped: bool = False

    @property
    def log(self) -> str:
        """The server's log so far, for assertion messages."""
        try:
            return (self.base / "dovecot.log").read_text(errors="replace")
        except OSError:
            return ""

    def who(self) -> list[tuple[str, str]]:
        """(user, remote address) of each logged-in connection, as Dovecot's anvil counts
        them for ``mail_max_userip_connections`` (``doveadm who -1``)."""
        listed = subprocess.run(
            [str(DOVEADM), "-c", str(self.base / "dovecot.conf"), "who", "-1"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.splitlines()[1:]
        return [(fields[0], fields[3]) for fields in (line.split() for line in listed)]

    @property
    def master_pid(self) -> int:
        """The daemonised master's pid (its pid file); OSError/ValueError when unreadable."""
        return int((self.base / "run" / "master.pid").read_text().split()[0])

    def stop(self) -> None:
        """Kill the master (by its pid file), wait for it, remove the temp dir."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(OSError, ValueError):
            pid = self.master_pid
            # only our own master: a stale pid file must not kill a recycled pid
            if str(self.base).encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
                raise ProcessLookupError(pid)
            os.kill(pid, signal.SIGTERM)
            # the daemonised master's parent is init, which may reap it seconds after it
            # exited: a zombie has let go of its port and files, so it counts as gone
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if not alive(pid):
                    break
                time.sleep(0.02)
            else:
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.base, ignore_errors=True)

    def kill(self, timeout: float = 5.0) -> None:
        """Die at once, as a crashed server does: SIGKILL the master and every process it
        started (imap, imap-login, auth...), so clients' connections just close (no
        ``* BYE``, unlike `stop`, whose imap processes take seconds to say goodbye); then
        clean up like `stop`."""
        if self._stopped:
            return
        with contextlib.suppress(OSError, ValueError):
            pid = self.master_pid
            if str(self.base).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                victims = [pid, *descendants(pid)]
                for victim in victims:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(victim, signal.SIGKILL)
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and any(alive(v) for v in victims):
                    time.sleep(0.02)
        self.stop()


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a daemon's children are reaped by init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (children first found, then theirs)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    queue = list(children.get(pid, []))
    while queue:
        child = queue.pop()
        found.append(child)
        queue.extend(children.get(child, []))
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


SPECIAL_USE_NAMESPACE = """
namespace inbox {
  inbox = yes
  mailbox Sent {
    special_use = \\Sent
  }
  mailbox Drafts {
    special_use = \\Drafts
  }
  mailbox Trash {
    special_use = \\Trash
  }
}
"""


def _config(
    base: Path,
    port: int,
    uid: int,
    gid: int,
    with_master: bool,
    special_use: bool = False,
    trusted_networks: str = "",
    extra_config: str = "",
) -> str:
    master_passdb = (
        f"""
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {base}/master-users
  master = yes
  result_success = continue
}}
"""
        if with_master
        else ""
    )
    return f"""# generated by tests/dovecot.py
protocols = imap
listen = 127.0.0.1
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
info_log_path = {base}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_master_user_separator = *
mail_location = maildir:{base}/mail/%u
mail_uid = {uid}
mail_gid = {gid}
first_valid_uid = 1
first_valid_gid = 1
mail_fsync = never
login_trusted_networks = {trusted_networks}
{SPECIAL_USE_NAMESPACE if special_use else ""}{master_passdb}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {base}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {base}/users
  default_fields = uid={uid} gid={gid} home={base}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service imap {{
  process_limit = 64
}}
{extra_config}"""


def _wait_ready(port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.settimeout(2)
                if sock.recv(200).startswith(b"* OK"):
                    return True
        except OSError:
            time.sleep(0.05)
    return False


def start_dovecot(
    *,
    user: str = TEST_USER,
    password: str = TEST_PASSWORD,
    extra_users: Mapping[str, str] | None = None,
    master_user: str | None = None,
    master_password: str | None = None,
    timeout: float = 15.0,
    special_use: bool = False,
    trusted_networks: str = "",
    extra_config: str = "",
) -> DovecotServer:
    """Start a private Dovecot; raise RuntimeError (with its log) when it does not come up.
    With `special_use`, folders named Sent, Drafts and Trash (not created) are listed with
    those special uses (RFC 6154), as a provisioned Dovecot's are. `trusted_networks`:
    ``login_trusted_networks``, the proxies whose ID x-originating-ip Dovecot believes.
    `extra_config` is appended to the configuration: a later setting, or a section of the
    same name, overrides the one above (the benchmarks' process and connection limits)."""
    if not dovecot_available():
        raise RuntimeError(f"{DOVECOT} missing or not running as root")
    uid = pwd.getpwnam(MAIL_USER).pw_uid
    gid = grp.getgrnam(MAIL_GROUP).gr_gid
    base = Path(tempfile.mkdtemp(prefix="lps-dovecot-", dir="/tmp"))
    base.chmod(0o755)
    users = {user: password, **(extra_users or {})}
    for sub in ("run", "state", "mail", "home"):
        (base / sub).mkdir(mode=0o755)
    for sub in ("mail", "home"):
        os.chown(base / sub, uid, gid)
    (base / "users").write_text(
        "".join(f"{name}:{{PLAIN}}{pw}::::::\n" for name, pw in users.items())
    )
    with_master = master_user is not None
    if with_master:
        if master_password is None:
            raise ValueError("master_user needs master_password")
        (base / "master-users").write_text(f"{master_user}:{{PLAIN}}{master_password}::::::\n")
    for name in ("users", "master-users"):
        with contextlib.suppress(FileNotFoundError):
            (base / name).chmod(0o644)
    port = _free_port()
    conf = base / "dovecot.conf"
    conf.write_text(
        _config(base, port, uid, gid, with_master, special_use, trusted_networks, extra_config)
    )
    server = DovecotServer(
        host="127.0.0.1",
        port=port,
        user=user,
        password=password,
        base=base,
        master_user=master_user,
        master_password=master_password,
        users=users,
    )
    # The master daemonises and its children inherit stdio: send it to a file, never a pipe.
    with (base / "startup.log").open("wb") as out:
        returncode = subprocess.call(
            [str(DOVECOT), "-c", str(conf)], stdout=out, stderr=out, timeout=timeout
        )
    if returncode != 0 or not _wait_ready(port, time.monotonic() + timeout):
        startup = (base / "startup.log").read_text(errors="replace")
        log = server.log
        server.stop()
        raise RuntimeError(f"dovecot did not start (rc={returncode}): {startup}\n{log}")
    atexit.register(server.stop)  # a daemon must not outlive the test run
    return server


async def gateway_dovecot(user: str, password: str, **options: Any) -> DovecotServer:
    """`start_dovecot` (off the event loop) with the gateway's `MASTER` login, for a test
    that puts it behind the gateway; skips, or fails under LPS_REQUIRE_PEERS=1, without
    Dovecot."""
    from tests.conftest import require_peer

    require_peer(dovecot_available(), "Dovecot (dovecot-imapd) not installed or not root")
    return await asyncio.to_thread(
        start_dovecot,
        user=user,
        password=password,
        master_user=MASTER,
        master_password=MASTER_PW,
        **options,
    )


@contextlib.contextmanager
def running_dovecot(
    *,
    user: str = TEST_USER,
    password: str = TEST_PASSWORD,
    extra_users: Mapping[str, str] | None = None,
    master_user: str | None = None,
    master_password: str | None = None,
) -> Iterator[DovecotServer]:
    """`start_dovecot` as a context manager: always stopped on exit."""
    server = start_dovecot(
        user=user,
        password=password,
        extra_users=extra_users,
        master_user=master_user,
        master_password=master_password,
    )
    try:
        yield server
    finally:
        server.stop()


def dovecot_backend(server: DovecotServer) -> BackendSettings:
    """The gateway's backend settings for a test Dovecot started with the `MASTER` login
    (plain IMAP on loopback; no SMTP)."""
    return BackendSettings(
        imap_host=server.host,
        imap_port=server.port,
        imap_tls="none",
        smtp_tls="none",
        login="master",
        master_user=MASTER,
        master_password=SecretStr(MASTER_PW),
        connect_timeout=5,
        reply_timeout=10,
    )
