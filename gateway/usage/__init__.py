"""Who still uses what: every access to a BAL, by software and interface, kept as daily
counts and first/last-seen rows, so the operator knows which vendors to chase before the
historic platform stops.

A front that lets someone into a BAL tells the gateway's `UsageRecorder` (`Gateway.usage`)::

    usage.session(grant, interface_for("imap", by_card), software, version)   # one per login
    usage.message(grant, interface_for("smtp", by_card), nil)                 # one per message
    usage.session(grant, "historic-ws", numhomologation or user_agent)        # historic front
    usage.nonconformity(interface, nil or ehlo, "", rule, "reported")         # gateway.mss.policy

`record` never waits and never raises: counts are merged in memory and written in the
background (`recorder`), read back by `report` (the CLI, `/admin/usage`, the page).
"""

from gateway.usage.access import INTERFACES, Access, Interface, Kind, clean_label, interface_for
from gateway.usage.recorder import UsageRecorder

__all__ = [
    "INTERFACES",
    "Access",
    "Interface",
    "Kind",
    "UsageRecorder",
    "clean_label",
    "interface_for",
]
