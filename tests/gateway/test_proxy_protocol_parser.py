"""The PROXY protocol header parser (`gateway.runtime.proxy_protocol`): the spec's examples,
its bounds, and fuzzing: whatever comes in, the answer is one of the three, a header never
claims bytes it was not given, and a reader that takes exactly what `NeedMore` asks never
reads past the header."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.runtime.proxy_protocol import (
    V1_MAX,
    V2_MAX_LENGTH,
    V2_SIGNATURE,
    HeaderParser,
    Malformed,
    NeedMore,
    ProxyHeader,
    parse,
    v1_header,
    v2_header,
)

COMMAND = b"a1 CAPABILITY\r\n"


def v2_raw(version_command: int, family_protocol: int, body: bytes, length: int | None = None):
    size = len(body) if length is None else length
    return V2_SIGNATURE + struct.pack("!BBH", version_command, family_protocol, size) + body


def test_v1_tcp4_and_the_bytes_after_it_are_left_alone():
    header = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 1143\r\n"
    result = parse(header + COMMAND)
    assert result == ProxyHeader(1, ("192.0.2.7", 56324), ("10.0.0.1", 1143), len(header))


def test_v1_longest_lines_fit_in_107_bytes():
    full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    header = f"PROXY TCP6 {full} {full} 65535 65535\r\n".encode()
    result = parse(header)
    assert isinstance(result, ProxyHeader)
    assert result.source == (full, 65535)
    unknown = f"PROXY UNKNOWN {full} {full} 65535 65535\r\n".encode()
    assert len(unknown) == V1_MAX  # the spec's worst case
    assert parse(unknown) == ProxyHeader(1, None, None, V1_MAX)


def test_v1_unknown_names_no_client():
    assert parse(b"PROXY UNKNOWN\r\n") == ProxyHeader(1, None, None, 15)
    assert parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n") == ProxyHeader(1, None, None, 35)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.0.2.7 10.0.0.1 56324\r\n",  # a field missing
        b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 1143 extra\r\n",
        b"PROXY TCP5 192.0.2.7 10.0.0.1 1 2\r\n",
        b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n",  # family and address disagree
        b"PROXY TCP6 192.0.2.7 2001:db8::1 1 2\r\n",
        b"PROXY TCP4 192.0.2.999 10.0.0.1 1 2\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 2\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 -1 2\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 \xd9\xa1 2\r\n",  # an Arabic-Indic digit
        b"PROXY TCP4  192.0.2.7 10.0.0.1 1 2\r\n",  # two spaces
        b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2\n",  # LF alone
        b"PROXY TCP4 192.0.2.7\r10.0.0.1 1 2\r\n",
        b"proxy TCP4 192.0.2.7 10.0.0.1 1 2\r\n",
        b"a1 LOGIN x y\r\n",
    ],
)
def test_v1_malformed_lines(line: bytes):
    assert isinstance(parse(line), Malformed)


def test_v1_line_without_end_is_refused_at_107_bytes():
    line = b"PROXY TCP4 " + b"1" * 200
    assert isinstance(parse(line[:106]), NeedMore)
    assert isinstance(parse(line[:107]), Malformed)


def test_v2_ipv4_ipv6_and_local():
    header = v2_header(("192.0.2.7", 50123), ("10.0.0.1", 1143))
    assert parse(header + COMMAND) == ProxyHeader(2, ("192.0.2.7", 50123), ("10.0.0.1", 1143), 28)
    header6 = v2_header(("2001:db8::7", 1), ("2001:db8::1", 2))
    assert parse(header6) == ProxyHeader(2, ("2001:db8::7", 1), ("2001:db8::1", 2), 52)
    assert parse(v2_header(None)) == ProxyHeader(2, None, None, 16, local=True)


@pytest.mark.parametrize(
    "raw",
    [
        v2_raw(0x20, 0x11, b""),  # LOCAL saying INET with no address block
        v2_raw(0x20, 0x11, bytes(5)),  # ... or a short one
        v2_raw(0x20, 0x21, bytes(36)),
        v2_raw(0x20, 0x41, bytes(3)),  # an unknown family, a datagram: to be ignored
        v2_raw(0x20, 0x12, bytes(12)),
    ],
)
def test_v2_local_ignores_its_family_and_skips_its_body(raw: bytes):
    """The spec: for LOCAL the receiver must ignore the protocol block (a health check)."""
    assert parse(raw + COMMAND) == ProxyHeader(2, None, None, len(raw), local=True)
    if len(raw) > 16:
        assert isinstance(parse(raw[:-1]), NeedMore), "its body is skipped, not cut"


def test_v1_tcp6_refuses_a_scope_id():
    assert isinstance(parse(b"PROXY TCP6 fe80::1%eth0 fe80::2 1 2\r\n"), Malformed)
    assert isinstance(parse(b"PROXY TCP6 2001:db8::1 fe80::2%1 1 2\r\n"), Malformed)


def test_ipv4_mapped_addresses_read_as_ipv4():
    v1 = parse(b"PROXY TCP6 ::ffff:192.0.2.7 ::ffff:10.0.0.1 1 2\r\n")
    assert isinstance(v1, ProxyHeader)
    assert (v1.source, v1.destination) == (("192.0.2.7", 1), ("10.0.0.1", 2))
    v2 = parse(v2_header(("::ffff:192.0.2.7", 1), ("::ffff:10.0.0.1", 2)))
    assert isinstance(v2, ProxyHeader)
    assert (v2.source, v2.destination) == (("192.0.2.7", 1), ("10.0.0.1", 2))


def test_v2_tlvs_are_walked_and_ignored():
    tlvs = b"\x04\x00\x00" + b"\x05\x00\x03abc" + b"\x20\x00\x05\x01\x00\x00\x00\x00"
    header = v2_header(("192.0.2.7", 1), tlvs=tlvs)
    result = parse(header)
    assert isinstance(result, ProxyHeader)
    assert result.consumed == len(header)
    broken = v2_header(("192.0.2.7", 1), tlvs=b"\x05\x00\x09abc")
    assert isinstance(parse(broken), Malformed)
    torn = v2_header(("192.0.2.7", 1), tlvs=b"\x05\x00")
    assert isinstance(parse(torn), Malformed)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (v2_raw(0x11, 0x11, bytes(12)), "version"),
        (v2_raw(0x22, 0x11, bytes(12)), "command"),
        (v2_raw(0x21, 0x41, bytes(12)), "family"),
        (v2_raw(0x21, 0x12, bytes(12)), "stream"),  # UDP
        (v2_raw(0x21, 0x11, bytes(8)), "shorter"),
        (v2_raw(0x21, 0x21, bytes(12)), "shorter"),
        (v2_raw(0x21, 0x11, b"", V2_MAX_LENGTH + 1), "longer"),
        (v2_raw(0x21, 0x11, b"", 0xFFFF), "longer"),
    ],
)
def test_v2_malformed_headers(raw: bytes, reason: str):
    result = parse(raw)
    assert isinstance(result, Malformed)
    assert reason in result.reason


def test_v2_unspec_and_unix_name_no_client():
    assert parse(v2_raw(0x21, 0x00, b"")) == ProxyHeader(2, None, None, 16)  # the listener
    # refuses these: only LOCAL is the proxy's own connection
    assert parse(v2_raw(0x21, 0x31, bytes(216))) == ProxyHeader(2, None, None, 232)


def test_anything_else_is_refused_at_its_first_byte():
    assert isinstance(parse(b"G"), Malformed)
    assert isinstance(parse(b"\r\n\r\n\x00\r\nQUIX"), Malformed)
    assert parse(b"") == NeedMore(15)


def read_exactly(stream: bytes, parser: HeaderParser) -> tuple[object, int]:
    """As the listener reads: never more than `NeedMore` asks; returns the result and the
    bytes taken."""
    taken = 0
    result = parser.feed(b"")
    while isinstance(result, NeedMore) and taken < len(stream):
        chunk = stream[taken : taken + result.at_least]
        taken += len(chunk)
        result = parser.feed(chunk)
    return result, taken


@pytest.mark.parametrize(
    "header",
    [
        v1_header(("192.0.2.7", 1), ("10.0.0.1", 2)),
        v1_header(("2001:db8::7", 1), ("2001:db8::1", 2)),
        b"PROXY UNKNOWN\r\n",
        v2_header(("192.0.2.7", 1)),
        v2_header(("192.0.2.7", 1), tlvs=b"\x05\x00\x03abc"),
        v2_header(None),
    ],
)
def test_a_reader_taking_what_is_asked_stops_at_the_end_of_the_header(header: bytes):
    result, taken = read_exactly(header + COMMAND, HeaderParser())
    assert isinstance(result, ProxyHeader)
    assert taken == result.consumed == len(header)


def test_byte_by_byte_is_the_same_header():
    header = v2_header(("192.0.2.7", 50123))
    parser = HeaderParser()
    results = [parser.feed(header[i : i + 1]) for i in range(len(header))]
    assert all(isinstance(r, NeedMore) for r in results[:-1])
    assert results[-1] == parse(header)


@given(st.binary(max_size=2048))
def test_fuzz_any_bytes(data: bytes):
    result = parse(data)
    assert isinstance(result, NeedMore | ProxyHeader | Malformed)
    if isinstance(result, ProxyHeader):
        assert 15 <= result.consumed <= len(data)
        assert result.consumed <= max(V1_MAX, 16 + V2_MAX_LENGTH)
    if isinstance(result, NeedMore):
        assert result.at_least >= 1
        assert len(data) + result.at_least <= 16 + V2_MAX_LENGTH


@given(
    st.sampled_from(
        [
            v1_header(("192.0.2.7", 1), ("10.0.0.1", 2)),
            v2_header(("2001:db8::7", 9), tlvs=b"\x01\x00\x02h2"),
        ]
    ),
    st.binary(max_size=64),
    st.integers(min_value=0, max_value=200),
    st.integers(min_value=0, max_value=255),
)
def test_fuzz_a_good_header_mangled_or_followed(header: bytes, tail: bytes, at: int, value: int):
    """Followed by anything it is the same header; with one byte changed or cut short it
    is refused, asks for more, or still reads (a changed address or port byte)."""
    assert parse(header + tail) == parse(header)
    mangled = bytearray(header)
    mangled[at % len(mangled)] = value
    result, taken = read_exactly(bytes(mangled) + tail, HeaderParser())
    assert isinstance(result, NeedMore | ProxyHeader | Malformed)
    if isinstance(result, ProxyHeader):
        assert taken == result.consumed
    assert isinstance(parse(header[: at % len(header)]), NeedMore)
