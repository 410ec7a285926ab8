"""Logs are structured, carry request and session ids, and never a token."""

from __future__ import annotations

import json
import logging

import pytest

from gateway.runtime.logs import JsonFormatter, bound, configure_logging, scrub
from gateway.settings import LogSettings

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJlLWJ5dGVz"


@pytest.mark.parametrize(
    "text",
    [
        f"token {JWT}",
        f"Authorization: Bearer {JWT}",
        "Authorization: bearer abc.def-ghi",
        "GET /cb?code=SplxlOBeZQQYbYS6WxSbIA&state=x",
        "client_secret=hunter2&x=1",
        "password=hunter2",
    ],
)
def test_scrub_removes_secrets(text: str):
    cleaned = scrub(text)
    for secret in (JWT, "abc.def-ghi", "SplxlOBeZQQYbYS6WxSbIA", "hunter2"):
        assert secret not in cleaned
    assert "[redacted]" in cleaned


def test_json_lines_with_ids(capsys: pytest.CaptureFixture[str]):
    configure_logging(LogSettings(level="INFO", format="json"))
    log = logging.getLogger("lps.test")
    with bound(request="r1", session="s1"):
        log.info("psc.login %s", JWT, extra={"idnat": "899700000001"})
    log.info("outside")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    first = next(e for e in lines if e["event"].startswith("psc.login"))
    assert first["request_id"] == "r1"
    assert first["session_id"] == "s1"
    assert first["idnat"] == "899700000001"
    assert JWT not in json.dumps(first)
    outside = next(e for e in lines if e["event"] == "outside")
    assert "session_id" not in outside


def test_console_format(capsys: pytest.CaptureFixture[str]):
    configure_logging(LogSettings(level="INFO", format="console"))
    logging.getLogger("lps.test").warning("hello", extra={"mailbox": "a@b"})
    err = capsys.readouterr().err
    assert "WARNING" in err
    assert "mailbox=a@b" in err
    assert len(logging.getLogger().handlers) >= 1
    configure_logging(LogSettings())
    ours = [h for h in logging.getLogger().handlers if isinstance(h.formatter, JsonFormatter)]
    assert ours == [], "reconfiguring replaces our handler instead of stacking another"


def test_aiosmtpd_login_data_warning_is_dropped(caplog: pytest.LogCaptureFixture):
    configure_logging(LogSettings())
    with caplog.at_level(logging.WARNING, logger="mail.log"):
        logging.getLogger("mail.log").warning(
            "Session.login_data is deprecated and will be removed in version 2.0"
        )
        logging.getLogger("mail.log").warning("a real warning")
    assert [r.getMessage() for r in caplog.records] == ["a real warning"]


def test_message_contents_stay_out_of_debug_logs():
    """aiosmtpd logs each DATA line at DEBUG: a DEBUG gateway must not log health data."""
    configure_logging(LogSettings(level="DEBUG"))
    try:
        assert logging.getLogger("mail.log").getEffectiveLevel() == logging.INFO
        assert logging.getLogger("gateway").isEnabledFor(logging.DEBUG)
    finally:
        configure_logging(LogSettings())


def test_aiosmtpd_transcript_only_at_debug():
    """aiosmtpd's INFO lines repeat each command (a recipient's address in it): not at INFO."""
    configure_logging(LogSettings(level="INFO"))
    assert not logging.getLogger("mail.log").isEnabledFor(logging.INFO)
    assert logging.getLogger("mail.log").isEnabledFor(logging.WARNING)
    assert logging.getLogger("gateway").isEnabledFor(logging.INFO)


def test_json_lines_stay_one_line_whatever_a_client_sent(capsys: pytest.CaptureFixture[str]):
    """U+2028 and U+2029 are line ends to many log readers: escaped, not raw."""
    configure_logging(LogSettings(format="json"))
    logging.getLogger("lps.test").warning("name", extra={"client": "a\u2028b\u2029c\nd"})
    (line,) = capsys.readouterr().err.splitlines()
    assert json.loads(line)["client"] == "a\u2028b\u2029c\nd"
