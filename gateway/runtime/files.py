"""Files only their owner may read: private keys, client secrets, passwords."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Write `data` to `path` created with mode 0600 (never readable by others, not even
    for a moment). `exclusive` refuses to replace an existing file."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)  # a file that existed keeps its mode through O_CREAT
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
