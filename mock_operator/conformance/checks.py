"""The campaign's verdicts, decided from its recorded events alone (no I/O: a report can be
recomputed at any time, and every check is tested on hand-written event lists).

Each check names the ECO requirement of Référentiel #2 it verifies where one exists
(`../shared/design/CONFORMANCE.md`), else the RFC; "projet" marks this project's own rules
(delegation has no ECO id in the public sources).
"""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from mock_operator.conformance.cert_checks import scenario_verdict
from mock_operator.conformance.events import Event
from mock_operator.conformance.message_facts import CODECDA_RULES, INS_RULES, XDM_RULES
from mock_operator.conformance.results import Check, Result, Status

TOKEN_MECHANISMS = frozenset({"XOAUTH2", "OAUTHBEARER"})
BODY_READS = ("BODY[", "RFC822", "RFC822.TEXT")
POLLING_COMMANDS = frozenset({"NOOP", "STATUS", "CHECK", "SELECT", "EXAMINE"})
MIN_POLL_INTERVAL = 30.0  # seconds between polls, below which polling is hammering
SESSION_END_GRACE = 120.0  # the LPS's sessions are closed this long after PSC ends
MAX_RETRIES_AFTER_END = 10  # failed logins after the PSC session ended: no hammering

CHECKS: tuple[Check, ...] = (
    Check(
        "starttls-imap", "ECO.1.0.2", "IMAP : STARTTLS avant toute authentification", "transport"
    ),
    Check(
        "starttls-smtp", "ECO.1.0.1", "SMTP : STARTTLS avant toute authentification", "transport"
    ),
    Check("tls-version", "ECO.1.1.1", "TLS 1.2 ou plus récent", "transport"),
    Check("sni", "RFC 6066 §3", "SNI avec le nom d'hôte du serveur", "transport"),
    Check(
        "sasl-token",
        "ECO.1.2.1",
        "Authentification XOAUTH2 ou OAUTHBEARER par jeton PSC",
        "authentification",
    ),
    Check(
        "token-client",
        "ECO.1.2.1",
        "Jetons délivrés à l'application du logiciel (client_id)",
        "authentification",
    ),
    Check(
        "token-expired",
        "ECO.1.2.7",
        "Jeton rafraîchi avant expiration, jamais réutilisé expiré",
        "authentification",
    ),
    Check(
        "session-end",
        "ECO.1.2.6",
        "Sessions fermées quand la session PSC prend fin",
        "authentification",
    ),
    Check(
        "session-reopen",
        "ECO.1.2.7",
        "Sessions rouvertes seules après reconnexion, sans acharnement",
        "authentification",
    ),
    Check("imap-id", "RFC 2971", "Commande ID avec le nom et la version du logiciel", "imap"),
    Check(
        "imap-uid", "RFC 3501 §6.4.8", "Commandes UID (FETCH, STORE, SEARCH, COPY, MOVE)", "imap"
    ),
    Check("imap-idle", "RFC 2177", "IDLE, ou relève à une fréquence raisonnable", "imap"),
    Check("imap-peek", "RFC 3501 §6.4.5", "BODY.PEEK pour lire sans marquer \\Seen", "imap"),
    Check(
        "imap-updates", "RFC 3501 §7.3-7.4", "Réponses EXISTS / EXPUNGE prises en compte", "imap"
    ),
    Check("imap-logout", "RFC 3501 §6.1.3", "Sessions terminées par LOGOUT", "imap"),
    Check(
        "delegation-open",
        "projet",
        "BAL déléguée ouverte en la nommant dans l'utilisateur SASL",
        "délégation",
    ),
    Check(
        "delegation-from", "projet", "Envoi depuis une BAL déléguée avec From: la BAL", "délégation"
    ),
    Check("from-bal", "API LPS", "From: la BAL de la session", "envoi"),
    Check("message-id", "ECO.2.2.1", "Message-ID conforme (RFC 5322)", "envoi"),
    Check("date", "RFC 5322 §3.6.1", "En-tête Date", "envoi"),
    Check("header-encoding", "RFC 2047", "En-têtes non ASCII encodés", "envoi"),
    Check("x-mss-nil", "ECO.2.4.3", "X-MSS-NIL sur chaque message", "envoi"),
    Check("xdm-archive", "ECO.2.1.1", "IHE_XDM.ZIP bien formé (METADATA.XML, CDA)", "envoi"),
    Check("x-mss-codecda", "ECO.2.4.1", "X-MSS-CODECDA cohérent avec les CDA", "envoi"),
    Check("x-mss-ins", "ECO.2.4.2", "X-MSS-INS cohérent avec l'INS du CDA", "envoi"),
    Check("xdm-subject", "ECO.2.1.3", "Objet XDM/1.0/DDM+ pour un envoi de documents", "envoi"),
    Check("reply-headers", "ECO.2.2.2", "In-Reply-To et References sur les réponses", "envoi"),
    Check("dsn-request", "ECO.2.3.1", "Accusé de réception (DSN, NOTIFY) demandé", "envoi"),
    Check(
        "mdn-request",
        "ECO.2.3.2",
        "Accusé de lecture demandé (Disposition-Notification-To)",
        "envoi",
    ),
    Check(
        "mdn-send",
        "ECO.3.1.6",
        "Accusé de lecture renvoyé (RFC 8098 multipart/report)",
        "réception",
    ),
    Check("reception-xdm", "ECO.2.1.2", "Message IHE_XDM reçu et relevé", "réception"),
    Check(
        "reception-non-ascii",
        "RFC 2047 / RFC 2231",
        "Message aux noms non ASCII relevé",
        "réception",
    ),
    Check("reception-large", "RFC 3501", "Message volumineux relevé", "réception"),
    Check("cert-expired", "ECO.1.1.5", "Certificat serveur expiré refusé", "transport"),
    Check(
        "cert-name",
        "RFC 6125 §6 / RFC 9525",
        "Certificat d'un autre nom d'hôte refusé",
        "transport",
    ),
    Check("cert-untrusted", "ECO.1.1.10", "Certificat d'une AC non reconnue refusé", "transport"),
)
BY_KEY: Mapping[str, Check] = {check.key: check for check in CHECKS}


