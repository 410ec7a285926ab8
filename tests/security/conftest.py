"""Hostile-client tests run against whole gateways: the gateway rooms' fixtures, shared."""

from __future__ import annotations

from tests.gateway.conftest import backend_overrides, stack, stack_settings
from tests.gateway.test_legacy_ws_imap import legacy

__all__ = ["backend_overrides", "legacy", "stack", "stack_settings"]
