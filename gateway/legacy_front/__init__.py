"""The historic web services served by the gateway over whatever platform holds the BAL,
so that LPS that never moved to the API LPS keep working when their mailbox moves.

`operations.GatewayHistoricOperations` implements `gateway.mss.historic_ws.HistoricOperations`:
authorisation by the delegation registry, routing, audit, then `modern` (a BAL on an
IMAP/SMTP platform: `sessions` for the pooled IMAP sessions, `structure` for ENVELOPE and
BODYSTRUCTURE, `ids` for the historic ids and sync tokens) or a pass-through to the
historic platform. `auth` says who calls (token, card, OTP, CIBA; `otp`, `cookies`), and
`front` assembles the HTTP faces (`gateway.mss.historic_http`, shared with the mock).
"""

from gateway.legacy_front.operations import GatewayHistoricOperations

__all__ = ["GatewayHistoricOperations"]
