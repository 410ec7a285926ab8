"""How far ahead a delegation may expire, checked before any time-zone arithmetic: year
9999 with a negative offset, or year 1 with a positive one, overflows when converted to
UTC. Every way of granting (the API, the page, an import) goes through it."""

from __future__ import annotations

import datetime as dt

from delegation.errors import Invalid

MAX_AHEAD = dt.timedelta(days=3650)


def check_expiry(expires_at: dt.datetime | None, now: dt.datetime) -> None:
    """Refuse (`Invalid`, `bad-expiry`) an expiry without a time zone, not in the future, or more
    than 10 years (3650 days) ahead: a delegation meant to outlast that is granted without an
    expiry and revoked when it ends. Aware datetimes subtract without conversion, so nothing
    here overflows."""
    if expires_at is None:
        return
    if expires_at.tzinfo is None or expires_at.utcoffset() is None:
        raise Invalid("the expiry needs a time zone", reason="bad-expiry")
    ahead = expires_at - now
    if ahead <= dt.timedelta(0):
        raise Invalid("the expiry is not in the future", reason="bad-expiry")
    if ahead > MAX_AHEAD:
        raise Invalid(
            f"the expiry is at most 10 years ({MAX_AHEAD.days} days) ahead", reason="bad-expiry"
        )
