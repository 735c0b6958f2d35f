"""SIGTERM as a stop request, like Ctrl-C: batch schedulers (Slurm, timeout) send it, and a command
should then end as it does on Ctrl-C (keep what is finished, say how to go on), exit 128 + 15.

Torch-free, so the CLI's commands can use it without loading torch for --help.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


class Stopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a command; `signum` says which (the exit code is 128 + signum)."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Within it, SIGTERM raises Stopped where Ctrl-C would raise KeyboardInterrupt."""
    def stop(signum: int, frame: object) -> None:
        raise Stopped(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_code(stop: KeyboardInterrupt) -> int:
    """128 + the signal that stopped a command: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + int(getattr(stop, "signum", signal.SIGINT))
