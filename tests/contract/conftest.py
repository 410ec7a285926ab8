"""The targets of the historic web services' contract suites: each a running
implementation, started once per module, and who acts on which BAL there.

A target is an async context manager factory in `TARGETS` (name -> factory(directory));
adding an implementation to every contract suite is adding one entry.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import quote

import pytest
import pytest_asyncio

from mock_operator.personas import default_personas
from mock_operator.server import MockOperator
from tests.conftest import quick_mock_settings
from tests.historic import historic_attachment, historic_messages
from tests.support.historic_contract import Target

PERSONAS = default_personas()


def _persona_bal(key: str) -> tuple[str, str]:
    persona = PERSONAS.get(key)
    assert persona is not None
    assert persona.bal is not None
    return persona.bal, persona.idnat


@contextlib.asynccontextmanager
async def mock_historic(directory: Path) -> AsyncIterator[Target]:
    """The mock's historic platform, called by dr-dupont with his CPS card as a trusted
    front proxy passes it on (``ssl_client_verify``/``ssl_client_cert``, from loopback)."""
    mock = MockOperator(quick_mock_settings(), directory)
    await mock.start()
    try:
        assert mock.historic_auth is not None
        assert mock.historic_auth.authority is not None
        dupont = PERSONAS.get("dr-dupont")
        assert dupont is not None
        certificate, _key = mock.historic_auth.authority.issue(dupont)
        bal, idnat = _persona_bal("dr-dupont")
        other, _ = _persona_bal("sf-petit")

        async def received(address: str, subject: str) -> dict[str, bytes] | None:
            found = await historic_messages(mock, address, 2, subject=subject)
            if not found:
                return None
            message = found[-1]
            return {
                a["fileName"]: await historic_attachment(mock, address, message, a)
                for a in message.get("attachments", [])
            }

        yield Target(
            name="mock",
            base_url=mock.http_url,
            headers={
                "ssl_client_verify": "SUCCESS",
                "ssl_client_cert": quote(certificate.decode("ascii")),
            },
            bal=bal,
            holder_idnat=idnat,
            other_bal=other,
            received=received,
        )
    finally:
        await mock.stop()


TARGETS: dict[str, Callable[[Path], contextlib.AbstractAsyncContextManager[Target]]] = {
    "mock": mock_historic,
}


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=sorted(TARGETS))
async def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Target]:
    directory = tmp_path_factory.mktemp(f"target-{request.param}")
    async with TARGETS[request.param](directory) as running:
        yield running
