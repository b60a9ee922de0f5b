"""Graceful stop on SIGTERM / SIGINT: finish the current step, checkpoint, exit 0.

Cluster schedulers (SLURM, Kubernetes) send SIGTERM before killing a job; Ctrl-C sends SIGINT.
Inside :class:`GracefulStop` the first such signal only sets :attr:`requested`; the training loop
checks it after each step. A second SIGINT raises ``KeyboardInterrupt`` (a user insisting).

Such signals usually reach the whole process group (Ctrl-C in a terminal, ``scancel``, GNU
``timeout``), DataLoader workers included. A worker killed by one makes PyTorch raise in the
training process before it could checkpoint, so workers ignore them
(:func:`ignore_stop_signals`) and the training process alone decides when they stop.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

__all__ = ["GracefulStop", "ignore_stop_signals"]


class GracefulStop:
    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> GracefulStop:
        # Handlers can only be installed from the main thread (e.g. not inside a notebook worker).
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()


def ignore_stop_signals(_worker_id: int) -> None:
    """``worker_init_fn`` of the training DataLoader: ignore SIGTERM/SIGINT in the worker.

    The training process shuts its workers down itself after the final checkpoint (and a worker
    whose parent died exits on its own)."""
    for s in GracefulStop.SIGNALS:
        signal.signal(s, signal.SIG_IGN)
