"""What a training run shows in the terminal, and how Ctrl-C / SIGTERM stop it cleanly."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.progress import TextColumn

from dreamctl.cli.common import EXIT_CODES_DIR, console, progress_bar, speaks, to_devnull
from dreamctl.signals import handling

if TYPE_CHECKING:  # the CLI's --help must not import torch
    from dreamctl.runtime import Runtime


class StopRequest:
    def __init__(self, resuming: bool = False) -> None:
        self.count = 0
        self.signum = signal.SIGINT  # the first signal received (SIGINT when another rank asked to stop)
        self.resuming = resuming
        self.started = False  # training began: before it, a resume stops without a step (loop.train)

    def requested(self) -> bool:
        return self.count > 0

    def promise(self) -> str:
        """What the first signal will do, said when it comes."""
        if self.resuming and not self.started:
            return "stopping before the first step: the checkpoint being resumed stays the newest"
        return "finishing this step and writing a checkpoint"


def say(text: str) -> None:
    """Write to stderr from a signal handler. When nobody reads it any more (ablate, whose pipe it was,
    was killed and its death signal is why we stop), stderr becomes /dev/null: the stop's checkpoint
    must not fail on this or any later line that nobody can see."""
    try:
        os.write(sys.stderr.fileno(), text.encode())
    except BrokenPipeError:
        to_devnull(sys.stderr)


def _abort_hint() -> str:
    """How to abort the checkpoint: a second Ctrl-C, except under a torchrun the user started, which
    keeps it from the workers (the --nproc-per-node shortcut's torchrun passes it on)."""
    if "TORCHELASTIC_RUN_ID" in os.environ and EXIT_CODES_DIR not in os.environ:
        return " (torchrun passes no second Ctrl-C on to its workers)"
    return " (press Ctrl-C again to abort without one)"


@contextmanager
def stop_on_signals(resuming: bool = False) -> Iterator[StopRequest]:
    """First SIGINT/SIGTERM: finish the step, checkpoint, exit. A second Ctrl-C aborts at once (when it
    arrives after the first has been handled: two during one long C++ call are one to Python); a second
    SIGTERM does not, as one often follows the first (a scheduler signals every process of a job, and
    ablate or the torchrun shortcut pass theirs on)."""
    stop = StopRequest(resuming)

    def handler(signum: int, frame: Any) -> None:
        stop.count += 1
        if stop.count == 1:
            stop.signum = signal.Signals(signum)
            if speaks():  # os.write, not rich: the signal may land inside a print (or its first import of
                # rich's emoji table), and a print from here would re-enter it and fail on a half-made module
                say(f"\n{signal.Signals(signum).name}: {stop.promise()}{_abort_hint()}\n")
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt

    with handling(handler, signal.SIGINT, signal.SIGTERM):
        yield stop


def _other_processes(changed: dict[str, tuple[int, int]]) -> str:
    """The note for a resume on another process count or thread count ({key: (checkpoint's, now)})."""
    was = ", ".join(f"{k.replace('_', ' ')} {old} until now, {new} in this resume" for k, (old, new) in changed.items())
    how = {"world_size": lambda n: "1 process (no --nproc-per-node)" if n == 1 else
           f"{n} processes in all (--nproc-per-node {n} on one node, or the nodes and processes per node it had)",
           "threads": lambda n: f"{n} threads per process (OMP_NUM_THREADS={n})"}
    return (f"note: {was}: the same images and noise, but float sums in another order, so the weights drift "
            f"from a continuation on the old setting by rounding; to continue bit for bit, resume on "
            + " and ".join(how[k](old) for k, (old, _) in changed.items()))


class TrainingDisplay:
    """A rich progress bar fed by train()'s events (and TensorBoard when installed); silent on ranks but 0.

    Without a terminal (a batch job's log file) there is no bar: each log step is one plain line.
    """

    def __init__(self, enabled: bool, run_root: Path):
        self.enabled = enabled
        self.tensorboard: Any = None  # a TensorBoardSink when installed, made at the first event:
        self.tensorboard_tried = False  # after the run has claimed its folder, never before
        self.progress = progress_bar(enabled, TextColumn("{task.fields[info]}"))
        self.lines = enabled and self.progress.disable  # no bar (no terminal): a plain line per log step
        self.total = self.started_at = self.reached = 0
        self.task = None
        self.run_root = run_root

    def __enter__(self) -> TrainingDisplay:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)
        if self.tensorboard is not None:
            self.tensorboard.close()

    def on_event(self, kind: str, p: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if not self.tensorboard_tried:
            from dreamctl.training import tensorboard

            self.tensorboard_tried = True
            if tensorboard.available():
                self.tensorboard = tensorboard.TensorBoardSink(self.run_root / "tensorboard")
        if self.tensorboard is not None:
            self.tensorboard.on_event(kind, p)
        if kind == "resume":
            self.progress.console.print(f"resuming from {p['path']} (step {p['step']})")
            if changed := {k: (v, p[k]) for k, v in p.get("before", {}).items() if k in p and p[k] != v}:
                self.progress.console.print(_other_processes(changed), markup=False, highlight=False)
        elif kind == "start":
            self.total, self.started_at = p["total_steps"], p["step"]
            self.task = self.progress.add_task("train", total=p["total_steps"], completed=p["step"], info="")
        elif kind == "step":  # the bar moves every step; the numbers beside it every log step
            self.reached = p["step"]
            self.progress.update(self.task, completed=p["step"])
        elif kind == "log":
            from dreamctl.training.meter import TERMS  # here: --help must not import torch

            terms = "  ".join(f"{k} {p[k]:.4f}" for k in TERMS if k in p)
            info = f"epoch {p['epoch']}  {terms}  {p['img_per_s']:.0f} img/s"
            self.progress.update(self.task, completed=p["step"], info=info)
            if self.lines:
                console.print(f"step {p['step']}/{self.total}  {info}", markup=False, highlight=False)
        elif kind == "grid":
            self.progress.console.print(f"step {p['step']}: sample grid {p['path']}")

    def finish(self, status: str) -> None:
        from dreamctl import runtime

        if status == "interrupted" and not self.reached:  # a stop while a resume loaded its checkpoint
            console.print(f"stopped before the first step, no checkpoint written; continue with:  "
                          f"{runtime.resume_command(self.run_root)}", markup=False, highlight=False)
        elif status == "interrupted":
            console.print(f"stopped with a checkpoint; continue with:  {runtime.resume_command(self.run_root)}")
        elif self.task is not None and self.started_at == self.total:  # a resume of a finished run
            console.print(f"finished before: {self.run_root} is at its last step ({self.total:,}); to train on, "
                          f"lengthen it: {runtime.resume_command(self.run_root)} --set train.max_steps=N (or "
                          "train.epochs=N)", markup=False, highlight=False)
        else:
            console.print(f"finished: {self.run_root}")


def run_training(run_root: Path, rt: Runtime, session: Callable[..., str], resuming: bool = False) -> None:
    """Run `session(on_event=..., should_stop=...)` with the display and signal handling; tear down after.

    A run stopped by a signal exits with 128 + its number (130 for Ctrl-C, 143 for SIGTERM), after
    its checkpoint, so a script running `train && sample` does not go on with a half-trained run.
    """
    from dreamctl import runtime

    try:
        with stop_on_signals(resuming) as stop, TrainingDisplay(rt.is_main, run_root) as display:
            def on_event(kind: str, payload: dict[str, Any]) -> None:
                stop.started = stop.started or kind == "start"
                display.on_event(kind, payload)

            status = session(on_event=on_event, should_stop=stop.requested)
        if status == "interrupted":  # every rank stopped at one step, the signal reached some: the one that came
            # (SIGTERM over SIGINT: a scheduler's requeue-able stop) is every rank's exit code, which torchrun needs
            stop.signum = signal.Signals(runtime.max_over_ranks(int(stop.signum) if stop.requested() else 0, rt)
                                         or signal.SIGINT)
        if rt.is_main:
            display.finish(status)
    except KeyboardInterrupt:  # a second Ctrl-C: aborted in the step, no checkpoint of it
        if speaks():
            console.print(f"aborted without a checkpoint of this step; continue from the newest with:  "
                          f"{runtime.resume_command(run_root)}", markup=False, highlight=False)
        raise
    except RuntimeError as err:
        lost = runtime.peer_lost(err, f"the last checkpoint, if any, is kept: continue with `{runtime.resume_command(run_root)}`")
        if lost is None:
            raise
        raise lost from None
    finally:
        runtime.teardown(rt)
    if status == "interrupted":
        raise typer.Exit(128 + int(stop.signum))