class Facts:
    """The events of a campaign, grouped the ways the checks read them."""

    def __init__(
        self, events: Sequence[Event], own_bals: Mapping[str, str], now: float | None = None
    ) -> None:
        self.events = events
        # when the report is made (a delay still running is not yet a failure); by default
        # the last event, so a report on the same events always says the same
        self.now = now if now is not None else max((e.at for e in events), default=0.0)
        self.own_bals = own_bals  # idNat → that person's own BAL
        self.by_connection: dict[str, list[Event]] = defaultdict(list)
        for event in events:
            if event.connection:
                self.by_connection[event.connection].append(event)

    def of(self, interface: str, kind: str) -> list[Event]:
        return [e for e in self.events if e.interface == interface and e.kind == kind]

    def logins(self, interface: str, *, ok: bool | None = None) -> list[Event]:
        return [
            e for e in self.of(interface, "login") if ok is None or bool(e.data.get("ok")) is ok
        ]

    def sessions(self, interface: str) -> list[list[Event]]:
        """The connections of `interface` that logged in successfully."""
        return [
            events
            for events in self.by_connection.values()
            if events[0].interface == interface
            and any(e.kind == "login" and e.data.get("ok") for e in events)
        ]

    def messages(self) -> list[Event]:
        return self.of("smtp", "message")

    def commands(self, name: str | None = None) -> list[Event]:
        return [e for e in self.of("imap", "command") if name is None or e.data.get("name") == name]

    def delivered(self, kind: str) -> list[Event]:
        return [e for e in self.of("runner", "delivered") if e.data.get("kind") == kind]


Verdict = tuple[Status, str, list[str]]


def evaluate(
    events: Sequence[Event], own_bals: Mapping[str, str], now: float | None = None
) -> tuple[Result, ...]:
    facts = Facts(events, own_bals, now)
    results = []
    for check in CHECKS:
        status, detail, evidence = _RULES[check.key](facts)
        results.append(Result.of(check, status, detail, evidence))
    return tuple(results)


def _line(event: Event) -> str:
    return str(event.data.get("line") or event.kind)


