"""What the command modules share: the consoles and the progress bar."""

from __future__ import annotations

import os
from typing import IO

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def to_devnull(stream: IO[str]) -> None:
    """Point `stream`'s file descriptor at /dev/null: its reader is gone, and what is still written to it
    (later lines, the buffer flushed at exit) must not fail the command."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stream.fileno())
    os.close(devnull)


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """Whoever read this stream is gone (`dreamctl train ... | tee log`, and tee was killed): the rest
        of the output goes nowhere and the command carries on, a run to its end and its checkpoints.
        Rich's own handler exits 1 from inside the print, which failed the run mid-step."""
        self.quiet = True
        to_devnull(self.file)


console = _Console(soft_wrap=True)
err_console = _Console(stderr=True, soft_wrap=True)
for _c in (console, err_console):
    if not _c.is_terminal and "COLUMNS" not in os.environ:
        _c.width = 160  # a log file or pipe: rich would assume 80 columns and split tables' numbers


EXIT_CODES_DIR = "DREAMCTL_EXIT_CODES_DIR"  # where the --nproc-per-node shortcut's workers leave their exit codes


def speaks() -> bool:
    """Whether this process prints errors, warnings and signal notes: under torchrun, local rank 0 of
    each node (ranks of one node hit the same checks: one line, not one per GPU), else always."""
    return os.environ.get("LOCAL_RANK", "0") == "0"


def rank_prefix() -> str:
    """`rank 8: ` on another node's first rank, so a node-local problem (its data path) says where."""
    rank = os.environ.get("RANK", "0")
    return "" if rank == "0" else f"rank {rank}: "


def progress_bar(enabled: bool, *extra: ProgressColumn) -> Progress:
    """description, bar, done/total, elapsed, ETA, then `extra`; silent when not `enabled` (ranks > 0)
    and without a terminal, where a bar would end up in a log file cut off mid-line."""
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), *extra, console=console,
                    disable=not (enabled and console.is_terminal))


def duration(seconds: float) -> str:
    """1 h 05 min, 12 min, 40 s."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"
