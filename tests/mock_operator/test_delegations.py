"""The mock operator honours delegations on IMAP and SMTP, and audits every access."""

from __future__ import annotations

import imaplib
import re
import smtplib
import time

from mock_operator.server import MockOperator
from psc_auth import Identity
from tests.conftest import persona_token
from tests.mock_operator.test_platform import in_thread
from tests.support.sasl import xoauth2_blob

MARTIN = "claire.martin@medecin.mssante.fr"
MOREAU = "eve.moreau@medecin.mssante.fr"


def identity(idnat: str, given: str, family: str) -> Identity:
    claims = {
        "SubjectNameID": idnat,
        "given_name": given,
        "family_name": family,
        "exp": int(time.time()) + 600,
    }
    return Identity.from_claims(claims, token_id="test")


async def test_secretary_opens_the_delegated_bal_with_her_own_token(mock_op: MockOperator):
    bearer = await persona_token(mock_op, "sec-bernard")

    def session() -> tuple[str, str]:
        client = imaplib.IMAP4("127.0.0.1", mock_op.imap_port, timeout=10)
        client.login(MARTIN, bearer)
        client.select("INBOX")
        typ, _ = client.store("1", "+FLAGS", "(\\Flagged)")
        client.logout()
        return "OK", typ

    assert await in_thread(session) == ("OK", "OK")
    assert mock_op.delegations is not None
    audit = await mock_op.delegations.audit_for(MARTIN)
    assert any(e.actor_idnat == "899700000003" and e.result == "ok" for e in audit)
    assert any(e.interface == "imap" and e.delegation_id is not None for e in audit)


async def test_read_only_delegate_gets_noperm(mock_op: MockOperator):
    assert mock_op.delegations is not None
    holder = identity("899700000007", "Eve", "MOREAU")
    await mock_op.delegations.grant(holder, MOREAU, "899700000003", ["read"])
    bearer = await persona_token(mock_op, "sec-bernard")

    def session() -> dict[str, str]:
        client = imaplib.IMAP4("127.0.0.1", mock_op.imap_port, timeout=10)
        client.login(MOREAU, bearer)
        # The server says READ-ONLY (\\Seen aside, she may change nothing) and imaplib then
        # refuses to go on in read-write mode; this test goes on to probe each change.
        try:
            client.select("INBOX")
            raise AssertionError("SELECT did not say READ-ONLY")
        except imaplib.IMAP4.readonly:
            client.untagged_responses.pop("READ-ONLY")
        out: dict[str, str] = {}

        def attempt(name: str, *args: object) -> None:
            try:
                method = getattr(client, name)
                typ, data = method(*args)
                out[name] = f"{typ} {data}"
            except imaplib.IMAP4.error as exc:
                out[name] = str(exc)

        attempt("store", "1", "+FLAGS", "(\\Seen)")
        out["seen"] = out.pop("store")
        attempt("store", "1", "+FLAGS", "(\\Flagged)")
        attempt("append", "INBOX", None, None, b"Subject: x\r\n\r\ny\r\n")
        attempt("expunge")
        attempt("copy", "1", "Corbeille")
        attempt("uid", "MOVE", "1", "Corbeille")
        out["move"] = out.pop("uid")
        attempt("create", "Nouveau")
        attempt("delete", "Corbeille")
        attempt("rename", "Corbeille", "Poubelle")
        client.logout()
        return out

    out = await in_thread(session)
    assert out["seen"].startswith("OK")
    for name in ("store", "append", "expunge", "copy", "move", "create", "delete", "rename"):
        assert "NOPERM" in out[name], (name, out[name])

    def send() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", mock_op.smtp_port, timeout=10) as smtp:
            smtp.ehlo("lps.test")
            smtp.auth("XOAUTH2", lambda: xoauth2_blob(MOREAU, bearer).decode())
            try:
                smtp.sendmail(MOREAU, [MARTIN], b"Subject: x\r\n\r\ny\r\n")
            except smtplib.SMTPSenderRefused as exc:
                return exc.smtp_code, exc.smtp_error
        return 250, b""

    code, text = await in_thread(send)
    assert code == 550
    assert b"5.7.1" in text


async def test_no_delegation_no_access_and_revocation(mock_op: MockOperator):
    assert mock_op.delegations is not None
    holder = identity("899700000007", "Eve", "MOREAU")
    delegation = await mock_op.delegations.grant(holder, MOREAU, "899700000004", ["read"])
    bearer = await persona_token(mock_op, "ide-durand")

    def login(bal: str) -> str:
        client = imaplib.IMAP4("127.0.0.1", mock_op.imap_port, timeout=10)
        try:
            client.login(bal, bearer)
            return "OK"
        except imaplib.IMAP4.error as exc:
            return str(exc)
        finally:
            client.shutdown()

    assert "AUTHORIZATIONFAILED" in await in_thread(login, MARTIN)
    assert await in_thread(login, MOREAU) == "OK"
    await mock_op.delegations.revoke(holder, MOREAU, delegation.id)
    assert "AUTHORIZATIONFAILED" in await in_thread(login, MOREAU)
    audit = await mock_op.delegations.audit_for(MOREAU)
    refusals = [e for e in audit if e.actor_idnat == "899700000004" and e.action == "login"]
    assert any(re.match(r"refused:", e.result) for e in refusals)