def _passed(detail: str, evidence: Iterable[str] = ()) -> Verdict:
    return Status.PASSED, detail, list(evidence)


def _failed(detail: str, evidence: Iterable[str] = ()) -> Verdict:
    return Status.FAILED, detail, list(evidence)


def _unseen(detail: str) -> Verdict:
    return Status.NOT_OBSERVED, detail, []


# -- transport --------------------------------------------------------------------------


def _starttls(interface: str) -> Callable[[Facts], Verdict]:
    def rule(facts: Facts) -> Verdict:
        logins = facts.logins(interface)
        if not logins:
            return _unseen(f"Aucune authentification {interface.upper()} observée.")
        clear = [e for e in logins if not e.data.get("secure")]
        if clear:
            return _failed(
                "Authentification en clair, sans STARTTLS.",
                [_transcript(facts, e.connection) for e in clear[:3]],
            )
        return _passed(f"{len(logins)} authentification(s), toutes après STARTTLS.")

    return rule


def _transcript(facts: Facts, connection: str, limit: int = 6) -> str:
    lines = [_line(e) for e in facts.by_connection.get(connection, []) if e.kind == "command"]
    return " | ".join(lines[:limit]) or connection


def _tls_version(facts: Facts) -> Verdict:
    handshakes = [e for e in facts.events if e.kind == "tls"]
    if not handshakes:
        return _unseen("Aucune session TLS observée.")
    old = [e for e in handshakes if str(e.data.get("version")) not in ("TLSv1.2", "TLSv1.3")]
    versions = sorted({str(e.data.get("version")) for e in handshakes})
    if old:
        return _failed(
            "Version TLS trop ancienne.",
            [f"{e.interface}: {e.data.get('version')}" for e in old[:5]],
        )
    return _passed(f"Versions négociées : {', '.join(versions)}.")


def _sni(facts: Facts) -> Verdict:
    handshakes = [e for e in facts.events if e.kind == "tls"]
    if not handshakes:
        return _unseen("Aucune session TLS observée.")
    missing = [e for e in handshakes if not e.data.get("sni")]
    if missing:
        return _failed(
            "Poignée de main TLS sans SNI : nommez le serveur par son nom d'hôte, pas son IP.",
            [f"{e.interface}: pas de SNI" for e in missing[:5]],
        )
    names = sorted({str(e.data.get("sni")) for e in handshakes})
    return _passed(f"SNI : {', '.join(names)}.")


# -- authentication ---------------------------------------------------------------------


def _sasl_token(facts: Facts) -> Verdict:
    logins = facts.logins("imap") + facts.logins("smtp")
    if not logins:
        return _unseen("Aucune authentification observée.")
    other = [e for e in logins if str(e.data.get("mechanism")) not in TOKEN_MECHANISMS]
    if other:
        return _failed(
            "Mécanisme autre que XOAUTH2 / OAUTHBEARER.",
            [f"{e.interface}: {e.data.get('mechanism')}" for e in other[:5]],
        )
    mechanisms = sorted({f"{e.interface}: {e.data.get('mechanism')}" for e in logins})
    return _passed("Jeton PSC présenté en SASL.", mechanisms)


def _token_client(facts: Facts) -> Verdict:
    logins = facts.logins("imap", ok=True) + facts.logins("smtp", ok=True)
    clients = sorted({str(e.data.get("client_id")) for e in logins})
    if not clients:
        return _unseen("Aucune session ouverte.")
    if len(clients) > 1 or not clients[0]:
        return _failed("Jetons de plusieurs applications (client_id).", clients)
    return _passed(f"Jetons délivrés à {clients[0]}.")


def _token_expired(facts: Facts) -> Verdict:
    logins = facts.logins("imap") + facts.logins("smtp")
    expired = [
        e for e in logins if isinstance(e.data.get("exp"), int | float) and e.data["exp"] <= e.at
    ]
    if expired:
        return _failed(
            "Jeton expiré présenté au serveur.",
            [
                f"{e.interface}: jeton expiré depuis {int(e.at - e.data['exp'])} s"
                for e in expired[:5]
            ],
        )
    refreshes = [e for e in facts.of("psc", "token") if e.data.get("grant") == "refresh_token"]
    if refreshes:
        return _passed(f"{len(refreshes)} rafraîchissement(s), aucun jeton expiré présenté.")
    if not logins:
        return _unseen("Aucune authentification observée.")
    return _unseen("Aucun rafraîchissement observé : la campagne a été plus courte qu'un jeton.")


