"""`GatewayHistoricOperations`: the historic web services' operations served by the gateway
over whatever platform holds the BAL (issue 13 §1), behind `historic_ws.HistoricOperations`.

For each call: the input is read as the mock reads it (`historic_inputs`), the caller's
right on the BAL is decided by the delegation registry (holder: all; delegate: the
delegated rights, mapped as the mock maps them: read for listing, search, sync, download
and READ/UNREAD, write for folders, other flags, moves and drafts, send for sendMessage;
anything else is code 24 with the mock's messages), the BAL is routed to its backend,
then the operation runs on the modern implementation (`modern.ModernBal` over IMAP/SMTP)
or is passed through to the historic platform as the trusted gateway, its answer and its
refusals returned as they are. Every call leaves one audit event (who, BAL, delegation,
software = NUMHOMOLOGATION, result) and one `on_access` call for the usage counters.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from delegation.audit import AuditAction, AuditRecord
from delegation.directory import MIN_QUERY
from delegation.service import Decision, DelegationService
from gateway.audit import AuditSink
from gateway.backends.base import Backend
from gateway.backends.errors import BackendError, BackendNotFound
from gateway.backends.legacy_ws.client import LegacyError, LegacyWsClient, LegacyWsError
from gateway.backends.routing import NoRoute, Route, Router
from gateway.bal_migration.gate import BalGate, Held, Moved
from gateway.decisions import DecisionCache
from gateway.legacy_front.ids import HistoricIds
from gateway.legacy_front.modern import ModernBal, Settings
from gateway.legacy_front.sessions import SessionPool
from gateway.mss import historic_inputs as inputs
from gateway.mss.historic_shapes import recipient
from gateway.mss.historic_ws import (
    EMAIL_INVALID,
    FOLDER_MISSING,
    INVALID_FORMAT,
    MAX_IDNAT,
    MAX_RECIPIENT_SEARCH,
    NO_ADDRESS,
    Caller,
    HistoricError,
)
from gateway.mss.policy import MessagePolicy
from gateway.runtime.logs import identified
from gateway.settings import BackendSettings
from psc_auth import Identity
from psc_auth.identity import AuthMeans
from psc_auth.idnat import IdNat

log = logging.getLogger(__name__)

TECHNICAL_ERROR = 1
MAX_RECIPIENT_RESULTS = 50
INTERFACE = "historic"

AccessHook = Callable[
    [str, str, Caller, str | None, str | None, bool, bool], Awaitable[None] | None
]
"""on_access(service, operation, caller, bal, backend_name, delegated, ok)."""


@runtime_checkable
class HistoricPassThrough(Protocol):
    """A backend that is the historic platform itself: calls go through as they are."""

    def historic_client(self) -> LegacyWsClient: ...


# (service, operation) → (right, audit action); None right: no BAL (Annuaire)
_RULES: dict[tuple[str, str], tuple[str, AuditAction]] = {
    ("Folder", "listFolders"): ("read", AuditAction.READ),
    ("Folder", "createFolder"): ("write", AuditAction.FOLDER_CREATE),
    ("Folder", "renameFolder"): ("write", AuditAction.FOLDER_RENAME),
    ("Folder", "moveFolder"): ("write", AuditAction.FOLDER_RENAME),
    ("Folder", "deleteFolder"): ("write", AuditAction.FOLDER_DELETE),
    ("Folder", "emptyFolder"): ("write", AuditAction.EXPUNGE),
    ("Folder", "trashFolder"): ("write", AuditAction.FOLDER_RENAME),
    ("Item", "searchMessages"): ("read", AuditAction.READ),
    ("Item", "syncMessages"): ("read", AuditAction.READ),
    ("Item", "sendMessage"): ("send", AuditAction.SEND),
    ("Item", "draftMessage"): ("write", AuditAction.APPEND),
    ("Item", "updateMessages"): ("write", AuditAction.STORE),
    ("Item", "moveMessages"): ("write", AuditAction.MOVE),
    ("Attachment", "downloadAttachment"): ("read", AuditAction.READ),
    ("Annuaire", "searchRecipient"): ("read", AuditAction.READ),
    ("Annuaire", "listEmails"): ("read", AuditAction.READ),
}


@dataclass(frozen=True)
class _Access:
    """A decided access: the BAL, through which delegation, to which backend."""

    bal: str
    decision: Decision
    route: Route

    @property
    def delegated(self) -> bool:
        return self.decision.grant is not None and self.decision.grant.via == "delegation"


def person(idnat: str) -> Identity:
    """An `Identity` for a registry decision on an idNat proven elsewhere (a CPS card, an
    OTP session): the registry reads nothing but the idNat."""
    return Identity(
        idnat=IdNat.parse(idnat),
        subject=idnat,
        given_name="",
        family_name="",
        professions=(),
        auth_means=AuthMeans.UNKNOWN,
        expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
        token_id="",
        client_id="historic-ws",
        claims={},
    )


class GatewayHistoricOperations:
    """`HistoricOperations` of the gateway: see the module's docstring."""

    def __init__(
        self,
        registry: DelegationService,
        router: Router,
        ids: HistoricIds,
        *,
        backends: Mapping[str, BackendSettings],
        decisions: DecisionCache | None = None,
        audit: AuditSink | None = None,
        on_access: AccessHook | None = None,
        max_message_size: int = 20 * 1024 * 1024,
        pool: SessionPool | None = None,
        gate: BalGate | None = None,
        mss: MessagePolicy | None = None,
    ) -> None:
        self.registry = registry
        self.gate = gate  # a BAL being moved: its calls wait, then go where it went
        self.router = router
        self.ids = ids
        self.backends = dict(backends)
        self.decisions = decisions
        self.audit = audit
        self.on_access = on_access
        self.max_message_size = max_message_size
        self.pool = pool or SessionPool()
        self.mss = mss or MessagePolicy()  # `[mss] policy` for sendMessage on a modern BAL

    async def aclose(self) -> None:
        await self.pool.aclose()

    async def call(
        self, service: str, operation: str, caller: Caller, payload: dict[str, Any]
    ) -> dict[str, Any]:
        access: _Access | None = None
        bal: str | None = None
        result = "ok"
        rule = _RULES.get((service, operation))
        try:
            if rule is None:
                raise HistoricError(INVALID_FORMAT, f"opération inconnue: {service}/{operation}")
            if not isinstance(payload, dict):
                raise HistoricError(INVALID_FORMAT, "entrée: objet attendu")
            if caller.idnat is not None and len(caller.idnat) > MAX_IDNAT:
                raise HistoricError(INVALID_FORMAT, "idNat trop long")
            if not caller.idnat:
                raise HistoricError(NO_ADDRESS, "aucun utilisateur authentifié")
            if service == "Annuaire":
                if operation == "listEmails":
                    return await self._list_emails(caller.idnat)
                if not inputs.missing(payload.get("email")):
                    bal = inputs.bal_of(payload)
                    access = await self._authorise(caller.idnat, bal, "read")
                return await self._search_recipient(payload)
            right = rule[0]
            if (service, operation) == ("Item", "updateMessages"):
                update = inputs.update_operation(payload)
                right = "read" if update in ("READ", "UNREAD") else "write"
            bal = inputs.bal_of(payload)
            identified(caller.idnat)
            changes = right != "read" or (service, operation) == ("Item", "updateMessages")
            async with self._held(bal, changes):
                access = await self._authorise(caller.idnat, bal, right)
                identified(caller.idnat, access.bal)
                if operation in ("sendMessage", "draftMessage") and inputs.forwards_stored_parts(
                    payload
                ):
                    await self._authorise(caller.idnat, bal, "read")
                backend = access.route.backend
                if isinstance(backend, HistoricPassThrough):
                    return await self._pass_through(backend, service, operation, payload)
                return await self._modern(access, service, operation, caller, payload)
        except Held as held:
            result = f"TECHNIQUE {TECHNICAL_ERROR}"
            raise HistoricError(
                TECHNICAL_ERROR,
                f"BAL en cours de déplacement, réessayez dans quelques secondes ({held})",
                "TECHNIQUE",
            ) from None
        except HistoricError as error:
            result = f"{error.kind} {error.code}"
            raise
        except Exception as exc:
            log.exception("legacy_front.failed", extra={"operation": f"{service}/{operation}"})
            result = f"TECHNIQUE {TECHNICAL_ERROR}"
            raise HistoricError(TECHNICAL_ERROR, "erreur technique", "TECHNIQUE") from exc
        finally:
            await self._record(service, operation, caller, bal, access, rule, result)

    @contextlib.asynccontextmanager
    async def _held(self, bal: str, changes: bool) -> AsyncIterator[None]:
        """A change to a BAL being moved waits for the move (`Held` past a few seconds),
        then goes where the BAL went; it is counted while under way, so that the move's
        last copy comes after it. A read goes on: both sides hold the same messages."""
        if self.gate is None or not changes:
            yield
            return
        with contextlib.suppress(Moved):  # not routed yet: it goes where the BAL went
            await self.gate.passage(bal)
        self.gate.begin(bal)
        try:
            yield
        finally:
            self.gate.done(bal)

    # -- who may do what -------------------------------------------------------------------

    async def _decide(self, idnat: str, bal: str) -> Decision:
        try:
            identity = person(idnat)
        except ValueError:
            return Decision(None, "unknown-person", None)
        if self.decisions is not None:
            return await self.decisions.decide(identity, bal)
        return await self.registry.decide(identity, bal)

    async def _authorise(self, idnat: str, bal: str, right: str) -> _Access:
        decision = await self._decide(idnat, bal)
        grant = decision.grant
        if grant is None:
            raise HistoricError(EMAIL_INVALID, f"{bal}: BAL non accessible à cet utilisateur")
        if not grant.allows(right):
            raise HistoricError(
                EMAIL_INVALID, f"{bal}: droit « {right} » non délégué à cet utilisateur"
            )
        try:
            route = self.router.route(grant.mailbox, grant.backend)
        except NoRoute as exc:
            raise HistoricError(TECHNICAL_ERROR, "BAL sans plateforme", "TECHNIQUE") from exc
        return _Access(grant.mailbox, decision, route)

    async def _list_emails(self, idnat: str) -> dict[str, Any]:
        try:
            grants = await self.registry.accessible(person(idnat))
        except ValueError:
            grants = []
        emails = [g.mailbox for g in grants]
        if not emails:
            raise HistoricError(NO_ADDRESS, "l'utilisateur n'a aucune adresse de messagerie")
        return {"emails": emails}

    async def _search_recipient(self, payload: dict[str, Any]) -> dict[str, Any]:
        search = inputs.need_text(payload, "searchString", limit=MAX_RECIPIENT_SEARCH).strip()
        if len(search) < MIN_QUERY:
            return {"recipients": []}
        entries = await self.registry.directory_search(search, MAX_RECIPIENT_RESULTS)
        return {
            "recipients": [
                recipient(
                    e.given_name,
                    e.family_name,
                    list(e.addresses),
                    idnat=e.idnat,
                    profession=e.profession,
                )
                for e in entries
            ][:MAX_RECIPIENT_RESULTS]
        }

    async def _delegate(self, idnat: str, bal: str) -> tuple[str, str]:
        """(name, address) naming a delegate in Sender:, as the SMTP front does: their own
        BAL if they hold one, else the BAL sent from (Sender must be a real mailbox)."""
        try:
            grants = await self.registry.accessible(person(idnat))
        except ValueError:
            grants = []
        own = [g.mailbox for g in grants if g.via == "holder"]
        entry = await self.registry.directory_entry(idnat)
        return (entry.display_name if entry is not None else "", own[0] if own else bal)

    # -- where it runs ---------------------------------------------------------------------

    async def _pass_through(
        self, backend: HistoricPassThrough, service: str, operation: str, payload: dict[str, Any]
    ) -> dict[str, Any]:
        try:
            return await backend.historic_client().call(service, operation, payload)
        except LegacyError as refusal:
            raise HistoricError(refusal.code, refusal.message, refusal.kind) from None
        except LegacyWsError as failure:
            log.warning("legacy_front.historic_unavailable", extra={"reason": str(failure)[:200]})
            raise HistoricError(
                TECHNICAL_ERROR, "plateforme historique indisponible", "TECHNIQUE"
            ) from None

    async def _modern(
        self,
        access: _Access,
        service: str,
        operation: str,
        caller: Caller,
        payload: dict[str, Any],
    ) -> dict[str, Any]:
        route, bal = access.route, access.bal
        backend: Backend = route.backend
        configured = self.backends.get(route.name)
        settings = Settings(
            route.name,
            bool(configured and configured.keeps_sent_copy),
            self.max_message_size,
            bal.rpartition("@")[2],
            self.mss,
        )
        grant = access.decision.grant
        holder = grant.holder_name if grant is not None else ""
        try:
            async with self.pool.lease(route.name, bal, lambda: backend.tools(bal)) as imap:
                mailbox = ModernBal(
                    bal,
                    imap,
                    self.ids.of(route.name, bal),
                    settings,
                    display_name=holder,
                    submission=lambda: backend.submission(
                        bal, None, max_size=self.max_message_size
                    ),
                )
                delegate = None
                if operation == "sendMessage" and access.delegated:
                    delegate = await self._delegate(caller.idnat or "", access.bal)
                return await _run(mailbox, operation, caller, payload, delegate)
        except BackendNotFound as missing:
            raise HistoricError(FOLDER_MISSING, "dossier introuvable") from missing
        except BackendError as failure:
            log.warning(
                "legacy_front.backend_failed",
                extra={"backend": route.name, "reason": str(failure)[:200]},
            )
            raise HistoricError(TECHNICAL_ERROR, "plateforme indisponible", "TECHNIQUE") from None

    # -- the record of it ------------------------------------------------------------------

    async def _record(
        self,
        service: str,
        operation: str,
        caller: Caller,
        bal: str | None,
        access: _Access | None,
        rule: tuple[str, AuditAction] | None,
        result: str,
    ) -> None:
        delegated = access.delegated if access is not None else False
        backend = access.route.name if access is not None else None
        ok = result == "ok"
        if self.audit is not None and caller.idnat and len(caller.idnat) <= MAX_IDNAT:
            action = rule[1] if rule is not None else AuditAction.READ
            via = "delegation" if delegated else "holder" if access is not None else "-"
            await self.audit.submit(
                AuditRecord(
                    caller.idnat,
                    bal or "",
                    action,
                    INTERFACE,
                    result="ok" if ok else f"refused:{result}",
                    delegation_id=access.decision.delegation_id if access is not None else None,
                    software=caller.software,
                    detail=f"{service}/{operation} via={via}"[:200],
                )
            )
        if self.on_access is not None:
            try:
                outcome = self.on_access(service, operation, caller, bal, backend, delegated, ok)
                if outcome is not None:
                    await outcome
            except Exception:
                log.exception("legacy_front.on_access_failed")


