"""The one table of IMAP response codes: complete for logins, and the only place codes are
spelled out in the runtime packages."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import get_args

from gateway.imap.codes import LOGIN_FAILURES, Code
from gateway.imap.response import tagged
from gateway.runtime.login import AuthFailure

ROOT = Path(__file__).resolve().parents[2]
# the codes a reply states as a bare word: spelled anywhere but codes.py, one would drift
GUARDED = {
    "NOPERM",
    "CANNOT",
    "UNAVAILABLE",
    "AUTHENTICATIONFAILED",
    "AUTHORIZATIONFAILED",
    "LIMIT",
    "NONEXISTENT",
    "ALREADYEXISTS",
    "EXPUNGEISSUED",
    "TRYCREATE",
    "PRIVACYREQUIRED",
    "INUSE",
    "TOOBIG",
    "SERVERBUG",
    "OVERQUOTA",
    "READ-ONLY",
    "READ-WRITE",
    "BADCHARSET",
}


def test_every_login_failure_has_its_code():
    assert set(LOGIN_FAILURES) == set(get_args(AuthFailure))
    assert LOGIN_FAILURES["authentication"] is Code.AUTHENTICATIONFAILED
    assert LOGIN_FAILURES["throttled"] is Code.UNAVAILABLE


def test_values_are_the_wire_atoms():
    for code in Code:
        assert re.fullmatch(r"[A-Z][A-Z0-9-]*[A-Z0-9]", code.value), code
        assert code.value == code.name.replace("_", "-")
    assert tagged("a", "NO", "no", Code.READ_ONLY) == b"a NO [READ-ONLY] no\r\n"
    assert tagged("a", "OK", "done", f"{Code.UIDNEXT} 4") == b"a OK [UIDNEXT 4] done\r\n"


def test_codes_are_spelled_only_in_the_table():
    found = []
    for package in ("gateway", "mock_operator"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "gateway" / "imap" / "codes.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and node.value in GUARDED:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value}")
    assert found == []