def _session_end(facts: Facts) -> Verdict:
    ends = facts.of("psc", "session_end")
    if not ends:
        return _unseen(
            "Session PSC non terminée pendant la campagne (bouton « Terminer la session »)."
        )
    end = ends[0]
    late: list[str] = []
    waiting: list[str] = []
    reused = [  # a token of the ended session, still presented once it had to be refreshed
        e
        for e in facts.logins("imap") + facts.logins("smtp")
        if e.at > end.at + SESSION_END_GRACE
        and e.data.get("idnat") == end.data.get("idnat")
        and isinstance(e.data.get("iat"), int | float)
        and e.data["iat"] < end.at
    ]
    for events in facts.sessions("imap") + facts.sessions("smtp"):
        opened = next(e for e in events if e.kind == "login" and e.data.get("ok"))
        if opened.at > end.at or opened.data.get("idnat") != end.data.get("idnat"):
            continue
        closed = next((e for e in events if e.kind == "close"), None)
        if closed is None and facts.now - end.at <= SESSION_END_GRACE:
            waiting.append(f"{events[0].interface} : session encore ouverte")
        elif closed is None or closed.at - end.at > SESSION_END_GRACE:
            late.append(f"{events[0].interface} : session ouverte à la fin de la session PSC")
    if reused:
        return _failed(
            "Jeton de la session PSC terminée encore présenté.",
            [f"{e.interface}: login" for e in reused[:5]],
        )
    if late:
        return _failed("Sessions restées ouvertes après la fin de la session PSC.", late)
    if waiting:
        return _unseen(
            "Sessions encore ouvertes : elles doivent être fermées au plus tard "
            f"{SESSION_END_GRACE:.0f} s après la fin de la session PSC."
        )
    return _passed("Sessions fermées après la fin de la session PSC.")


def _session_reopen(facts: Facts) -> Verdict:
    ends = facts.of("psc", "session_end")
    if not ends:
        return _unseen("Session PSC non terminée pendant la campagne.")
    end = ends[0]
    after = [e for e in facts.logins("imap") + facts.logins("smtp") if e.at > end.at]
    failures = [e for e in after if not e.data.get("ok")]
    if len(failures) > MAX_RETRIES_AFTER_END:
        return _failed(f"{len(failures)} tentatives refusées après la fin de la session PSC.")
    relogin = [
        e
        for e in facts.of("psc", "token")
        if e.at > end.at and e.data.get("grant") != "refresh_token"
    ]
    if not relogin:
        return _unseen("La personne ne s'est pas reconnectée à PSC après la fin de session.")
    reopened = [e for e in after if e.data.get("ok") and e.at >= relogin[0].at]
    if not reopened:
        return _failed("Sessions non rouvertes après la reconnexion PSC.")
    return _passed(
        "Sessions rouvertes après la reconnexion PSC.",
        [f"{e.interface}: login" for e in reopened[:3]],
    )


# -- IMAP -------------------------------------------------------------------------------


def _imap_id(facts: Facts) -> Verdict:
    ids = facts.commands("ID")
    if not facts.sessions("imap"):
        return _unseen("Aucune session IMAP.")
    if not ids:
        return _failed("Commande ID absente.")
    incomplete = [
        e
        for e in ids
        if not (e.data.get("fields", {}).get("name") and e.data.get("fields", {}).get("version"))
    ]
    if incomplete:
        return _failed("ID sans nom ou sans version.", [_line(e) for e in incomplete[:3]])
    return _passed("ID envoyé.", [_line(ids[0])])


def _imap_uid(facts: Facts) -> Verdict:
    numbered = [
        e
        for e in facts.commands()
        if e.data.get("name") in ("FETCH", "STORE", "COPY", "MOVE", "SEARCH")
        and not e.data.get("uid")
    ]
    used = [e for e in facts.commands() if e.data.get("uid")]
    if numbered:
        return _failed(
            "Commandes par numéro de séquence au lieu d'UID.", [_line(e) for e in numbered[:5]]
        )
    if not used:
        return _unseen("Aucune commande FETCH/STORE/SEARCH observée.")
    return _passed(f"{len(used)} commande(s) UID.", [_line(e) for e in used[:3]])


