"""What the command modules share: the consoles and the progress bar."""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)
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
