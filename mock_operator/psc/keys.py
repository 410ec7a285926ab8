"""The mock PSC's signing keys: RSA, named by their RFC 7638 thumbprint, rotated on schedule.

After a rotation the previous key stays in the JWKS for `overlap` seconds, so tokens it
signed keep verifying while resource servers refresh their key cache.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import RSAKey

from gateway.runtime.files import write_private

KEY_BITS = 2048


@dataclass
class _KeyRecord:
    kid: str
    created_at: float
    retired_at: float | None = None


class KeyRing:
    """Signing keys persisted under `directory` (private keys in PEM, mode 0600)."""

    def __init__(
        self,
        directory: Path,
        *,
        rotation_period: float,
        overlap: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._dir = directory
        self._rotation_period = rotation_period
        self._overlap = overlap
        self._clock = clock
        self._records: list[_KeyRecord] = []
        self._keys: dict[str, RSAKey] = {}
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._load()
        if not self._records:
            self.rotate()
        self.maybe_rotate()

    @property
    def _index(self) -> Path:
        return self._dir / "keys.json"

    def _load(self) -> None:
        if not self._index.exists():
            return
        for raw in json.loads(self._index.read_text()):
            record = _KeyRecord(**raw)
            pem = (self._dir / f"{record.kid}.pem").read_bytes()
            self._keys[record.kid] = RSAKey.import_key(pem, {"kid": record.kid, "use": "sig"})
            self._records.append(record)

    def _save(self) -> None:
        tmp = self._index.with_suffix(".tmp")
        tmp.write_text(json.dumps([asdict(r) for r in self._records], indent=1))
        tmp.replace(self._index)

    @property
    def current(self) -> RSAKey:
        return self._keys[self._records[-1].kid]

    def rotate(self) -> str:
        """Make a new current key; the old one is retired but stays published for the overlap."""
        now = self._clock()
        if self._records:
            self._records[-1].retired_at = now
        # the thumbprint as kid, set at generation (a PEM round trip to add it re-validated
        # the whole private key, as long as generating it)
        key = RSAKey.generate_key(KEY_BITS, parameters={"use": "sig"}, private=True, auto_kid=True)
        kid = key.kid
        assert kid is not None
        path = self._dir / f"{kid}.pem"
        write_private(path, key.as_pem(private=True))
        self._keys[kid] = key
        self._records.append(_KeyRecord(kid=kid, created_at=now))
        self._prune(now)
        self._save()
        return kid

    def maybe_rotate(self) -> None:
        if self._clock() - self._records[-1].created_at >= self._rotation_period:
            self.rotate()

    def _prune(self, now: float) -> None:
        keep = [
            r for r in self._records if r.retired_at is None or now - r.retired_at < self._overlap
        ]
        for record in self._records:
            if record not in keep:
                (self._dir / f"{record.kid}.pem").unlink(missing_ok=True)
                self._keys.pop(record.kid, None)
        self._records = keep

    def published(self) -> dict[str, Any]:
        """The JWKS document: the current key and the retired keys still within the overlap."""
        self.maybe_rotate()
        self._prune(self._clock())
        return {
            "keys": [
                {
                    **self._keys[r.kid].as_dict(private=False),
                    "kid": r.kid,
                    "use": "sig",
                    "alg": "RS256",
                }
                for r in reversed(self._records)
            ]
        }

    def key_for(self, kid: str) -> RSAKey | None:
        """A published key by kid (for the mock's own introspection)."""
        self._prune(self._clock())
        return self._keys.get(kid)

    def sign(self, claims: dict[str, Any], *, typ: str = "JWT") -> str:
        self.maybe_rotate()
        key = self.current
        header = {"alg": "RS256", "typ": typ, "kid": key.kid}
        return jwt.encode(header, claims, key)
