"""What an import would change: the file's records against the registry as it stands.

Pure: the registry's state, the configured backends' names and the clock come in, a
`Plan` comes out (what is added, changed, would be removed, warned about or refused, and
the `Load` that writes it). Decisions worth knowing:

* Nothing is removed unless asked (`prune`), and never from a file with refused lines:
  a BAL on a line that could not be read would look absent and be removed.
* A BAL whose line does not say its backend keeps the recorded one (a migration's move
  is not undone by the next import); an unknown backend name is warned about and treated
  as not said, so a new BAL is placed by `[routing]`.
* A BAL whose line lists its delegations (the ``delegations`` column, even empty) gets
  exactly those; without the column, its delegations are left as they are. A delegation
  kept keeps its expiry; `expires_in_days` applies to one the import creates, or renews:
  a listed delegation that has expired (still open, past its expiry) is granted again
  as the file says, since the file says it should be in force.
* A person is removed only when nothing that stays names her (holder or delegate).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass, field

from delegation.loading import (
    DelegationWrite,
    Load,
    MailboxWrite,
    OpenDelegation,
    PersonWrite,
    RegistryState,
)
from delegation.parsing import rights_text
from gateway.directory_import.records import Bal, DelegationSpec, Parsed, Person, Problem


@dataclass(frozen=True, slots=True)
class Change:
    kind: str  # person, bal, delegation
    key: str  # idNat, address, "address → idNat"
    detail: str = ""

    def as_json(self) -> dict[str, str]:
        return {"kind": self.kind, "key": self.key, "detail": self.detail}


@dataclass
class Plan:
    added: list[Change] = field(default_factory=list)
    changed: list[Change] = field(default_factory=list)
    removed: list[Change] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    errors: list[Problem] = field(default_factory=list)
    load: Load = field(default_factory=Load)
    prune_applied: bool = False

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or (self.removed and self.prune_applied))


def _person_detail(old: PersonWrite, new: Person) -> str:
    parts = []
    for name, before, after in (
        ("given name", old.given_name, new.given_name),
        ("family name", old.family_name, new.family_name),
        ("profession", old.profession, new.profession),
    ):
        if before != after:
            parts.append(f"{name} {before or '—'} → {after or '—'}")
    return ", ".join(parts)


def _bal_detail(old: MailboxWrite, new: MailboxWrite) -> str:
    parts = []
    for name, before, after in (
        ("type", old.type, new.type),
        ("holder", old.holder_idnat, new.holder_idnat),
        ("organisation", old.organisation, new.organisation),
        ("backend", old.backend, new.backend if new.backend is not None else old.backend),
    ):
        if before != after:
            parts.append(f"{name} {before or '—'} → {after or '—'}")
    return ", ".join(parts)


def plan(
    parsed: Parsed,
    state: RegistryState,
    backends: Collection[str],
    now: dt.datetime,
    *,
    prune: bool = False,
) -> Plan:
    parsed, refusals = _without_refused(parsed, set(state.people))
    result = Plan(errors=[*parsed.errors, *refusals])
    people: list[PersonWrite] = []
    in_file = {p.idnat for p in parsed.people}
    for person in parsed.people:
        old = state.people.get(person.idnat)
        new = PersonWrite(person.idnat, person.given_name, person.family_name, person.profession)
        if old is None:
            name = f"{new.given_name} {new.family_name}".strip()
            result.added.append(Change("person", person.idnat, name))
            people.append(new)
        elif old != new:
            result.changed.append(Change("person", person.idnat, _person_detail(old, person)))
            people.append(new)

    boxes: list[MailboxWrite] = []
    delegations: list[DelegationWrite] = []
    revoke: list[tuple[str, int]] = []
    moved: list[str] = []
    would_revoke: list[Change] = []
    kept_delegates: set[str] = set()
    for box in parsed.bals:
        backend = box.backend
        if backend is not None and backend not in backends:
            result.warnings.append(
                Problem(box.at, f"unknown backend {backend!r}: ignored, [routing] places the BAL")
            )
            backend = None
        wanted = MailboxWrite(box.address, box.type, box.holder_idnat, box.organisation, backend)
        recorded = state.mailboxes.get(box.address)
        if recorded is None:
            where = f"on {backend}" if backend else "placed by routing"
            result.added.append(Change("bal", box.address, f"{box.type} {where}"))
            boxes.append(wanted)
        else:
            detail = _bal_detail(recorded, wanted)
            if detail:
                result.changed.append(Change("bal", box.address, detail))
                boxes.append(wanted)
                if recorded.holder_idnat != wanted.holder_idnat or (
                    backend is not None and backend != recorded.backend
                ):
                    moved.append(box.address)
        current = state.delegations.get(box.address, {})
        if box.delegations is None:
            kept_delegates |= set(current)
            continue
        listed = {spec.delegate_idnat for spec in box.delegations}
        for spec in box.delegations:
            kept_delegates.add(spec.delegate_idnat)
            key = f"{box.address} → {spec.delegate_idnat}"
            had: OpenDelegation | None = current.get(spec.delegate_idnat)
            if had is None:
                result.added.append(Change("delegation", key, rights_text(spec.rights)))
                delegations.append(
                    DelegationWrite(
                        box.address, spec.delegate_idnat, spec.rights, _expiry(spec, now)
                    )
                )
            elif had.expires_at is not None and had.expires_at <= now:
                detail = f"expired {had.expires_at:%Y-%m-%d}, renewed: {rights_text(spec.rights)}"
                result.changed.append(Change("delegation", key, detail))
                delegations.append(
                    DelegationWrite(
                        box.address, spec.delegate_idnat, spec.rights, _expiry(spec, now)
                    )
                )
            elif had.rights != spec.rights:
                detail = f"{rights_text(had.rights)} → {rights_text(spec.rights)}"
                result.changed.append(Change("delegation", key, detail))
                delegations.append(
                    DelegationWrite(box.address, spec.delegate_idnat, spec.rights, had.expires_at)
                )
        for delegate, had in current.items():
            if delegate not in listed:
                change = Change(
                    "delegation", f"{box.address} → {delegate}", rights_text(had.rights)
                )
                would_revoke.append(change)
                revoke.append((box.address, had.id))

    in_file_boxes = {b.address for b in parsed.bals}
    gone_boxes = sorted(set(state.mailboxes) - in_file_boxes)
    holders = {
        b.holder_idnat for a, b in state.mailboxes.items() if a not in gone_boxes and b.holder_idnat
    } | {b.holder_idnat for b in boxes if b.holder_idnat}
    gone_people = sorted(set(state.people) - in_file - holders - kept_delegates)
    result.removed = [
        *(Change("bal", a, state.mailboxes[a].type) for a in gone_boxes),
        *would_revoke,
        *(
            Change("person", i, f"{state.people[i].given_name} {state.people[i].family_name}")
            for i in gone_people
        ),
    ]
    result.prune_applied = prune and not result.errors
    result.load = Load(
        people=tuple(people),
        mailboxes=tuple(boxes),
        delegations=tuple(delegations),
        revoke=tuple(revoke) if result.prune_applied else (),
        remove_mailboxes=tuple(gone_boxes) if result.prune_applied else (),
        remove_people=tuple(gone_people) if result.prune_applied else (),
        moved=tuple(moved),
    )
    return result


def _expiry(spec: DelegationSpec, now: dt.datetime) -> dt.datetime | None:
    if spec.expires_in_days is None:
        return None
    return now + dt.timedelta(days=spec.expires_in_days)


def _without_refused(parsed: Parsed, registered: set[str]) -> tuple[Parsed, list[Problem]]:
    """The file without the BAL naming someone unknown, nor anything else of their lines
    (a person who was only on such lines goes too, which may refuse another BAL: until
    none is)."""
    refusals: list[Problem] = []
    while True:
        known = {p.idnat for p in parsed.people} | registered
        found = [p for p in (_refusal(box, known) for box in parsed.bals) if p is not None]
        if not found:
            return parsed, refusals
        refusals += found
        lines = {p.at for p in found}
        places = {
            person.idnat: kept
            for person in parsed.people
            if (
                kept := tuple(
                    a for a in parsed.places.get(person.idnat, (person.at,)) if a not in lines
                )
            )
        }
        parsed = Parsed(
            tuple(p for p in parsed.people if p.idnat in places),
            tuple(b for b in parsed.bals if b.at not in lines),
            parsed.errors,
            places,
        )


def _refusal(box: Bal, known: set[str]) -> Problem | None:
    """Why a BAL cannot be loaded: its holder or a delegate is in neither the file nor
    the registry."""
    if box.holder_idnat is not None and box.holder_idnat not in known:
        return Problem(box.at, f"holder {box.holder_idnat} is in neither the file nor the registry")
    for spec in box.delegations or ():
        if spec.delegate_idnat not in known:
            return Problem(
                box.at, f"delegate {spec.delegate_idnat} is in neither the file nor the registry"
            )
    return None
