"""The PROXY protocol header (HAProxy's, versions 1 and 2), sans I/O.

A load balancer in TCP mode that connects to the gateway on a client's behalf writes this
header before anything else, saying who the client is. Bytes go in (`parse`, or
`HeaderParser.feed`); out comes `NeedMore` (how many more bytes the header is at least,
so that a reader never takes a byte past it), a `ProxyHeader`, or `Malformed`.

Bounded: a version 1 line is at most 107 bytes, a version 2 header at most
`V2_MAX_LENGTH` bytes after its 16 fixed ones. Version 2's TLVs are walked, each within
the header, and ignored. A v2 LOCAL header (a health check: the proxy speaks for itself)
is `local`, whatever family it says (its address block, if any, is skipped). A PROXY
header that names no client (v1 UNKNOWN, v2 UNSPEC or UNIX addresses) leaves `source` None
without being `local`: the listener refuses it (`gateway.runtime.proxy_listener`). An
IPv4-mapped IPv6 address is read as the IPv4 one it is; a scope id is refused.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V1_MAX = 107  # "PROXY TCP6 <39> <39> 65535 65535\r\n", the spec's bound
V1_MIN = len(b"PROXY UNKNOWN\r\n")
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature, version and command, family and protocol, length
V2_MAX_LENGTH = 1024  # addresses (216 at most, for UNIX) and TLVs: HAProxy sends far less

_V2_COMMAND_LOCAL = 0x0
_V2_COMMAND_PROXY = 0x1
_V2_UNSPEC, _V2_INET, _V2_INET6, _V2_UNIX = 0x0, 0x1, 0x2, 0x3
_V2_ADDRESS_LENGTH = {_V2_UNSPEC: 0, _V2_INET: 12, _V2_INET6: 36, _V2_UNIX: 216}
_V2_STREAM_OR_UNSPEC = (0x0, 0x1)

Address = tuple[str, int]


@dataclass(frozen=True)
class NeedMore:
    """The header is not complete: it is at least `at_least` bytes longer."""

    at_least: int


@dataclass(frozen=True)
class ProxyHeader:
    """A complete header of `consumed` bytes; what follows it is the client's."""

    version: int
    source: Address | None  # the client; None: the connection's own peer is
    destination: Address | None
    consumed: int
    local: bool = False  # v2 LOCAL: the proxy's own connection (a health check)


@dataclass(frozen=True)
class Malformed:
    """Not a PROXY protocol header, or a broken one: the connection must be closed."""

    reason: str


Result = NeedMore | ProxyHeader | Malformed


def parse(data: bytes) -> Result:
    """The header at the start of `data` (which may hold more: the client's first bytes)."""
    if data[: len(V1_PREFIX)] == V1_PREFIX[: len(data)]:
        return _parse_v1(data)
    if data[:V2_FIXED][: len(V2_SIGNATURE)] == V2_SIGNATURE[: len(data)]:
        return _parse_v2(data)
    return Malformed("not a PROXY protocol header")


