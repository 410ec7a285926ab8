"""Running stacks for tests: a whole gateway in front of a running mock operator, as
`lps-gateway demo` wires them (one registry seeded with the default personas; the modern
platform as backend "modern", the historic web services as "historic")."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import imaplib
import shutil
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from delegation.db import create_engine
from delegation.seed import seed
from delegation.service import DelegationService
from gateway.server import Gateway
from gateway.settings import BackendSettings, MockSettings, Settings
from mock_operator.personas import default_personas
from mock_operator.server import MockOperator
from psc_auth import Identity
from tests.conftest import migrated_template, persona_token, quick_mock_settings
from tests.dovecot import DovecotServer, dovecot_backend, gateway_dovecot


@dataclass
class Stack:
    gateway: Gateway
    mock: MockOperator

    @property
    def imap_port(self) -> int:
        assert self.gateway.imap is not None
        return self.gateway.imap.port

    @property
    def smtp_port(self) -> int:
        assert self.gateway.smtp is not None
        return self.gateway.smtp.port

    async def token(self, persona: str = "dr-martin", **extra: Any) -> str:
        return await persona_token(self.mock, persona, **extra)

    async def stop(self) -> None:
        await self.gateway.stop()
        await self.mock.stop()


def mock_backend(mock: MockOperator, **overrides: Any) -> BackendSettings:
    """The mock's modern platform as a backend: master login over STARTTLS, trusting the
    mock's development certificate."""
    assert mock.master is not None
    values: dict[str, Any] = {
        "imap_port": mock.imap_port,
        "smtp_port": mock.smtp_port,
        "imap_tls": "starttls",
        "smtp_tls": "starttls",
        "ca_file": mock.tls_cert,
        "master_user": mock.master.user,
        "master_password": mock.master.password,
        "connect_timeout": 5,
        "reply_timeout": 10,
        "provision_url": f"{mock.http_url}/operator/mailboxes",
        "import_url": f"{mock.http_url}/operator/mailboxes",
    }
    values.update(overrides)
    return BackendSettings(**values)


def gateway_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Gateway settings for tests: free ports, no failure delays."""
    base: dict[str, Any] = {
        "data_dir": data_dir,
        "http": {"port": 0},
        "imap": {"port": 0, "auth_failure_delay": 0},
        "smtp": {"port": 0, "auth_failure_delay": 0},
        "psc": {"client_ids": ["lps-demo"]},  # the client the mock's test tokens are for
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return Settings(**base)


_SEEDED: Path | None = None


async def _seeded_template() -> Path:
    """The migrated template with the default personas seeded, made once per test process:
    seeding writes some fifty rows, each in a transaction of its own."""
    global _SEEDED
    if _SEEDED is None:
        migrated = Path(await migrated_template("sqlite"))
        path = migrated.with_name("seeded.db")
        shutil.copyfile(migrated, path)
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        try:
            await seed(
                DelegationService(engine), [dataclasses.asdict(p) for p in default_personas()]
            )
        finally:
            await engine.dispose()
        _SEEDED = path
    return _SEEDED


async def _preset_registry(settings: Settings) -> bool:
    """A stack on the default SQLite registry starts from the seeded template (True), one
    on another database is migrated and seeded by the gateway as usual (False)."""
    target = settings.data_dir / "gateway.db"
    if settings.database_url is not None or target.exists():
        return False
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copyfile(await _seeded_template(), target)
    return True


async def start_stack(
    settings: Settings,
    mock_settings: MockSettings,
    mock_dir: Path,
    configure: Callable[[Settings, MockOperator], None] | None = None,
) -> Stack:
    preset = await _preset_registry(settings)
    gateway = Gateway(settings)
    registry = await gateway.open_registry()
    if not preset:
        await seed(registry, [dataclasses.asdict(p) for p in default_personas()])
    mock = MockOperator(mock_settings, mock_dir, registry=registry)
    await mock.start()
    settings.psc.issuer = mock.issuer
    client = mock.psc.clients.get(settings.ui.client_id) if mock.psc is not None else None
    if client is not None and not settings.ui.client_secret:
        # as the demo: the gateway is the mock's client (its pages' login, CIBA for the
        # historic OTP dialogue)
        settings.ui.client_secret = client.client_secret
    if configure is not None:
        configure(settings, mock)
    else:
        settings.backends = {"modern": mock_backend(mock)}
        settings.routing.default = "modern"
    try:
        await gateway.start()
    except BaseException:
        await mock.stop()
        await gateway.stop()
        raise
    return Stack(gateway, mock)


@contextlib.asynccontextmanager
async def running_stack(
    settings: Settings,
    mock_settings: MockSettings,
    mock_dir: Path,
    configure: Callable[[Settings, MockOperator], None] | None = None,
) -> AsyncIterator[Stack]:
    """`start_stack`, stopped on leaving."""
    running = await start_stack(settings, mock_settings, mock_dir, configure)
    try:
        yield running
    finally:
        await running.stop()


def historic_backend(mock: MockOperator, **overrides: Any) -> BackendSettings:
    assert mock.master is not None
    values: dict[str, Any] = {
        "kind": "legacy_ws",
        "ws_url": f"{mock.http_url}/mss-msg-services/services",
        "master_user": mock.master.user,
        "master_password": mock.master.password,
        "numhomologation": "LPS-GATEWAY-TEST",
        "poll_interval": 0.2,
        "reply_timeout": 5,
    }
    values.update(overrides)
    return BackendSettings(**values)


def configure_with(**overrides: Any) -> Any:
    def configure(settings: Settings, mock: MockOperator) -> None:
        settings.backends = {
            "modern": mock_backend(mock),
            "historic": historic_backend(mock, **overrides),
        }
        settings.routing.default = "modern"

    return configure


async def identity(stack: Stack, persona: str) -> Identity:
    """Who `persona` is, as the gateway's validator reads a fresh token of theirs."""
    assert stack.gateway.validator is not None
    return await stack.gateway.validator.validate(await stack.token(persona))


def _deliver(dovecot: DovecotServer, user: str, password: str, messages: Sequence[bytes]) -> None:
    with imaplib.IMAP4(dovecot.host, dovecot.port) as client:
        client.login(user, password)
        for message in messages:
            client.append("INBOX", None, None, message)


@contextlib.asynccontextmanager
async def dovecot_stack(
    base: Path,
    user: str,
    password: str,
    messages: Sequence[bytes],
    *,
    keep_warm: float,
    **overrides: Any,
) -> AsyncIterator[tuple[DovecotServer, Stack]]:
    """A private Dovecot holding `user`'s BAL (`messages` in its INBOX), and a gateway in
    front of it as its only backend "dovecot": master login, the gateway among Dovecot's
    trusted networks (its ID names the LPS), warm sessions kept `keep_warm` seconds."""
    dovecot = await gateway_dovecot(user, password, trusted_networks="127.0.0.0/8")
    stack: Stack | None = None
    try:
        await asyncio.to_thread(_deliver, dovecot, user, password, messages)

        def configure(settings: Settings, mock: MockOperator) -> None:
            backend = dovecot_backend(dovecot)
            backend.keep_warm = keep_warm
            settings.backends = {"dovecot": backend}
            settings.routing.default = "dovecot"

        settings = gateway_settings(base / "gateway", **overrides)
        stack = await start_stack(settings, quick_mock_settings(), base / "mock", configure)
        yield dovecot, stack
    finally:
        if stack is not None:
            await stack.stop()
        await asyncio.to_thread(dovecot.stop)
