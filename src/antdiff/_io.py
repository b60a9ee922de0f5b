"""Atomic file writes, shared by every layer that writes results (checkpoints, reference
statistics, samples, affinity matrices): the bytes go to a temporary file in the same directory,
are flushed to disk (``fsync``), then renamed over the final name with ``os.replace`` (atomic on
POSIX and Windows). An interrupted write leaves the earlier file, if any, as it was."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_target", "atomic_write_bytes", "atomic_write_text"]


@contextlib.contextmanager
def atomic_target(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary file object; on success it becomes ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable (best effort: not every OS lets us fsync a directory).
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_target(path) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())
