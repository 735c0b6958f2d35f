"""The terminal side of drawing images, shared by `sample` and `evaluate`: the runtime, a progress
bar fed by the sampling events, and the end on Ctrl-C or SIGTERM."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer

from dreamctl.cli.common import err_console, progress_bar, speaks
from dreamctl.signals import exit_code, stop_on_sigterm

if TYPE_CHECKING:  # dreamctl.runtime imports torch, which the CLI loads only for a command that runs
    from dreamctl.runtime import Runtime


class SampleProgress:
    """A progress bar fed by the sampling events; silent on ranks other than 0."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.progress = progress_bar(enabled)
        self.task = None

    def __enter__(self) -> SampleProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def on_event(self, kind: str, p: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if kind == "sample_start":
            self.progress.console.print(f"samples: {p['folder']} ({p['kept']} of {p['held']} already there, kept)",
                                        markup=False, highlight=False)
            self.task = self.progress.add_task("sample", total=p["missing"])  # this rank's share
        elif kind == "sample_progress" and self.task is not None:
            self.progress.update(self.task, completed=p["drawn"])
        elif kind == "stage":
            self.progress.console.print(p["what"], markup=False, highlight=False)


def stopped(stop: KeyboardInterrupt) -> typer.Exit:
    """The end on Ctrl-C or SIGTERM: one line per node (not per rank), 128 + the signal."""
    if speaks():
        err_console.print("stopped: the images written so far are kept; rerun the same command to go on (it draws "
                          "only those missing)", markup=False)
    return typer.Exit(exit_code(stop))


@contextmanager
def drawing(device: str | None) -> Iterator[tuple[Runtime, SampleProgress]]:
    """(the runtime, the progress display) for drawing images; a stop (Ctrl-C, or SIGTERM from a
    scheduler) ends the command with `stopped`, and the runtime is torn down in every case."""
    from dreamctl import runtime

    rt = runtime.setup("auto", device)
    try:
        with stop_on_sigterm(), SampleProgress(rt.is_main) as display:
            yield rt, display
    except KeyboardInterrupt as stop:
        raise stopped(stop) from None
    finally:
        runtime.teardown(rt)
