"""A bounded cache of what never changes about a stored message: ENVELOPE, BODYSTRUCTURE
and BODY, already encoded. A message's bytes are immutable under its (folder, UIDVALIDITY,
UID), so the cache needs no invalidation; Dovecot keeps the same in its cache file.
"""

from __future__ import annotations

from collections import OrderedDict

Key = tuple[str, str, int, int, str]  # (BAL, folder, UIDVALIDITY, UID, item)
CACHEABLE = ("ENVELOPE", "BODYSTRUCTURE", "BODY")


class StructureCache:
    def __init__(self, max_entries: int = 50_000) -> None:
        self._entries: OrderedDict[Key, bytes] = OrderedDict()
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0

    def get(self, key: Key) -> bytes | None:
        value = self._entries.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return value

    def put(self, key: Key, value: bytes) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
