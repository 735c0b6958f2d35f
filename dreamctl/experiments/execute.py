"""Carry out an ablation plan through CLI subprocesses, then write its report.

The command runner is a function argument, so tests substitute a fake that writes the
run-folder files itself. One failing job is logged (exit code, last lines of stderr in
OUT/logs/<job>.log) and does not stop the others.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dreamctl import atomic
from dreamctl.config import set_args
from dreamctl.data.shards import read_manifest
from dreamctl.errors import CheckpointError, ConfigError, RunError, WeightsError
from dreamctl.experiments.ablate import PLAN_NOTE, EvalJob, Plan, TrainJob, images_text, plan_rows, run_status
from dreamctl.experiments.compare import compare_runs
from dreamctl.experiments.plots import foreign_figures, write_figures
from dreamctl.experiments.runs import Run, read_run
from dreamctl.experiments.tables import to_markdown
from dreamctl.metrics.weights import check_weights
from dreamctl.runtime import device_args
from dreamctl.signals import Stopped, child_env, ended, run_child, signum_of, stop_on_sigterm
from dreamctl.training.rundir import RunDir

STDERR_LINES = 60  # kept in a failed job's log


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stderr_tail: str = ""


Runner = Callable[[list[str]], CommandResult]


@dataclass(frozen=True)
class Launch:
    """How each job runs, the same for all: processes per training run (torchrun) and the device."""

    nproc: int | None = None
    device: str | None = None  # None: each command's default (cuda if available)


Action = Literal["train", "resume", "restart", "evaluate", "skip", "not run"]  # a job's, or "not run"


@dataclass(frozen=True)
class Outcome:
    job: str
    action: Action
    failed: bool = False
    note: str = ""
    log: Path | None = None


@dataclass(frozen=True)
class AblationResult:
    outcomes: tuple[Outcome, ...]
    report: Path
    figures: tuple[Path, ...] = field(default=())

    @property
    def failures(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if o.failed)


def run_command(cmd: list[str]) -> CommandResult:
    """The default runner: stdout goes straight through; stderr too, and its last lines are kept.

    A stop reaches the child (signals.run_child), which checkpoints; this process goes on reading
    its stderr until it exits (a closed pipe would kill it mid-checkpoint), then raises Stopped.
    """
    tail: deque[str] = deque(maxlen=STDERR_LINES)

    def drain(proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write(line)  # the child's own messages, passed through unchanged
            tail.append(line)

    code, signum = run_child(lambda: subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, bufsize=1,
                                                      env=child_env()), drain)
    if signum is not None:
        raise Stopped(signum)
    return CommandResult(code, "".join(tail))


def dreamctl_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dreamctl", *args]


def train_command(job: TrainJob, data: Path | None, launch: Launch = Launch()) -> list[str]:
    if job.action == "resume":
        cmd = dreamctl_command("resume", str(job.run_dir), *set_args(job.resume_set))
    else:
        if data is None:
            raise _needs_data(job)
        cmd = dreamctl_command("train", "--recipe", job.recipe, "--data", str(data), "--run-dir", str(job.run_dir))
        cmd += set_args(job.overrides)
    return cmd + device_args(launch.device) + (["--nproc-per-node", str(launch.nproc)] if launch.nproc else [])


def _needs_data(job: TrainJob) -> ConfigError:
    return ConfigError(f"run {job.name} needs training data: give --data DIR or 'data:' in the spec")


def evaluate_command(job: EvalJob, launch: Launch = Launch()) -> list[str]:
    return dreamctl_command("evaluate", str(job.run_dir), *job.flags, *device_args(launch.device))


def _set_aside(run_dir: Path, parking: Path) -> Path:
    """Move a run that stopped before its first checkpoint out of the way, so train can start it afresh.

    Under the run's lock: one without a checkpoint yet may be training still (another ablate of the same
    spec), and its folder is then left alone (RunError, naming the trainer's pid); one that has written a
    checkpoint since the plan was made is left alone too (RunError: planned again, it resumes)."""
    with RunDir(run_dir).lock():
        if run_status(run_dir) in ("resume", "skip"):
            raise RunError(f"{run_dir} has a checkpoint now, written since this ablation was planned (by another "
                           "ablate of the spec?): run ablate again, which resumes it instead of starting it afresh")
        parking.mkdir(parents=True, exist_ok=True)
        return run_dir.rename(atomic.unused_path(parking / run_dir.name))


LOG_HEAD = "$ "  # how a failed job's log starts (the command): what a rerun recognises as its own


def _log_path(logs: Path, job: str) -> Path:
    return logs / f"{job}.log"


def _run_logged(cmd: list[str], job: str, action: Action, runner: Runner, logs: Path) -> Outcome:
    result = runner(cmd)
    log = _log_path(logs, job)
    if result.returncode == 0:
        if log.is_file() and _starts_with(log, LOG_HEAD):
            log.unlink()  # a stale failure from an earlier attempt
        return Outcome(job, action)
    logs.mkdir(parents=True, exist_ok=True)
    how = ended(result.returncode)
    atomic.write_text(log, f"{LOG_HEAD}{' '.join(cmd)}\n{how}\n--- last lines of stderr ---\n{result.stderr_tail}")
    return Outcome(job, action, failed=True, note=how, log=log)


def _finished(run_dir: Path) -> str | None:
    """None when run.json says finished, else what it says instead."""
    try:
        status = read_run(run_dir).status
    except CheckpointError as err:
        return str(err)
    return None if status == "finished" else f"run.json status is '{status}' after the command succeeded"


def weights_problem(plan: Plan) -> str | None:
    """Why the spec's metrics cannot be computed (a weight file missing or wrong), if they cannot."""
    if plan.spec.metrics and any(e.action == "evaluate" for e in plan.evals):
        if errors := check_weights(plan.spec.metrics):
            return f"the spec's metrics need weights that are not usable: {errors[0]}"
    return None


REPORT_HEAD = "# Ablation: "  # how report.md starts: what a rerun recognises as its own


def preflight(plan: Plan) -> None:
    """What the run refuses before its first job, checked without writing anything (the dry run
    reports it too): one error now, not one per job, and not after days of training."""
    starts = [j for j in plan.train if j.action in ("train", "restart")]
    if plan.data is None and starts:
        raise _needs_data(starts[0])
    if starts:
        read_manifest(plan.data)  # not prepared
    if (problem := weights_problem(plan)) is not None:
        raise WeightsError(problem)
    atomic.check_folder_path(plan.spec.out, "--out")
    # A rerun replaces its own report and logs, never another file of those names.
    report = plan.spec.out / "report.md"
    jobs = [j.name for j in plan.train if j.action != "skip"] + [e.name for e in plan.evals if e.action != "skip"]
    for path, head in [(report, REPORT_HEAD)] + [(_log_path(plan.spec.out / "logs", job), LOG_HEAD) for job in jobs]:
        if path.is_dir() or (path.exists() and not _starts_with(path, head)):
            raise RunError(f"{path} exists and is not a file ablate wrote; move it away or choose another 'out'")
    figures = plan.spec.out / "figures"
    atomic.check_folder_path(figures, "the figures folder")
    if theirs := foreign_figures(figures):  # found after every job, it cost the report (and a stop's exit code)
        raise RunError(f"{theirs[0]} exists and is not a figure ablate wrote; move it away or choose another 'out'")


def _starts_with(path: Path, head: str) -> bool:
    with open(path, "rb") as f:
        return f.read(len(head)) == head.encode()


def execute(plan: Plan, runner: Runner | None = None, launch: Launch = Launch(),
            progress: Callable[[str], None] = lambda message: None) -> AblationResult:
    """Train/resume what is not finished, evaluate what is not evaluated, then write OUT/report.md.

    runner(cmd) -> CommandResult runs one CLI command; the default starts a subprocess.
    """
    runner = runner or run_command
    preflight(plan)
    atomic.check_writable(plan.spec.out, "--out")  # unwritable: one error now, not two per job
    outcomes: list[Outcome] = []
    try:
        with stop_on_sigterm():
            _carry_out(plan, runner, launch, progress, outcomes)
    except KeyboardInterrupt as stop:
        write_report(plan, outcomes, stopped_by=signum_of(stop))
        raise
    report, figures = write_report(plan, outcomes)
    return AblationResult(tuple(outcomes), report, tuple(figures))


def _carry_out(plan: Plan, runner: Runner, launch: Launch, progress: Callable[[str], None],
               outcomes: list[Outcome]) -> None:
    """Run the plan's jobs in order, appending each one's outcome (a partial list survives Ctrl-C)."""
    logs = plan.spec.out / "logs"
    total = len(plan.train) + len(plan.evals)
    done = 0
    for job in plan.train:
        done += 1
        progress(f"[{done}/{total}] {job.action} {job.name}")
        if job.action == "skip":
            outcome = Outcome(job.name, "skip", note="already finished")
        else:
            if job.action == "restart":
                _set_aside(job.run_dir, plan.spec.out / "stopped-before-checkpoint")
            outcome = _run_logged(train_command(job, plan.data, launch), job.name, job.action, runner, logs)
            problem = None if outcome.failed else _finished(job.run_dir)
            if problem:
                outcome = Outcome(job.name, job.action, failed=True, note=problem)
        outcomes.append(outcome)
        for ev in (e for e in plan.evals if e.run == job.name):
            done += 1
            if outcome.failed:
                progress(f"[{done}/{total}] not run {ev.name}: its training failed")
                outcomes.append(Outcome(ev.name, "not run", note=f"training of {job.name} failed"))
            elif ev.action == "skip":
                progress(f"[{done}/{total}] skip {ev.name}")
                outcomes.append(Outcome(ev.name, "skip", note="already evaluated"))
            else:
                progress(f"[{done}/{total}] evaluate {ev.name}")
                outcomes.append(_run_logged(evaluate_command(ev, launch), ev.name, "evaluate", runner, logs))


def _readable_runs(plan: Plan) -> tuple[list[Run], list[str]]:
    runs, problems = [], []
    for job in plan.train:
        if not RunDir(job.run_dir).run_file.is_file():
            continue
        try:
            runs.append(read_run(job.run_dir))
        except CheckpointError as err:  # one broken folder must not hide the others' results
            problems.append(f"{job.name}: {err}")
    return runs, problems


def write_report(plan: Plan, outcomes: list[Outcome], stopped_by: int | None = None) -> tuple[Path, list[Path]]:
    """OUT/report.md: the plan, what failed, the compare table (mean ± std over seeds) and figures."""
    out, spec = plan.spec.out, plan.spec
    runs, problems = _readable_runs(plan)
    comp = compare_runs(runs) if runs else None
    figures = write_figures(runs, out / "figures", comp) if comp else []
    lines = [f"{REPORT_HEAD}{spec.name}", ""] + ([spec.description, ""] if spec.description else [])
    recipes = sorted({j.recipe for j in plan.train})
    lines += [f"- spec: `{spec.path}`", f"- recipe{'s' if len(recipes) > 1 else ''}: {', '.join(recipes)}",
              f"- fixed overrides: {' '.join(spec.set) or 'none'}", f"- data: `{plan.data}`" + (f" ({images_text(plan)})" if images_text(plan) else ""),
              f"- seeds: {', '.join(map(str, spec.seeds))}", ""]
    head, rows = plan_rows(plan)
    lines += ["## Plan", "", PLAN_NOTE + ".", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows] + ["", "## Outcome", ""]
    failed = [o for o in outcomes if o.failed]
    total = len(plan.train) + len(plan.evals)
    if stopped_by is not None:
        how = "Ctrl-C" if stopped_by == signal.SIGINT else signal.Signals(stopped_by).name
        lines += [f"**Interrupted ({how})** after {len(outcomes)} of {total} jobs, the one under way not counted; "
                  "the same command goes on from there.", ""]
    lines += [f"- **failed** `{o.job}` ({o.action}): {o.note}" + (f" — log: [{o.log.name}](logs/{o.log.name})" if o.log else "")
              for o in failed] or ([] if stopped_by is not None else [f"All {total} jobs succeeded or were already done."])
    lines += [f"- not run: `{o.job}`: {o.note}" for o in outcomes if o.action == "not run"]
    lines += [f"- unreadable run: {p}" for p in problems] + ["", "## Results", ""]
    lines += [to_markdown(comp)] if comp else ["No run has a run.json yet: nothing to compare.", ""]
    if figures:
        lines += ["## Figures", ""] + [f"![{p.stem}](figures/{p.name})" for p in figures] + [""]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.md"
    atomic.write_text(path, "\n".join(lines))
    return path, figures
