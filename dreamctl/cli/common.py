"""What the command modules share: the consoles and small argument helpers."""

from __future__ import annotations

from rich.console import Console

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)
