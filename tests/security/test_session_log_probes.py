"""Hostile clients against the JSON logs' session fields: what a client says (SASL user,
ID fields) never becomes the `person` or `bal` of a line, a token sent where a BAL goes
is in no line, and every line stays one JSON object however the client's bytes look."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.runtime.logs import configure_logging
from gateway.settings import Settings
from tests.imap_raw import Raw
from tests.support.sasl import xoauth2
from tests.support.stacks import Stack, gateway_settings
from tests.support.waiting import until

EVE = "eve.moreau@medecin.mssante.fr"  # not sec-bernard's
CLAIRE = "claire.martin@medecin.mssante.fr"
FORGED = f'\u2028{{"person": "899700000001", "bal": "{CLAIRE}"}}'


@pytest.fixture
def stack_settings(tmp_path: Path) -> Settings:
    return gateway_settings(tmp_path / "gateway", log={"format": "json", "level": "DEBUG"})


async def test_what_a_client_says_is_never_who_a_line_names(
    capsys: pytest.CaptureFixture[str], stack_settings: Settings, stack: Stack
):
    configure_logging(stack_settings.log)
    token = await stack.token("sec-bernard")
    attempts = [
        xoauth2(EVE + FORGED, token),  # a BAL with a forged JSON tail
        xoauth2(token, token),  # the token where the BAL goes
        base64.b64encode(f"user={EVE}\x01auth=Bearer {token}{FORGED}\x01\x01".encode()).decode(),
    ]
    for attempt in attempts:
        client = await Raw.open(stack.imap_port)
        await client.ok(f'ID ("name" "LPS {FORGED[1:].replace(chr(34), "")}" "version" "1")')
        refused = await client.command("AUTHENTICATE XOAUTH2 ", attempt)
        assert b" NO " in refused.tagged or b" BAD " in refused.tagged, refused.tagged
        await client.close()
    logged: list[dict[str, Any]] = []
    raw: list[str] = []

    def refusals_logged() -> bool:
        err = capsys.readouterr().err
        raw.extend(err.splitlines())
        logged.extend(json.loads(line) for line in err.splitlines() if line.strip())
        return sum(1 for e in logged if e.get("event") == "imap.session_closed") >= len(attempts)

    await until(refusals_logged, "the probes' sessions closed")
    assert all(line.startswith("{") and line.endswith("}") for line in raw if line.strip())
    assert not [e for e in logged if "person" in e], "no login: nobody is named"
    assert not [e for e in logged if e.get("bal") == CLAIRE], "the forged BAL names no line"
    for secret in (token, token[-40:]):
        assert not [line for line in raw if secret in line], "a line holds the token"
