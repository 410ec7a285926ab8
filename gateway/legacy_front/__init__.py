"""The historic web services' operations served by the gateway over any platform.

`operations.GatewayHistoricOperations` implements `gateway.mss.historic_ws.HistoricOperations`:
authorisation by the delegation registry, routing, audit, then `modern` (a BAL on an
IMAP/SMTP platform: `sessions` for the pooled IMAP sessions, `structure` for ENVELOPE and
BODYSTRUCTURE, `ids` for the historic ids and sync tokens) or a pass-through to the
historic platform. The HTTP faces (REST, SOAP) and the authentication live elsewhere.
"""

from gateway.legacy_front.operations import GatewayHistoricOperations

__all__ = ["GatewayHistoricOperations"]
