"""The submission server's reading of MAIL FROM / RCPT TO addresses (`TokenSMTP._getaddr`):
plain addresses by a pattern, the rest by aiosmtpd's RFC 5322 parser, with the same result
for every argument."""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.runtime.smtp_server import TokenSMTP

PIECES = st.sampled_from(
    [
        "a", "Z", "0", "-", "+", "_", "'", "=", "~", "!", "é", ".", "..", "@", "<", ">", " ",
        "\t", "(", ")", '"', "[", "]", ":", ",", ";", "\\", "\x0b", "mss", "sante.fr",
        " SIZE=100", " BODY=8BITMIME", "(c)",
    ]
)  # fmt: skip
ARGS = st.lists(PIECES, max_size=16).map("".join)
WORD = st.text(alphabet="aZ09-+_'.!é\"[] ", min_size=0, max_size=6)
NEAR_PLAIN = st.builds(
    lambda space, local, domain, rest: f"{space}<{local}@{domain}>{rest}",
    st.sampled_from(["", " ", "\t", " ("]),
    WORD,
    WORD,
    st.sampled_from(["", " SIZE=1", "\tBODY=7BIT", " (x) SIZE=1", "x", ">"]),
)


def readers(limit: int) -> tuple[TokenSMTP, SMTP]:
    ours = TokenSMTP.__new__(TokenSMTP)
    theirs = SMTP.__new__(SMTP)
    ours.local_part_limit = theirs.local_part_limit = limit
    return ours, theirs


@given(ARGS | NEAR_PLAIN, st.sampled_from([0, 3, 64]))
@example("<claire.martin@medecin.mssante.fr>", 0)
@example(" <a@b.c>  SIZE=100 BODY=8BITMIME", 0)
@example("<a@b.c> (comment) SIZE=1", 0)
@example("<a@b.c>\tSMTPUTF8", 0)
@example("<a..b@c>", 0)
@example("<.a@c>", 0)
@example("<a@b.>", 0)
@example("<abcd@b>", 3)
@example("<abc@b>", 3)
def test_plain_addresses_read_as_aiosmtpd_reads_them(arg: str, limit: int) -> None:
    ours, theirs = readers(limit)
    try:
        expected = SMTP._getaddr(theirs, arg)
    except Exception as error:  # what aiosmtpd raises, the fallback raises the same
        with pytest.raises(type(error)):
            ours._getaddr(arg)
        return
    assert ours._getaddr(arg) == expected


@pytest.mark.parametrize(
    ("arg", "address", "rest"),
    [
        ("<claire.martin@medecin.mssante.fr>", "claire.martin@medecin.mssante.fr", ""),
        ("<a@b.c> SIZE=100", "a@b.c", "SIZE=100"),
        ('<"a b"@c.d>', '"a b"@c.d', ""),  # the parser's: a quoted local part
        ("<a@[127.0.0.1]>", "a@[127.0.0.1]", ""),
    ],
)
def test_known_addresses(arg: str, address: str, rest: str) -> None:
    ours, _ = readers(0)
    assert ours._getaddr(arg) == (address, rest)