def _imap_idle(facts: Facts) -> Verdict:
    if facts.commands("IDLE"):
        return _passed("IDLE utilisé.", [_line(facts.commands("IDLE")[0])])
    polls = sorted(_polls(facts))
    if len(polls) < 3:
        return _unseen("Ni IDLE ni relève répétée observés.")
    interval = statistics.median(b - a for a, b in itertools.pairwise(polls))
    if interval < MIN_POLL_INTERVAL:
        return _failed(
            f"Relève toutes les {interval:.1f} s sans IDLE (minimum {MIN_POLL_INTERVAL:.0f} s)."
        )
    return _passed(f"Relève toutes les {interval:.0f} s.")


def _polls(facts: Facts) -> list[float]:
    """When the LPS looked for new mail: NOOP, STATUS, CHECK, and a SELECT/EXAMINE of a
    folder it had already opened (opening INBOX, Envoyés and Brouillons at startup is
    no polling; opening INBOX again, in a new connection or not, is)."""
    opened: set[str] = set()
    found = []
    for event in facts.commands():
        name = event.data.get("name")
        if name not in POLLING_COMMANDS:
            continue
        if name in ("SELECT", "EXAMINE"):
            mailbox = str(event.data.get("mailbox", ""))
            mailbox = "INBOX" if mailbox.upper() == "INBOX" else mailbox
            if mailbox not in opened:
                opened.add(mailbox)
                continue
        found.append(event.at)
    return found


def _imap_peek(facts: Facts) -> Verdict:
    fetches = [
        e for e in facts.commands("FETCH") if any(_reads_body(i) for i in e.data.get("items", []))
    ]
    if not fetches:
        return _unseen("Aucune lecture de contenu observée.")
    marking = [e for e in fetches if any(_marks_seen(i) for i in e.data.get("items", []))]
    if marking:
        return _failed(
            "Lecture sans BODY.PEEK : le message est marqué lu à la relève.",
            [_line(e) for e in marking[:5]],
        )
    return _passed("Lectures par BODY.PEEK.", [_line(fetches[0])])


HEADER_ITEMS = frozenset({"RFC822.SIZE", "RFC822.HEADER"})


def _reads_body(item: str) -> bool:
    """Whether a FETCH item reads the message's content (RFC822.SIZE and RFC822.HEADER,
    which an LPS asks to decide what to read, do not)."""
    return item.startswith(("BODY[", "BODY.PEEK[", "RFC822", "BINARY")) and (
        item not in HEADER_ITEMS
    )


def _marks_seen(item: str) -> bool:
    return item.startswith(BODY_READS) and item not in ("RFC822.HEADER", "RFC822.SIZE")


def _imap_updates(facts: Facts) -> Verdict:
    told = [
        e
        for e in facts.of("imap", "update")
        if e.data.get("update") == "EXISTS" and not _answers_select(facts, e)
    ]
    if not told:
        return _unseen("Aucun nouveau message annoncé pendant une session.")
    for update in told:
        later = [
            e
            for e in facts.by_connection.get(update.connection, [])
            if e.kind == "command" and e.at >= update.at and e.data.get("name") == "FETCH"
        ]
        if later:
            return _passed(
                "Nouveau message relevé après EXISTS.",
                [str(update.data.get("line")), _line(later[0])],
            )
    return _failed(
        "EXISTS annoncé, nouveau message jamais relevé dans la session.",
        [str(told[0].data.get("line"))],
    )


def _answers_select(facts: Facts, update: Event) -> bool:
    """An EXISTS written in answer to SELECT/EXAMINE: the folder's size, not news of a
    message (the last command before it on its connection opened the folder)."""
    last: Event | None = None
    for event in facts.by_connection.get(update.connection, []):
        if event is update:
            break
        if event.kind == "command":
            last = event
    return last is not None and last.data.get("name") in ("SELECT", "EXAMINE")


