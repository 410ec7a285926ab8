"""The verdicts of the TLS scenario ports (`tls_scenarios`), from a campaign's events by
connection (sans-I/O, like `checks`): did the LPS refuse a certificate it must refuse?

On a scenario's ports, a connection counts as
- refused when the client hung up on the certificate: an alert, or a close, once its
  ClientHello had come (`tls_failed` with `refused`), or a completed handshake then a close
  without authenticating (a client that checks the certificate after the handshake);
- gone on when it authenticated over that TLS session (AUTHENTICATE, LOGIN or AUTH sent,
  whether the token was accepted or not: it is in the hands of a server it should not have
  trusted);
- neither when it never got as far as the certificate (garbage or nothing instead of a
  ClientHello, no STARTTLS, a login in plaintext), or is still open.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mock_operator.conformance.events import Event
from mock_operator.conformance.results import Status

AUTH_COMMANDS = frozenset({"AUTHENTICATE", "LOGIN", "AUTH"})
LABELS = {
    "expired": "expiré",
    "wrong-name": "établi pour un autre nom d'hôte",
    "untrusted-ca": "émis par une AC non reconnue",
}
TRUST_HINT = (
    "donnez-lui comme AC de confiance le fichier trust.pem du banc (tls/scenarios/) "
    "pour que ce contrôle porte sur ce seul défaut"
)

Verdict = tuple[Status, str, list[str]]


def scenario_connections(
    scenario: str, connections: Mapping[str, Sequence[Event]]
) -> list[Sequence[Event]]:
    """The connections made to `scenario`'s ports."""
    return [
        events
        for events in connections.values()
        if any(e.kind == "connect" and e.data.get("scenario") == scenario for e in events)
    ]


def authentication(events: Sequence[Event]) -> str | None:
    """The first credentials sent over the connection's TLS session, as evidence."""
    secured = False
    for event in events:
        if event.kind == "tls":
            secured = True
        elif not secured:
            continue
        elif event.kind == "command" and event.data.get("name") in AUTH_COMMANDS:
            return str(event.data.get("line") or event.data.get("name"))
        elif event.kind == "login":
            outcome = "acceptée" if event.data.get("ok") else "refusée"
            return f"{event.data.get('mechanism', '?')} {event.data.get('user', '')} ({outcome})"
    return None


def refusal(events: Sequence[Event]) -> str | None:
    """How the client refused the certificate, if it did."""
    for event in events:
        if event.kind == "tls_failed" and event.data.get("refused"):
            alert = event.data.get("alert")
            if alert:
                return f"alerte TLS « {alert} »"
            return "connexion fermée sans alerte après réception du certificat"
    handshake = any(e.kind == "tls" for e in events)
    if handshake and any(e.kind == "close" for e in events):
        return "poignée de main terminée, puis fermeture sans authentification"
    return None


def scenario_verdict(scenario: str, connections: Mapping[str, Sequence[Event]]) -> Verdict:
    label = LABELS.get(scenario, scenario)
    mine = scenario_connections(scenario, connections)
    if not mine:
        return (
            Status.NOT_OBSERVED,
            f"Le logiciel ne s'est pas connecté aux ports du scénario « {scenario} ».",
            [],
        )
    went_on: list[str] = []
    refused: list[tuple[str, str]] = []
    for events in mine:
        interface = events[0].interface
        sent = authentication(events)
        if sent is not None:
            went_on.append(f"{interface} : {sent}")
            continue
        how = refusal(events)
        if how is not None:
            refused.append((interface, how))
    if went_on:
        return (
            Status.FAILED,
            f"Authentification malgré un certificat serveur {label}.",
            went_on[:5],
        )
    if not refused:
        return (
            Status.NOT_OBSERVED,
            f"Connexion(s) aux ports « {scenario} » sans poignée de main TLS menée jusqu'au "
            "certificat.",
            [],
        )
    evidence = [f"{interface} : {how}" for interface, how in refused[:5]]
    if scenario != "untrusted-ca" and all("unknown ca" in how for _, how in refused):
        return (
            Status.NOT_OBSERVED,
            f"Certificat refusé, mais comme émis par une AC inconnue : {TRUST_HINT}.",
            evidence,
        )
    return (
        Status.PASSED,
        f"Certificat {label} refusé ({len(refused)} connexion(s)), sans authentification.",
        evidence,
    )