async def _run(
    mailbox: ModernBal,
    operation: str,
    caller: Caller,
    payload: dict[str, Any],
    delegate: tuple[str, str] | None,
) -> dict[str, Any]:
    """One operation on a modern BAL (its input read as the mock reads it)."""
    if operation == "listFolders":
        return await mailbox.list_folders(inputs.integer(payload, "folderId"))
    if operation == "createFolder":
        name = inputs.need_text(payload, "name", limit=inputs.MAX_FOLDER_NAME_INPUT)
        parent = inputs.integer(payload, "parentId")
        return await mailbox.create_folder(1 if parent is None else parent, name)
    if operation == "renameFolder":
        folder_id = inputs.need_integer(payload, "folderId")
        name = inputs.need_text(payload, "name", limit=inputs.MAX_FOLDER_NAME_INPUT)
        folder = await mailbox.folder(folder_id)
        await mailbox.relocate_folder(folder_id, folder.parent_id, name)
        return {}
    if operation == "moveFolder":
        folder_id = inputs.need_integer(payload, "folderId")
        alias = inputs.missing(payload.get("parentId")) and not inputs.missing(
            payload.get("destinationFolderId")
        )
        destination = inputs.need_integer(payload, "destinationFolderId" if alias else "parentId")
        await mailbox.relocate_folder(folder_id, destination, None)
        return {}
    if operation == "trashFolder":
        await mailbox.relocate_folder(inputs.need_integer(payload, "folderId"), 3, None)
        return {}
    if operation == "deleteFolder":
        await mailbox.delete_folder(inputs.need_integer(payload, "folderId"))
        return {}
    if operation == "emptyFolder":
        await mailbox.empty_folder(inputs.need_integer(payload, "folderId"))
        return {}
    if operation == "searchMessages":
        return await mailbox.search(payload)
    if operation == "syncMessages":
        token = inputs.sync_token(payload)
        return await mailbox.sync(token, bool(inputs.boolean(payload, "html")))
    if operation == "downloadAttachment":
        message_id = inputs.need_text(payload, "messageId", limit=inputs.MAX_ID)
        part = inputs.need_text(payload, "part", limit=inputs.MAX_ID)
        return await mailbox.download(message_id, part)
    if operation == "updateMessages":
        update = inputs.update_operation(payload)
        await mailbox.update(update, inputs.message_ids(payload))
        return {}
    if operation == "moveMessages":
        ids = inputs.message_ids(payload)
        destination = inputs.need_integer(payload, "destinationFolderId")
        await mailbox.move(ids, destination)
        return {}
    if operation == "draftMessage":
        return await mailbox.draft(payload)
    if operation == "sendMessage":
        return await mailbox.send(
            payload,
            software=caller.software,
            delegate=delegate,
            user_agent=caller.user_agent,
            actor=caller.idnat or "",
        )
    raise HistoricError(INVALID_FORMAT, f"opération inconnue: {operation}")


__all__ = ["AccessHook", "GatewayHistoricOperations", "HistoricPassThrough", "person"]
