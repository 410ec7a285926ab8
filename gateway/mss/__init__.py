"""MSSanté message rules (Référentiel #2, ECO.2.x): X-MSS-* headers and IHE_XDM.ZIP content.

`xdm` reads an IHE_XDM.ZIP attachment defensively (it comes from the network, so zip bombs
and hostile XML are expected); `rules` checks a submitted message against the X-MSS-*
header table and edits the raw octets without re-serialising them; `historic_ws` is the
historic web services' contract, shared by the mock's historic platform and the gateway.
"""

from gateway.mss.rules import (
    RuleResult,
    Violation,
    add_headers,
    add_sender,
    check_message,
    remove_fields,
)
from gateway.mss.xdm import CdaDocument, PatientIns, XdmContent, XdmError, XdmLimits, read_xdm

__all__ = [
    "CdaDocument",
    "PatientIns",
    "RuleResult",
    "Violation",
    "XdmContent",
    "XdmError",
    "XdmLimits",
    "add_headers",
    "add_sender",
    "check_message",
    "read_xdm",
    "remove_fields",
]