class HeaderParser:
    """`parse` over bytes that arrive in pieces; holds at most one header's worth."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> Result:
        self._buffer += data
        return parse(self._buffer)


def _parse_v1(data: bytes) -> Result:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            return Malformed("v1 line longer than 107 bytes")
        if b"\n" in data or (b"\r" in data and not data.endswith(b"\r")):
            return Malformed("v1 line not ended by CRLF")
        return NeedMore(max(1, V1_MIN - len(data)))
    line = data[:end]
    consumed = end + 2
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        return Malformed("v1 line not ASCII")
    fields = text.split(" ")
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return ProxyHeader(1, None, None, consumed)
    if len(fields) != 6:
        return Malformed("v1 line needs 6 fields")
    _, family, source, destination, source_port, destination_port = fields
    version = {"TCP4": 4, "TCP6": 6}.get(family)
    if version is None:
        return Malformed("v1 family is neither TCP4, TCP6 nor UNKNOWN")
    try:
        src = (_v1_address(source, version), _v1_port(source_port))
        dst = (_v1_address(destination, version), _v1_port(destination_port))
    except ValueError as error:
        return Malformed(f"v1 {error}")
    return ProxyHeader(1, src, dst, consumed)


def _v1_address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError("address unreadable") from None
    if address.version != version:
        raise ValueError("address not of the family announced")
    if "%" in text:
        raise ValueError("address has a scope id")
    return _unmapped(address)


def _unmapped(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return str(mapped or address)


def _v1_port(text: str) -> int:
    if not text.isdigit() or not text.isascii() or len(text) > 5 or int(text) > 65535:
        raise ValueError("port unreadable")
    return int(text)


def _parse_v2(data: bytes) -> Result:
    if len(data) < V2_FIXED:
        return NeedMore(V2_FIXED - len(data))
    version_command, family_protocol, length = struct.unpack_from("!BBH", data, 12)
    if version_command >> 4 != 2:
        return Malformed("v2 version is not 2")
    command = version_command & 0x0F
    if command not in (_V2_COMMAND_LOCAL, _V2_COMMAND_PROXY):
        return Malformed("v2 command unknown")
    if length > V2_MAX_LENGTH:
        return Malformed(f"v2 header longer than {V2_MAX_LENGTH} bytes")
    consumed = V2_FIXED + length
    if command == _V2_COMMAND_LOCAL:  # the family is to be ignored, the rest skipped
        if len(data) < consumed:
            return NeedMore(consumed - len(data))
        return ProxyHeader(2, None, None, consumed, local=True)
    family, protocol = family_protocol >> 4, family_protocol & 0x0F
    if family not in _V2_ADDRESS_LENGTH:
        return Malformed("v2 address family unknown")
    if protocol not in _V2_STREAM_OR_UNSPEC:
        return Malformed("v2 transport is not a stream")
    if len(data) < consumed:
        return NeedMore(consumed - len(data))
    body = data[V2_FIXED:consumed]
    addresses = _V2_ADDRESS_LENGTH[family]
    if len(body) < addresses:
        return Malformed("v2 header shorter than its addresses")
    if not _tlvs_fit(body[addresses:]):
        return Malformed("v2 TLV runs past the header")
    if family in (_V2_UNSPEC, _V2_UNIX):
        return ProxyHeader(2, None, None, consumed)
    size = 4 if family == _V2_INET else 16
    source = ipaddress.ip_address(body[:size])
    destination = ipaddress.ip_address(body[size : 2 * size])
    source_port, destination_port = struct.unpack_from("!HH", body, 2 * size)
    return ProxyHeader(
        2, (_unmapped(source), source_port), (_unmapped(destination), destination_port), consumed
    )


def _tlvs_fit(tlvs: bytes) -> bool:
    """Whether `tlvs` is a sequence of whole TLVs (type, 16-bit length, value)."""
    offset = 0
    while offset < len(tlvs):
        if offset + 3 > len(tlvs):
            return False
        (size,) = struct.unpack_from("!H", tlvs, offset + 1)
        offset += 3 + size
    return offset == len(tlvs)


def v1_header(source: Address, destination: Address) -> bytes:
    """A version 1 line for these addresses (tests, probes)."""
    family = "TCP6" if ":" in source[0] else "TCP4"
    return (f"PROXY {family} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n").encode(
        "ascii"
    )


def v2_header(
    source: Address | None, destination: Address | None = None, *, tlvs: bytes = b""
) -> bytes:
    """A version 2 header: PROXY for `source`, LOCAL when it is None (tests, probes)."""
    if source is None:
        return V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, len(tlvs)) + tlvs
    destination = destination or (("::1", 0) if ":" in source[0] else ("127.0.0.1", 0))
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    family = _V2_INET if src.version == 4 else _V2_INET6
    body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1]) + tlvs
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, family << 4 | 0x1, len(body)) + body
