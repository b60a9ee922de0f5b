"""Checkpoints: written atomically, the last N kept, found again for ``--resume auto``.

A checkpoint is one ``torch.save`` file ``RUN/checkpoints/step_000001000.pt`` holding a plain
dictionary (model, EMA, optimizer, scaler, balancer, data position, RNG states, step, config, ...)
made only of tensors and Python containers, so it loads with ``weights_only=True`` (no pickled
code runs when a checkpoint is opened). ``RUN/checkpoints/latest.txt`` names the newest one.

Writes never leave a half-written file under a checkpoint's name: the bytes go to a temporary file
in the same directory, are flushed to disk (``fsync``), then renamed over the final name with
``os.replace`` (atomic on POSIX and Windows). An existing checkpoint is never overwritten.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_target, atomic_write_bytes, atomic_write_text

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointManager",
    "atomic_write_bytes",
    "atomic_write_text",
    "checkpoint_name",
    "load_checkpoint",
    "pending_evaluation",
    "resolve_checkpoint",
]

CHECKPOINT_FORMAT = "antdiff-checkpoint"
CHECKPOINT_VERSION = 1
_NAME = re.compile(r"^step_(\d{9,})\.pt$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:09d}.pt"


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    with atomic_target(path) as f:
        torch.save(obj, f)


class CheckpointManager:
    """The checkpoints of one run directory (``RUN/checkpoints``)."""

    def __init__(self, directory: str | Path, keep_last: int = 3) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last

    @property
    def latest_file(self) -> Path:
        return self.directory / "latest.txt"

    def path_for(self, step: int) -> Path:
        return self.directory / checkpoint_name(step)

    def list(self) -> list[Path]:
        """Complete checkpoints, oldest first (temporary files are ignored)."""
        if not self.directory.is_dir():
            return []
        found = []
        for p in self.directory.iterdir():
            m = _NAME.match(p.name)
            if m and p.is_file():
                found.append((int(m.group(1)), p))
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        """The newest checkpoint: the one ``latest.txt`` names if it exists, else the highest step."""
        if self.latest_file.is_file():
            p = self.directory / self.latest_file.read_text().strip()
            if p.is_file():
                return p
        ckpts = self.list()
        return ckpts[-1] if ckpts else None

    def save(self, state: dict[str, Any], step: int, *, replace: bool = False) -> Path:
        """Write ``state`` as the checkpoint of ``step``; prune to the last ``keep_last``.

        If a checkpoint of this step already exists it is kept as it is (a resumed run that
        stops before taking a step would otherwise rewrite it) and its path is returned, unless
        ``replace`` (still atomic: the old file stays whole until the new one is complete).
        """
        path = self.path_for(step)
        if replace or not path.exists():
            payload = {
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                **state,
                "step": step,
            }
            atomic_torch_save(payload, path)
        atomic_write_text(self.latest_file, path.name + "\n")
        self.prune(keep=path)
        return path

    def prune(self, keep: Path | None = None) -> list[Path]:
        ckpts = self.list()
        doomed = [p for p in ckpts[: max(0, len(ckpts) - self.keep_last)] if p != keep]
        for p in doomed:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        return doomed


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load and sanity-check an antdiff checkpoint (``weights_only``: never runs pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated or foreign files raise many different errors
        raise ValueError(
            f"{path} is not a readable antdiff checkpoint ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an antdiff checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    if int(ckpt.get("version", 0)) > CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} was written by a newer antdiff (checkpoint version {ckpt['version']}); upgrade"
        )
    return ckpt


def pending_evaluation(path: str | Path) -> int | None:
    """The step whose evaluation a stop request interrupted (it runs first on resume), if any.

    Reads only that entry (memory-mapped load), so it is cheap even for large checkpoints."""
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True, mmap=True)
    pending = ckpt.get("pending_eval") if isinstance(ckpt, dict) else None
    return None if pending is None else int(pending)


def resolve_checkpoint(run_or_checkpoint: str | Path) -> Path:
    """A checkpoint file from a file path, a run directory or a run's ``checkpoints`` directory."""
    p = Path(run_or_checkpoint).expanduser()
    if p.is_file():
        return p
    if not p.exists():
        raise FileNotFoundError(f"no such run directory or checkpoint: {p}")
    for d in (p / "checkpoints", p):
        latest = CheckpointManager(d).latest()
        if latest is not None:
            return latest
    raise FileNotFoundError(f"{p} contains no checkpoint (expected {p}/checkpoints/step_*.pt)")
