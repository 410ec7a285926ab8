"""JSON logs of a real session through the gateway: every line after login names the session,
the person and the BAL, no line holds the token; `[log] audit_to_log` copies each audit event
to the `lps_gateway.audit` logger, one line with every field."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.runtime.logs import AUDIT_LOGGER, configure_logging, log_audit_event
from gateway.server import Gateway
from gateway.settings import Settings
from tests.gateway.test_smtp_front import message, smtplib_session
from tests.imap_raw import Raw
from tests.support.sasl import xoauth2
from tests.support.stacks import Stack, gateway_settings, identity
from tests.support.waiting import until

MARTIN = "claire.martin@medecin.mssante.fr"
BERNARD = "899700000003"  # sec-bernard, delegated on Dr MARTIN's BAL
DURAND = "luc.durand@infirmier.mssante.fr"


@pytest.fixture
def stack_settings(tmp_path: Path) -> Settings:
    return gateway_settings(
        tmp_path / "gateway", log={"format": "json", "level": "DEBUG", "audit_to_log": True}
    )


def _lines(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def _no_token_in(logged: list[dict[str, Any]], bal: str, token: str) -> None:
    """Neither the token nor the SASL response carrying it (base64) in any line."""
    for secret in (token, xoauth2(bal, token), token[-40:]):
        assert not [e for e in logged if secret in json.dumps(e)], "a log line holds the token"


async def test_every_line_of_a_session_names_it_and_none_holds_the_token(
    capsys: pytest.CaptureFixture[str], stack_settings: Settings, stack: Stack
):
    """The session is ended by a revocation: the line saying so is written by the task
    that watches delegations, and must name the session all the same."""
    configure_logging(stack_settings.log)
    registry = stack.gateway.delegations
    assert registry is not None
    client = await Raw.open(stack.imap_port)
    await client.ok('ID ("name" "LPS Cabinet" "version" "1.0")')
    token = await stack.token("sec-bernard")
    await client.ok("AUTHENTICATE XOAUTH2 ", xoauth2(MARTIN, token))
    await client.ok("SELECT INBOX")
    await client.ok("UID FETCH 1 (FLAGS BODY.PEEK[HEADER])")
    holder = await identity(stack, "dr-martin")
    (delegation,) = [
        d for d in await registry.delegations_of(holder, MARTIN) if d.delegate_idnat == BERNARD
    ]
    await registry.revoke(holder, MARTIN, delegation.id)
    assert (await client.line(wait=30.0)).startswith(b"* BYE")
    assert await client.until_closed() == b""
    assert stack.gateway.audit is not None
    await stack.gateway.audit.flush()
    logged: list[dict[str, Any]] = []

    def seen(event: str) -> bool:
        logged.extend(_lines(capsys.readouterr().err))
        return any(e["event"] == event and e.get("person") == BERNARD for e in logged)

    await until(lambda: seen("imap.session_closed"), "the session's last line")
    _no_token_in(logged, MARTIN, token)
    login_line = next(e for e in logged if e["event"] == "imap.login" and e["actor"] == BERNARD)
    session = login_line["session_id"]
    after = logged[logged.index(login_line) :]
    of_session = [e for e in after if e.get("session_id") == session]
    assert {"imap.login", "imap.session_kicked", "imap.session_closed"} <= {
        e["event"] for e in of_session
    }
    for line in of_session:
        assert line["person"] == BERNARD, line
        assert line["bal"] == MARTIN, line
    before = [e for e in logged[: logged.index(login_line)] if e.get("session_id") == session]
    assert before, "the session's lines before login carry its id"
    assert all("person" not in e for e in before), "no person named before the login said who"

    select = next(e for e in logged if e["logger"] == AUDIT_LOGGER and e.get("action") == "select")
    assert select["event"] == "audit"
    assert select["level"] == "info"
    assert select["actor_idnat"] == BERNARD
    assert select["mailbox"] == MARTIN
    assert select["interface"] == "imap"
    assert select["result"] == "ok"
    assert select["detail"] == "INBOX"
    assert select["software"] == "LPS Cabinet 1.0"
    assert select["delegation_id"] is not None
    assert int(select["audit_id"]) > 0
    assert select["audit_at"].endswith("+00:00")
    assert {"remote"} <= select.keys()
    written = await registry.audit_for(MARTIN)
    ids = {str(e.id) for e in written}
    audit_lines = [e for e in logged if e["logger"] == AUDIT_LOGGER]
    assert {e["audit_id"] for e in audit_lines} <= ids, "every logged event was written"
    assert {"login", "select", "revoke", "session-end"} <= {e["action"] for e in audit_lines}


async def test_every_line_of_an_smtp_session_after_auth_names_it(
    capsys: pytest.CaptureFixture[str], stack_settings: Settings, stack: Stack
):
    """At DEBUG, where aiosmtpd's transcript of each command is logged too."""
    configure_logging(stack_settings.log.model_copy(update={"level": "DEBUG"}))
    token = await stack.token("sec-bernard")

    def submit() -> None:
        with smtplib_session(stack.smtp_port, MARTIN, token) as smtp:
            smtp.sendmail(MARTIN, [DURAND], message(MARTIN, DURAND, "Compte rendu"))

    await asyncio.to_thread(submit)
    logged: list[dict[str, Any]] = []

    def seen() -> bool:
        logged.extend(_lines(capsys.readouterr().err))
        return any(e.get("person") == BERNARD and e["logger"] == "mail.log" for e in logged)

    await until(seen, "the SMTP session's lines after AUTH")
    _no_token_in(logged, MARTIN, token)
    sessions = {e["session_id"] for e in logged if e.get("person") == BERNARD}
    assert len(sessions) == 1, "one SMTP session"
    (session,) = sessions
    of_session = [e for e in logged if e.get("session_id") == session]
    first = next(i for i, e in enumerate(of_session) if "person" in e)
    assert of_session[:first], "lines before AUTH carry the session id alone"
    assert all("person" not in e for e in of_session[:first])
    for line in of_session[first:]:
        assert line["person"] == BERNARD, line
        assert line["bal"] == MARTIN, line
    assert "smtp.message_relayed" in {e["event"] for e in of_session[first:]}


async def test_audit_events_reach_the_log_only_when_asked(tmp_path: Path):
    quiet = Gateway(gateway_settings(tmp_path / "quiet"))
    told = Gateway(gateway_settings(tmp_path / "told", log={"audit_to_log": True}))
    try:
        assert (await quiet.open_registry()).audit_listener is None
        assert (await told.open_registry()).audit_listener is log_audit_event
    finally:
        await quiet.stop()
        await told.stop()