def _imap_logout(facts: Facts) -> Verdict:
    sessions = [s for s in facts.sessions("imap") if any(e.kind == "close" for e in s)]
    if not sessions:
        return _unseen("Aucune session IMAP terminée.")
    abrupt = [
        s
        for s in sessions
        if not any(e.kind == "command" and e.data.get("name") == "LOGOUT" for e in s)
        and not any(e.kind == "close" and e.data.get("by_server") for e in s)
    ]
    if abrupt:
        return _failed(
            f"{len(abrupt)} session(s) fermée(s) sans LOGOUT.",
            [_transcript(facts, s[0].connection) for s in abrupt[:3]],
        )
    return _passed(f"{len(sessions)} session(s) terminée(s) par LOGOUT.")


# -- delegation -------------------------------------------------------------------------


def _delegated(facts: Facts, interface: str) -> list[Event]:
    return [e for e in facts.logins(interface, ok=True) if e.data.get("via") == "delegation"]


def _delegation_open(facts: Facts) -> Verdict:
    opened = _delegated(facts, "imap")
    if opened:
        return _passed(
            "BAL déléguée ouverte.",
            [f"utilisateur SASL : {e.data.get('user')}" for e in opened[:3]],
        )
    refused = [
        e for e in facts.logins("imap", ok=False) if e.data.get("failure") == "authorization"
    ]
    if refused:
        return _failed(
            "Ouverture de BAL refusée.",
            [f"utilisateur SASL : {e.data.get('user')}" for e in refused[:3]],
        )
    return _unseen("Aucune BAL déléguée ouverte.")


def _delegation_from(facts: Facts) -> Verdict:
    delegated = {e.connection for e in _delegated(facts, "smtp")}
    sent = [e for e in facts.messages() if e.connection in delegated]
    if not sent:
        return _unseen("Aucun envoi depuis une BAL déléguée.")
    wrong = [e for e in sent if not e.data.get("from_is_bal")]
    if wrong:
        return _failed(
            "From: n'est pas la BAL déléguée.",
            [f"From: {e.data.get('from')} BAL {e.data.get('bal')}" for e in wrong[:3]],
        )
    return _passed("From: la BAL déléguée.", [f"From: {sent[0].data.get('from')}"])


# -- submission -------------------------------------------------------------------------


def _each_message(
    test: Callable[[Mapping[str, Any]], bool],
    failure: str,
    show: Callable[[Mapping[str, Any]], str],
    success: str,
) -> Callable[[Facts], Verdict]:
    def rule(facts: Facts) -> Verdict:
        messages = facts.messages()
        if not messages:
            return _unseen("Aucun message envoyé.")
        wrong = [e for e in messages if not test(e.data)]
        if wrong:
            return _failed(failure, [show(e.data) for e in wrong[:5]])
        return _passed(success.format(n=len(messages)), [show(messages[0].data)])

    return rule


def _subject(data: Mapping[str, Any]) -> str:
    return f"Subject: {data.get('subject')}"


def _rules(data: Mapping[str, Any], rules: Sequence[str]) -> list[str]:
    return [r for r in data.get("violations", []) if r in rules]


def _xdm_rule(rules: Sequence[str], name: str) -> Callable[[Facts], Verdict]:
    def rule(facts: Facts) -> Verdict:
        messages = [e for e in facts.messages() if e.data.get("xdm")]
        stray = [e for e in facts.messages() if not e.data.get("xdm") and _rules(e.data, rules)]
        if not messages and not stray:
            return _unseen("Aucun message avec IHE_XDM.ZIP envoyé.")
        wrong = [e for e in messages + stray if _rules(e.data, rules)]
        if wrong:
            return _failed(
                f"{name} : règle enfreinte.",
                [f"{', '.join(_rules(e.data, rules))} — {_subject(e.data)}" for e in wrong[:5]],
            )
        return _passed(
            f"{name} conforme sur {len(messages)} message(s).", [_subject(messages[0].data)]
        )

    return rule


