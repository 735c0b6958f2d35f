"""What the command modules share: the consoles and the progress bar."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def progress_bar(enabled: bool, *extra: ProgressColumn) -> Progress:
    """description, bar, done/total, elapsed, ETA, then `extra`; silent when not `enabled` (ranks > 0)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), *extra, console=console,
                    disable=not enabled)
