"""`isinstance` against runtime-checkable protocols on hot paths: the check walks the
protocol's members one by one (tens of microseconds), so a class that passed once is
remembered and passes at once after (a greeting and each SMTP command asked it)."""

from __future__ import annotations

_CONFORMING: set[tuple[type, type]] = set()


def conforms(value: object, protocol: type) -> bool:
    """`isinstance(value, protocol)` for a runtime-checkable `protocol`, made once per class
    that passes it: for classes whose every instance has the protocol's members (methods,
    properties, fields set by `__init__`), never one whose instances differ."""
    key = (type(value), protocol)
    if key in _CONFORMING:
        return True
    if isinstance(value, protocol):
        _CONFORMING.add(key)
        return True
    return False
