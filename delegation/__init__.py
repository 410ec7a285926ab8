"""What you may open: mailboxes, delegations, directory entries and audit events."""

from delegation.db import create_engine, migrate
from delegation.errors import Conflict, DelegationError, Invalid, NotFound, NotHolder
from delegation.events import (
    ChangeBus,
    ChangeEvent,
    LocalBus,
    PostgresBus,
    Subscription,
    bus_for_url,
)
from delegation.models import RIGHTS
from delegation.seed import SeedDelegation, SeedPerson, seed
from delegation.service import (
    AuditEvent,
    Delegation,
    DelegationService,
    DirectoryEntry,
    Grant,
    Mailbox,
)

__all__ = [
    "RIGHTS",
    "AuditEvent",
    "ChangeBus",
    "ChangeEvent",
    "Conflict",
    "Delegation",
    "DelegationError",
    "DelegationService",
    "DirectoryEntry",
    "Grant",
    "Invalid",
    "LocalBus",
    "Mailbox",
    "NotFound",
    "NotHolder",
    "PostgresBus",
    "SeedDelegation",
    "SeedPerson",
    "Subscription",
    "bus_for_url",
    "create_engine",
    "migrate",
    "seed",
]
