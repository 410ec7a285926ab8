"""Calling a running mock operator's historic web services as the trusted gateway does."""

from __future__ import annotations

import base64
from typing import Any

import httpx

from mock_operator.server import MockOperator


async def historic_call(
    mock: MockOperator, service: str, operation: str, payload: dict[str, Any]
) -> Any:
    """One REST call with the master credentials; the `<op>Output` content (asserts 200)."""
    assert mock.master is not None
    basic = base64.b64encode(f"{mock.master.user}:{mock.master.password}".encode()).decode()
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.post(
            f"{mock.http_url}/mss-msg-services/services/{service}/rest/v1/{operation}",
            json={f"{operation}Input": payload},
            headers={"Authorization": f"Basic {basic}", "NUMHOMOLOGATION": "LPS-TEST-1"},
        )
    assert answer.status_code == 200, answer.text
    return answer.json()[f"{operation}Output"]
