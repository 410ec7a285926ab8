"""An LPS's visit to the mock's TLS scenario ports, for tests that play a conformant LPS:
STARTTLS on each scenario's IMAP and SMTP port, the certificate refused (asyncio's client
hangs up without an alert: the mock sees the close after its certificate)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from mock_operator.server import MockOperator


def trusting(mock: MockOperator) -> ssl.SSLContext:
    """A client context as the README asks an LPS to be configured: trust.pem."""
    assert mock.scenarios is not None
    return ssl.create_default_context(cafile=str(mock.scenarios.files.trust))


async def refuse_tls_scenarios(mock: MockOperator, context: ssl.SSLContext | None = None) -> None:
    """Visit every scenario port and refuse its certificate; AssertionError if one is
    accepted. The mock attributes these connections to the most recent open campaign."""
    assert mock.scenarios is not None
    context = context or trusting(mock)
    for ports in mock.scenarios.ports().values():
        for interface, port in ports.items():
            await refuse(interface, port, context)


async def refuse(interface: str, port: int, context: ssl.SSLContext) -> str:
    """STARTTLS on `port` and the certificate refused: the verify message."""
    reader, writer = await asyncio.open_connection("localhost", port)
    try:
        async with asyncio.timeout(30):
            await reader.readline()
            if interface == "imap":
                writer.write(b"a1 STARTTLS\r\n")
                assert (await reader.readline()).startswith(b"a1 OK")
            else:
                writer.write(b"EHLO mon-lps.example\r\n")
                while not (await reader.readline()).startswith(b"250 "):
                    pass
                writer.write(b"STARTTLS\r\n")
                assert (await reader.readline()).startswith(b"220")
            try:
                await writer.start_tls(context, server_hostname="localhost")
            except ssl.SSLCertVerificationError as error:
                return str(error.verify_message)
        raise AssertionError(f"{interface} port {port}: certificate accepted")
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