def _xdm_subject(facts: Facts) -> Verdict:
    messages = [e for e in facts.messages() if e.data.get("xdm")]
    if not messages:
        return _unseen("Aucun message avec IHE_XDM.ZIP envoyé.")
    wrong = [e for e in messages if not e.data.get("xdm_subject_ok")]
    if wrong:
        return _failed("Objet sans le préfixe XDM/1.0/DDM+.", [_subject(e.data) for e in wrong[:5]])
    return _passed("Objet XDM/1.0/DDM+.", [_subject(messages[0].data)])


def _reply_headers(facts: Facts) -> Verdict:
    replies = [
        e
        for e in facts.messages()
        if e.data.get("in_reply_to")
        or e.data.get("references")
        or str(e.data.get("subject", "")).lower().startswith(("re:", "re :"))
    ]
    if not replies:
        return _unseen("Aucune réponse envoyée.")
    wrong = [
        e
        for e in replies
        if not e.data.get("in_reply_to")
        or not e.data.get("references")
        or e.data["references"][-1] != e.data["in_reply_to"][0]
    ]
    if wrong:
        return _failed(
            "Réponse sans In-Reply-To ou References cohérents.",
            [
                f"In-Reply-To: {e.data.get('in_reply_to')} References: {e.data.get('references')}"
                for e in wrong[:3]
            ],
        )
    return _passed(
        "In-Reply-To et References présents.", [f"In-Reply-To: {replies[0].data['in_reply_to'][0]}"]
    )


def _dsn_request(facts: Facts) -> Verdict:
    asked = [
        e
        for e in facts.messages()
        if any(
            "SUCCESS" in str(r.get("notify") or "").upper() for r in e.data.get("recipients", [])
        )
    ]
    if asked:
        return _passed(
            "NOTIFY=SUCCESS demandé.",
            [f"RCPT NOTIFY={r.get('notify')}" for r in asked[0].data["recipients"][:3]],
        )
    header = [e for e in facts.messages() if e.data.get("return_receipt_to")]
    if header:
        return _failed(
            "Return-Receipt-To (non standard) au lieu de NOTIFY (RFC 3461).",
            [_subject(header[0].data)],
        )
    return _unseen("Aucun accusé de réception demandé.")


def _mdn_request(facts: Facts) -> Verdict:
    asked = [e for e in facts.messages() if e.data.get("dnt")]
    if not asked:
        return _unseen("Aucun accusé de lecture demandé.")
    wrong = [e for e in asked if e.data["dnt"] != [e.data.get("bal")]]
    if wrong:
        return _failed(
            "Disposition-Notification-To autre que la BAL.",
            [f"Disposition-Notification-To: {e.data['dnt']}" for e in wrong[:3]],
        )
    return _passed(
        "Disposition-Notification-To : la BAL.",
        [f"Disposition-Notification-To: {asked[0].data['dnt'][0]}"],
    )


def _mdn_send(facts: Facts) -> Verdict:
    asked = facts.delivered("mdn-request")
    mdns = [e for e in facts.messages() if e.data.get("mdn")]
    if not mdns:
        if not asked:
            return _unseen("Aucun message demandant un accusé de lecture n'a été remis.")
        return _unseen("Aucun accusé de lecture renvoyé.")
    wanted = {str(e.data.get("message_id")) for e in asked}
    wrong = [e for e in mdns if not e.data["mdn"].get("well_formed")]
    if wrong:
        return _failed(
            "Accusé de lecture mal formé (multipart/report disposition-notification).",
            [_subject(e.data) for e in wrong[:3]],
        )
    matched = [e for e in mdns if e.data["mdn"].get("original_message_id") in wanted]
    if asked and not matched:
        return _failed(
            "Accusé de lecture sans Original-Message-ID du message reçu.",
            [str(e.data["mdn"].get("original_message_id")) for e in mdns[:3]],
        )
    return _passed(
        "Accusé de lecture renvoyé.",
        [
            f"Original-Message-ID: {mdns[0].data['mdn'].get('original_message_id')}",
            f"Disposition: {mdns[0].data['mdn'].get('disposition')}",
        ],
    )


