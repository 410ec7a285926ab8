"""`lps-gateway check-config`: a configuration checked without starting a gateway.

What a node would trip over at start or at its first login, each said as `section.key:
problem`: keys unknown or of the wrong type (the settings model forbids both), secret and
certificate files it cannot read or use, a cipher string OpenSSL refuses, settings that
contradict each other, and the peers it cannot reach: every backend's listeners (connect
and greeting, no login, as `/readyz` probes them) and the database (`SELECT 1`).
Nothing is written: an SQLite database not created yet is only checked for a directory
it can be created in.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import ssl
import tomllib
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from sqlalchemy import make_url

from delegation.db import create_engine, shown
from delegation.service import DelegationService
from gateway.backends.kinds import backends_from_settings
from gateway.backends.probes import OK, clip
from gateway.health import database_check
from gateway.settings import Settings, load_settings
from psc_auth.certificates import CardError, CardVerifier

TIMEOUT = 3.0  # seconds per peer; all are probed at once


@dataclass(frozen=True)
class Problem:
    key: str  # where to look: "backends.modern.imap", "tls.key"
    text: str

    def __str__(self) -> str:
        return f"{self.key}: {self.text}"


def loaded(config: Path | None) -> tuple[Settings | None, list[Problem]]:
    """The settings, or every key the model refuses (the value itself is never repeated:
    it may be a secret)."""
    try:
        return load_settings(config), []
    except FileNotFoundError as exc:
        return None, [Problem("config", str(exc))]
    except tomllib.TOMLDecodeError as exc:
        return None, [Problem("config", f"not valid TOML: {exc}")]
    except OSError as exc:
        return None, [Problem("config", f"cannot read {config}: {exc.strerror or exc}")]
    except ValidationError as invalid:
        return None, [
            Problem(".".join(str(part) for part in error["loc"]) or "config", _said(error))
            for error in invalid.errors(include_input=False)
        ]


def _said(error: ErrorDetails) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    return error["msg"].removeprefix("Value error, ")


def _readable(key: str, path: Path) -> tuple[bytes | None, list[Problem]]:
    try:
        return path.read_bytes(), []
    except OSError as exc:
        return None, [Problem(key, f"cannot read {path}: {exc.strerror or exc}")]


def _creatable(directory: Path) -> str | None:
    """None when `directory` is, or can be made, writable by this user; else why not."""
    existing = next(p for p in [directory, *directory.parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not a writable directory"
    return None


def file_problems(settings: Settings) -> list[Problem]:
    """The data directory, secret and certificate files: readable, and usable for what
    they are for."""
    problems: list[Problem] = []
    if (unwritable := _creatable(settings.data_dir.absolute())) is not None:
        problems.append(Problem("data_dir", unwritable))
    tls = settings.tls
    if (tls.cert is None) != (tls.key is None):
        problems.append(Problem("tls.key" if tls.key is None else "tls.cert", "set both or none"))
    elif tls.cert is not None and tls.key is not None:
        found = [*_readable("tls.cert", tls.cert)[1], *_readable("tls.key", tls.key)[1]]
        problems += found
        if not found:
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                    tls.cert, tls.key
                )
            except (ssl.SSLError, ValueError) as exc:
                problems.append(Problem("tls.cert", clip(f"not a certificate and its key: {exc}")))
    for name, backend in settings.backends.items():
        where = f"backends.{name}"
        if backend.master_password_file is not None:
            secret, found = _readable(f"{where}.master_password_file", backend.master_password_file)
            problems += found
            if secret is not None and not secret.strip():
                problems.append(Problem(f"{where}.master_password_file", "empty"))
        if backend.ca_file is not None:
            try:
                ssl.create_default_context(cafile=str(backend.ca_file))
            except (OSError, ssl.SSLError) as exc:
                problems.append(Problem(f"{where}.ca_file", clip(f"unusable: {exc}")))
    problems += _card_problems(settings)
    return problems


def _card_problems(settings: Settings) -> list[Problem]:
    cards = settings.cards
    if cards.ca_file is None:
        if settings.legacy_front.https_port is not None:
            return [Problem("legacy_front.https_port", "needs [cards] ca_file")]
        return []
    data, problems = _readable("cards.ca_file", cards.ca_file)
    if data is None:
        return problems
    try:
        verifier = CardVerifier(x509.load_pem_x509_certificates(data), None)
    except ValueError as exc:
        return [Problem("cards.ca_file", clip(f"not PEM certificates: {exc}"))]
    if cards.crl_file is None:
        return []
    verifier = CardVerifier(verifier.authorities, cards.crl_file)
    assert verifier.revocations is not None
    now = dt.datetime.now(dt.UTC)
    for authority in verifier.authorities:
        try:
            verifier.revocations.revoked(authority.subject, now)
        except CardError as exc:
            name = authority.subject.rfc4514_string()
            return [Problem("cards.crl_file", clip(f"{exc} (CA {name})"))]
    return []


def consistency_problems(settings: Settings) -> list[Problem]:
    """What `serve` refuses at start, and routes to backends nobody configured."""
    problems: list[Problem] = []
    psc = settings.psc
    if not psc.client_ids and not psc.accept_any_audience:
        problems.append(Problem("psc.client_ids", "empty: list the LPS client ids accepted"))
    if psc.jwks_max_age_problem:
        problems.append(Problem("psc.jwks_max_age_seconds", psc.jwks_max_age_problem))
    names = set(settings.backends)
    routing = settings.routing
    routes = {"routing.default": routing.default} if routing.default else {}
    routes |= {f"routing.domains.{d}": b for d, b in routing.domains.items()}
    routes |= {f"routing.mailboxes.{m}": b for m, b in routing.mailboxes.items()}
    for key, backend in routes.items():
        if backend not in names:
            problems.append(Problem(key, f"no backend named {backend!r} in [backends]"))
    return problems


async def reachability_problems(settings: Settings, within: float = TIMEOUT) -> list[Problem]:
    """Every backend listener and the database, probed at once, each within `within`."""
    probes: dict[str, Awaitable[str]] = {"database_url": _database(settings, within)}
    for name, backend in backends_from_settings(settings.backends).items():
        for check, probe in backend.probes().items():
            probes[f"backends.{name}.{check}"] = probe
    results = await asyncio.gather(*probes.values(), return_exceptions=True)
    problems = []
    for key, result in zip(probes, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result
            problems.append(Problem(key, clip(f"check failed: {type(result).__name__}")))
        elif result != OK:
            problems.append(Problem(key, result))
    return problems


def _not_created_yet(url: str) -> str | None:
    """For an SQLite file a first start will create (not made here): whether it can be."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    path = Path(parsed.database)
    return None if path.exists() else (_creatable(path.parent) or OK)


async def _database(settings: Settings, within: float) -> str:
    url = settings.database()
    if (verdict := _not_created_yet(url)) is not None:
        return verdict
    parsed = make_url(url)
    engine = create_engine(url)
    try:
        return await database_check(
            DelegationService(engine), secret=parsed.password, within=within
        )
    finally:
        await engine.dispose()


def summary(settings: Settings) -> str:
    backends = ", ".join(f"{n} ({b.kind})" for n, b in settings.backends.items()) or "none"
    return f"configuration OK: database {shown(settings.database())}; backends {backends}"


async def check(config: Path | None, within: float = TIMEOUT) -> tuple[list[Problem], str]:
    """Every problem found (none: the configuration is fit to start), and a summary."""
    settings, problems = loaded(config)
    if settings is None:
        return problems, ""
    problems = file_problems(settings) + consistency_problems(settings)
    problems += await reachability_problems(settings, within)
    return problems, summary(settings)
