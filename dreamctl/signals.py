"""Stopping a command cleanly on a signal: Ctrl-C (SIGINT) from a terminal, SIGTERM from a batch
scheduler (Slurm, timeout). Either ends a command as Ctrl-C does (keep what is finished, say how to
go on) with exit code 128 + the signal. A command that runs another passes a stop on to it.

Torch-free, so the CLI's commands can use it without loading torch for --help.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

Handler = Callable[[int, Any], None]
PARENT_PID = "DREAMCTL_PARENT_PID"


def child_env() -> dict[str, str]:
    """The environment of a dreamctl command this process starts: the child stops, as on SIGTERM, when
    this process dies, even by SIGKILL (which no handler of ours can pass on)."""
    return {**os.environ, PARENT_PID: str(os.getpid())}


def stop_with_parent() -> None:
    """In a command started with child_env(): SIGTERM when the parent dies (see on_parent_death).
    Removed from the environment, so grandchildren are not tied."""
    parent = os.environ.pop(PARENT_PID, None)
    if parent is not None:
        on_parent_death(signal.SIGTERM, int(parent))


def on_parent_death(signum: int, parent: int) -> None:
    """On Linux, `signum` to this process when `parent`, the process that started it, dies, even by
    SIGKILL (PR_SET_PDEATHSIG); at once if it has already gone. Elsewhere nothing: the process outlives it."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, int(signum))  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # died before the request: no signal would come
        os.kill(os.getpid(), signum)


@contextmanager
def adopting_orphans() -> Iterator[None]:
    """Within it, a descendant whose parent dies becomes this process's child (Linux PR_SET_CHILD_SUBREAPER),
    and leaving waits for every such one to end. The --nproc-per-node shortcut's workers, when torchrun is
    killed outright, get SIGTERM and write their checkpoint: the shortcut returned at once, and a `resume`
    right after found the run still locked. Elsewhere nothing is adopted or waited for."""
    if not sys.platform.startswith("linux"):
        yield
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    ours = set(children())  # not waited for here: only what is adopted
    libc.prctl(36, 1)  # 36 = PR_SET_CHILD_SUBREAPER
    try:
        yield
        while adopted := set(children()) - ours:
            for pid in adopted:
                os.waitpid(pid, 0)
    finally:
        libc.prctl(36, 0)


def children() -> list[int]:
    """This process's child processes (Linux, from /proc; elsewhere none are listed)."""
    tasks = Path("/proc/self/task")
    found = []
    for task in tasks.iterdir() if tasks.is_dir() else ():
        try:
            found += [int(pid) for pid in (task / "children").read_text().split()]
        except FileNotFoundError:  # a thread that ended meanwhile: it had none to list
            pass
    return found


class Stopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a command; `signum` says which (the exit code is 128 + signum)."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def signum_of(stop: KeyboardInterrupt) -> int:
    """The signal behind a stop: a Stopped says which, a bare KeyboardInterrupt is Ctrl-C."""
    return int(getattr(stop, "signum", signal.SIGINT))


def shell_code(returncode: int) -> int:
    """A child's return code as a shell gives it: killed by signal N (subprocess's -N) is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def ended(returncode: int) -> str:
    """How a child ended, as a shell says it: `exit code 2`, or `killed by SIGKILL (137)`."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:  # a real-time signal has no name
        name = f"signal {-returncode}"
    return f"killed by {name} ({shell_code(returncode)})"


def exit_code(stop: KeyboardInterrupt) -> int:
    """128 + the signal that stopped a command: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + signum_of(stop)


@contextmanager
def handling(handler: Handler, *signums: int) -> Iterator[None]:
    """`handler` for these signals within the block; the previous handlers after it, whatever happens."""
    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def stop_on_sigterm() -> AbstractContextManager[None]:
    """Within it, SIGTERM raises Stopped where Ctrl-C would raise KeyboardInterrupt."""
    def stop(signum: int, frame: Any) -> None:
        raise Stopped(signum)

    return handling(stop, signal.SIGTERM)


def run_child(start: Callable[[], subprocess.Popen], use: Callable[[subprocess.Popen], None] = lambda proc: None,
              ) -> tuple[int, int | None]:
    """Start a child process and wait for it, passing a stop on so that it can end cleanly (checkpoint).

    SIGTERM, sent to this process alone, is sent on; Ctrl-C already reaches the child through the
    terminal's process group, and a second one would abort its checkpoint, so it is only noted. The
    handler is in place before the child starts: a signal while it starts still reaches it. `use(proc)`
    runs while the child lives (reading its output). Returns (its exit code, the first signal received or None).
    """
    received: list[int] = []
    running: list[subprocess.Popen] = []

    def note(signum: int, frame: Any) -> None:
        received.append(signum)
        if signum == signal.SIGTERM and running:
            running[0].send_signal(signum)

    with handling(note, signal.SIGINT, signal.SIGTERM):
        with start() as proc:  # leaving it waits for the child, still under `note`
            running.append(proc)
            if signal.SIGTERM in received:  # arrived while it started (a second one is harmless)
                proc.send_signal(signal.SIGTERM)
            use(proc)
    return proc.returncode, (received[0] if received else None)