def _reception(kind: str, label: str) -> Callable[[Facts], Verdict]:
    def rule(facts: Facts) -> Verdict:
        delivered = facts.delivered(kind)
        if not delivered:
            return _unseen(f"{label} : pas encore remis (à la première connexion IMAP).")
        for message in delivered:
            if _fetched(facts, message):
                return _passed(
                    f"{label} relevé.",
                    [f"UID {message.data.get('uid')} : {message.data.get('subject')}"],
                )
        return _unseen(f"{label} remis, pas encore relevé.")

    return rule


def _fetched(facts: Facts, message: Event) -> bool:
    uid = message.data.get("uid")
    if not isinstance(uid, int):
        return False
    for fetch in facts.commands("FETCH"):
        if fetch.at < message.at or not fetch.data.get("uid"):
            continue
        if not any(_reads_body(i) for i in fetch.data.get("items", [])):
            continue
        if _in_set(uid, str(fetch.data.get("sequence", ""))):
            return True
    return False


def _in_set(uid: int, sequence: str) -> bool:
    for item in sequence.split(","):
        low, _, high = item.partition(":")
        try:
            start = uid if low == "*" else int(low)
            end = start if not high else (10**12 if high == "*" else int(high))
        except ValueError:
            continue
        if min(start, end) <= uid <= max(start, end):
            return True
    return False


_RULES: Mapping[str, Callable[[Facts], Verdict]] = {
    "starttls-imap": _starttls("imap"),
    "starttls-smtp": _starttls("smtp"),
    "tls-version": _tls_version,
    "sni": _sni,
    "sasl-token": _sasl_token,
    "token-client": _token_client,
    "token-expired": _token_expired,
    "session-end": _session_end,
    "session-reopen": _session_reopen,
    "imap-id": _imap_id,
    "imap-uid": _imap_uid,
    "imap-idle": _imap_idle,
    "imap-peek": _imap_peek,
    "imap-updates": _imap_updates,
    "imap-logout": _imap_logout,
    "delegation-open": _delegation_open,
    "delegation-from": _delegation_from,
    "from-bal": _each_message(
        lambda d: bool(d.get("from_is_bal")),
        "From: autre que la BAL.",
        lambda d: f"From: {d.get('from')} BAL {d.get('bal')}",
        "From: la BAL sur {n} message(s).",
    ),
    "message-id": _each_message(
        lambda d: bool(d.get("message_id_ok")),
        "Message-ID absent ou mal formé.",
        lambda d: f"Message-ID: {d.get('message_id')}",
        "Message-ID sur {n} message(s).",
    ),
    "date": _each_message(
        lambda d: bool(d.get("date_ok")),
        "Date absente ou illisible.",
        _subject,
        "Date sur {n} message(s).",
    ),
    "header-encoding": _each_message(
        lambda d: not d.get("headers_8bit") or bool(d.get("smtputf8")),
        "En-têtes non ASCII non encodés (RFC 2047).",
        lambda d: f"champs : {', '.join(d.get('headers_8bit') or []) or '—'}",
        "En-têtes ASCII sur {n} message(s).",
    ),
    "x-mss-nil": _each_message(
        lambda d: bool(d.get("nil")),
        "X-MSS-NIL absent.",
        lambda d: f"X-MSS-NIL: {d.get('nil')}",
        "X-MSS-NIL sur {n} message(s).",
    ),
    "xdm-archive": _xdm_rule(XDM_RULES, "IHE_XDM.ZIP"),
    "x-mss-codecda": _xdm_rule(CODECDA_RULES, "X-MSS-CODECDA"),
    "x-mss-ins": _xdm_rule(INS_RULES, "X-MSS-INS"),
    "xdm-subject": _xdm_subject,
    "reply-headers": _reply_headers,
    "dsn-request": _dsn_request,
    "mdn-request": _mdn_request,
    "mdn-send": _mdn_send,
    "reception-xdm": _reception("xdm", "Message IHE_XDM"),
    "reception-non-ascii": _reception("non-ascii", "Message aux noms accentués"),
    "reception-large": _reception("large", "Message volumineux"),
    "cert-expired": lambda facts: scenario_verdict("expired", facts.by_connection),
    "cert-name": lambda facts: scenario_verdict("wrong-name", facts.by_connection),
    "cert-untrusted": lambda facts: scenario_verdict("untrusted-ca", facts.by_connection),
}
