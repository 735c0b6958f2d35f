"""ablate's execution through a fake CLI runner: skip/resume/train, failures that do not stop the
rest, evaluations done again when needed, Ctrl-C and SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from ablate_fakes import FakeCLI, write_spec
from dreamctl.cli import main
from dreamctl.errors import WeightsError
from dreamctl.experiments import execute as execute_module
from dreamctl.experiments.ablate import make_plan, plan_rows
from dreamctl.experiments.execute import CommandResult, execute, train_command
from dreamctl.experiments.spec import parse_spec
from dreamctl.signals import Stopped, stop_on_sigterm


def test_skip_finished_resume_interrupted_train_new(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path)
    out = tmp_path / "out"
    setup = FakeCLI(unfinished=("lambda_max-0.5_seed-0",))
    for job in make_plan(parse_spec(spec_path)).train[:2]:  # 0.3 finishes, 0.5 is interrupted
        setup(train_command(job, tmp_path / "data"))
    setup([sys.executable, "-m", "dreamctl", "evaluate", str(out / "lambda_max-0.3_seed-0"), "--metrics", "swd", "--num", "50"])

    plan = make_plan(parse_spec(spec_path))
    assert [j.action for j in plan.train] == ["skip", "resume", "train"]
    assert [e.action for e in plan.evals] == ["skip", "evaluate", "evaluate"]
    resumed, new = plan.train[1:]  # the interrupted run costs only the steps it has left
    assert (resumed.done, resumed.steps) == (20, new.steps - 20) and resumed.forwards < new.forwards
    assert resumed.images == resumed.steps * new.images // new.steps
    assert {row[0]: row[1] for row in plan_rows(plan)[1]}["lambda_max-0.5_seed-0"] == "resume from step 20"
    fake = FakeCLI()
    result = execute(plan, runner=fake)
    assert not result.failures
    assert [c[:2] for c in fake.calls] == [["resume", str(out / "lambda_max-0.5_seed-0")],
                                          ["evaluate", str(out / "lambda_max-0.5_seed-0")],
                                          ["train", "--recipe"], ["evaluate", str(out / "lambda_max-0.7_seed-0")]]
    assert "loss.lambda_max=0.7" in fake.calls[2] and "train.seed=0" in fake.calls[2]
    report = result.report.read_text()
    assert result.report == out / "report.md" and "lambda_max-0.7_seed-0" in report and "| 0.7 |" in report
    assert report.count("the CelebA study's variant") == 1  # the study's loss kind, said once (in the results)
    assert result.figures and all(f"figures/{p.name}" in report and p.stat().st_size > 10_000 for p in result.figures)

    again = FakeCLI()
    execute(make_plan(parse_spec(spec_path)), runner=again)
    assert again.calls == []  # nothing new: everything finished and evaluated


def test_a_job_killed_by_a_signal_is_logged_as_a_shell_says_it(tmp_path: Path) -> None:
    """subprocess gives -9 for a job killed by SIGKILL (the out-of-memory killer): the log said "exit code -9"."""
    from dreamctl.experiments.execute import CommandResult, _run_logged

    outcome = _run_logged(["dreamctl", "train"], "job", "train", lambda cmd: CommandResult(-9, "..."), tmp_path)
    assert outcome.note == "killed by SIGKILL (137)" and "\nkilled by SIGKILL (137)\n" in outcome.log.read_text()
    assert _run_logged(["x"], "job2", "train", lambda cmd: CommandResult(2), tmp_path).note == "exit code 2"


def test_a_failing_run_is_logged_and_the_others_go_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec_path = write_spec(tmp_path)
    fake = FakeCLI(fail=("lambda_max-0.5_seed-0",))
    result = execute(make_plan(parse_spec(spec_path)), runner=fake)
    assert [o.job for o in result.failures] == ["lambda_max-0.5_seed-0"]
    log = (tmp_path / "out" / "logs" / "lambda_max-0.5_seed-0.log").read_text()
    assert "exit code 3" in log and "RuntimeError: boom" in log and "--run-dir" in log
    evaluated = [c[1] for c in fake.calls if c[0] == "evaluate"]
    assert [Path(p).name for p in evaluated] == ["lambda_max-0.3_seed-0", "lambda_max-0.7_seed-0"]
    assert any(o.action == "not run" and o.job.startswith("lambda_max-0.5") for o in result.outcomes)
    assert "**failed** `lambda_max-0.5_seed-0`" in result.report.read_text()

    monkeypatch.setattr(execute_module, "run_command", FakeCLI(fail=("lambda_max-0.5_seed-0",)))
    assert main(["ablate", str(spec_path)]) == 1  # the CLI exits non-zero at the end

    # It died before its first checkpoint: the rerun sets the folder aside and trains it afresh, nothing else.
    plan = make_plan(parse_spec(spec_path))
    assert [j.action for j in plan.train] == ["skip", "restart", "skip"]
    again = FakeCLI()
    assert not execute(plan, runner=again).failures
    assert [c[0] for c in again.calls] == ["train", "evaluate"]
    assert (tmp_path / "out" / "stopped-before-checkpoint" / "lambda_max-0.5_seed-0" / "recipe.yaml").is_file()
    assert not (tmp_path / "out" / "logs" / "lambda_max-0.5_seed-0.log").exists()  # the stale failure log is gone


def test_a_run_that_exits_zero_without_finishing_counts_as_failed(tmp_path: Path) -> None:
    fake = FakeCLI(unfinished=("lambda_max-0.3_seed-0",))
    result = execute(make_plan(parse_spec(write_spec(tmp_path))), runner=fake)
    assert [o.note for o in result.failures] == ["run.json status is 'interrupted' after the command succeeded"]


def test_an_evaluation_drawn_under_the_old_seed_rule_is_done_again(tmp_path: Path) -> None:
    """Before image_seeds was recorded, seed 1 drew seed 0's images shifted by one: not another set."""
    spec_path = write_spec(tmp_path, grid={"loss.lambda_max": [0.3]}, set=["train.epochs=4", "eval.seed=1"])
    execute(make_plan(parse_spec(spec_path)), runner=FakeCLI())
    assert [e.action for e in make_plan(parse_spec(spec_path)).evals] == ["skip"]
    for path in (tmp_path / "out").rglob("eval/*.json"):
        record = json.loads(path.read_text())
        del record["protocol"]["image_seeds"]
        path.write_text(json.dumps(record))
    assert [e.action for e in make_plan(parse_spec(spec_path)).evals] == ["evaluate"]


def test_metrics_without_weights_stop_before_any_training(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fake = FakeCLI()
    spec = write_spec(tmp_path, evaluate={"metrics": ["swd", "fid"]})
    with pytest.raises(WeightsError, match="inception"):
        execute(make_plan(parse_spec(spec)), runner=fake)
    assert fake.calls == [] and not (tmp_path / "out").exists()
    assert main(["ablate", str(spec), "--dry-run"]) == 0  # the dry run says so too
    assert "warning: the spec's metrics need weights" in capsys.readouterr().err


@pytest.mark.parametrize("signum, code, how", [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_a_stop_keeps_the_report_and_exits_128_plus_the_signal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture, signum, code, how) -> None:
    fake = FakeCLI()

    def stopped_second_job(cmd: list[str]) -> CommandResult:
        if len(fake.calls) == 2:
            raise Stopped(signum)
        return fake(cmd)

    monkeypatch.setattr(execute_module, "run_command", stopped_second_job)
    assert main(["ablate", str(write_spec(tmp_path))]) == code
    assert "interrupted" in capsys.readouterr().err
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"Interrupted ({how})** after 2 of 6 jobs" in report and "succeeded" not in report


def test_sigterm_is_passed_on_to_the_running_command_which_finishes_its_checkpoint(tmp_path: Path, capfd) -> None:
    """A batch scheduler's SIGTERM reaches the ablation alone: it must stop its child cleanly, not orphan it."""
    ready = tmp_path / "ready"
    child = ("import pathlib, signal, sys, time\n"
             "def stop(*_):\n    print('checkpoint written', file=sys.stderr)\n    sys.exit(0)\n"
             f"signal.signal(signal.SIGTERM, stop)\npathlib.Path({str(ready)!r}).touch()\ntime.sleep(60)\n")

    def term_when_ready() -> None:
        while not ready.exists():
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=term_when_ready, daemon=True).start()
    started = time.monotonic()
    with stop_on_sigterm(), pytest.raises(Stopped) as stop:
        execute_module.run_command([sys.executable, "-c", child])
    assert stop.value.signum == signal.SIGTERM and time.monotonic() - started < 30  # the child did not sleep on
    assert "checkpoint written" in capfd.readouterr().err  # its last words were read, not cut off
    with pytest.raises(Stopped):  # between commands: raised at once
        with stop_on_sigterm():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)


def test_a_set_aside_folder_never_overwrites_an_earlier_one(tmp_path: Path) -> None:
    parking = tmp_path / "parked"
    for name in ("r.1", "r.2"):
        (parking / name).mkdir(parents=True)
    for expected in ("r", "r.3"):
        (tmp_path / "r").mkdir()
        assert execute_module._set_aside(tmp_path / "r", parking).name == expected
    assert sorted(p.name for p in parking.iterdir()) == ["r", "r.1", "r.2", "r.3"]


@pytest.mark.parametrize("name", ["report.md", "logs/lambda_max-0.5_seed-0.log", "figures/loss.png",
                                  "figures/final-metrics_ddim50-eta0-ema-n50-train50.png"])
def test_a_file_ablate_did_not_write_is_refused_before_any_job(tmp_path: Path, monkeypatch, capsys, name) -> None:
    """OUT/report.md and OUT/logs/<job>.log are replaced (or, for a log, deleted on success) by a rerun:
    a file of that name ablate did not write is the user's, and is never touched. A figure's name was found only
    after every job had run, and cost the report."""
    spec_path = write_spec(tmp_path)
    mine = tmp_path / "out" / name
    mine.parent.mkdir(parents=True)
    mine.write_text("my notes")
    fake = FakeCLI()
    monkeypatch.setattr(execute_module, "run_command", fake)
    assert main(["ablate", str(spec_path)]) == 2
    what = "figure" if name.startswith("figures/") else "file"
    assert f"{mine} exists and is not a {what} ablate wrote; move it away" in capsys.readouterr().err
    assert mine.read_text() == "my notes" and fake.calls == []


def test_a_picture_of_another_name_in_the_figures_folder_is_left_alone(tmp_path: Path) -> None:
    from dreamctl.experiments.plots import foreign_figures

    (tmp_path / "mine.png").write_bytes(b"not ours, but no figure takes its name")
    (tmp_path / "lambda.png").write_bytes(b"a figure's name")
    assert foreign_figures(tmp_path) == [tmp_path / "lambda.png"] and foreign_figures(tmp_path / "absent") == []


def test_a_run_still_training_is_not_set_aside(tmp_path: Path) -> None:
    """Another ablate of the same spec may be training a run that has no checkpoint yet: it keeps its folder."""
    from dreamctl.errors import RunError
    from dreamctl.training.rundir import RunDir

    run = tmp_path / "r"
    with RunDir(run).lock():  # what its trainer holds
        with pytest.raises(RunError, match=f"{run} is in use by another trainer \\(pid {os.getpid()}\\)"):
            execute_module._set_aside(run, tmp_path / "parked")
    assert run.is_dir() and not (tmp_path / "parked").exists()
    assert execute_module._set_aside(run, tmp_path / "parked") == tmp_path / "parked" / "r"  # once it has stopped



def test_a_run_that_wrote_a_checkpoint_since_the_plan_is_not_set_aside(tmp_path: Path) -> None:
    """Planned as 'restart' (no checkpoint), then another ablate of the spec trained it past its first
    checkpoint: moving it aside now would throw that training away."""
    from dreamctl.errors import RunError
    from dreamctl.training.rundir import RunDir

    run = RunDir(tmp_path / "r")
    run.root.mkdir()
    run.recipe_file.write_text("{}")
    assert execute_module.run_status(run.root) == "restart"
    run.checkpoints.mkdir()
    (run.checkpoints / "step-00000004.pt").write_bytes(b"written by the other ablate")
    with pytest.raises(RunError, match="has a checkpoint now.*run ablate again"):
        execute_module._set_aside(run.root, tmp_path / "parked")
    assert (run.checkpoints / "step-00000004.pt").is_file() and not (tmp_path / "parked").exists()

def test_ctrl_c_while_the_command_modules_load_exits_130_without_a_traceback(monkeypatch, capsys):
    """ablate's jobs share its terminal: a Ctrl-C that lands while a job is still importing printed
    that import's traceback under ablate's own one-line report."""
    import builtins

    from dreamctl.__main__ import run

    real = builtins.__import__

    def interrupted(name, *args, **kwargs):
        if name == "dreamctl.cli":
            raise KeyboardInterrupt
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    assert run() == 130
    assert capsys.readouterr().err == ""


def test_a_job_stops_when_ablate_is_killed(tmp_path: Path) -> None:
    """SIGKILL to ablate alone reaches no handler of its: its running job gets SIGTERM from the kernel
    (child_env, PR_SET_PDEATHSIG) and stops as on any SIGTERM, instead of training on as an orphan."""
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    out = tmp_path / "data"
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys\n"
         "from dreamctl.signals import child_env\n"
         "child = subprocess.Popen([sys.executable, '-m', 'dreamctl', 'prepare-data', '--source', 'synthetic',"
         f" '--count', '500000', '--resolution', '16', '--workers', '1', '--out', {str(out)!r}], env=child_env())\n"
         "print(child.pid, flush=True)\n"
         "child.wait()\n"],
        stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    deadline = time.monotonic() + 300
    while not (out / "progress.json").exists():  # the job is under way
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.2)
    parent.kill()
    parent.wait()

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
        except (FileNotFoundError, IndexError):
            return False

    deadline = time.monotonic() + 120
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    still_running = alive(child)
    if still_running:
        os.kill(child, signal.SIGKILL)  # leave no orphan behind a failing test
    assert not still_running


def test_one_unreadable_run_json_is_named_in_the_report_and_the_others_still_compared(tmp_path: Path) -> None:
    """A run.json cut by a full disk must not cost the report of every other run: it is listed as unreadable."""
    from dreamctl.experiments.execute import write_report

    plan = make_plan(parse_spec(write_spec(tmp_path, grid={"loss.lambda_max": [0.3, 0.5]})))
    result = execute(plan, runner=FakeCLI())
    (tmp_path / "out" / "lambda_max-0.5_seed-0" / "run.json").write_text('{"status": "fini')  # cut mid-write
    report, _ = write_report(plan, result.outcomes)
    text = report.read_text()
    assert "- unreadable run: lambda_max-0.5_seed-0: " in text and "run.json cannot be read" in text
    results = text.split("## Results", 1)[1]
    assert "| lambda_max-0.3_seed-0 |" in results and "| lambda_max-0.5_seed-0 |" not in results


def test_stop_with_parent_ties_only_this_process_to_its_parent_not_grandchildren(monkeypatch) -> None:
    """The parent's pid is taken out of the environment, so a command this one starts is not tied to our parent."""
    from dreamctl import signals

    tied = []
    monkeypatch.setattr(signals, "on_parent_death", lambda signum, parent: tied.append((signum, parent)))
    monkeypatch.setenv(signals.PARENT_PID, "4242")
    signals.stop_with_parent()
    assert tied == [(signal.SIGTERM, 4242)]
    assert signals.PARENT_PID not in os.environ
    assert signals.child_env()[signals.PARENT_PID] == str(os.getpid())  # a child is tied to us, not to 4242
    signals.stop_with_parent()  # nothing left to tie to
    assert tied == [(signal.SIGTERM, 4242)]


def test_run_child_passes_sigterm_on_but_only_notes_ctrl_c(tmp_path: Path) -> None:
    """Ctrl-C already reaches the child via the terminal; sending it again would abort the child's checkpoint."""
    import subprocess

    from dreamctl.signals import run_child

    child = ("import signal, sys, time\n"
             "signal.signal(signal.SIGINT, lambda s, f: sys.exit(7))\n"
             "signal.signal(signal.SIGTERM, lambda s, f: sys.exit(9))\n"
             "print('ready', flush=True)\n"
             "time.sleep(20)\n")

    def use(proc: subprocess.Popen) -> None:
        assert proc.stdout.readline() == b"ready\n"
        os.kill(os.getpid(), signal.SIGINT)  # to this process alone, as if only it had been told
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGTERM)

    start = lambda: subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE)  # noqa: E731
    code, first = run_child(start, use)
    assert (code, first) == (9, signal.SIGINT)  # the child ended on the SIGTERM, never saw the SIGINT


def test_metric_weights_are_not_required_when_every_evaluation_is_already_done(tmp_path: Path) -> None:
    """Re-running a finished ablation (nothing left to evaluate) must not stop on weights it will not load."""
    from dataclasses import replace

    plan = make_plan(parse_spec(write_spec(tmp_path, grid={"loss.lambda_max": [0.3]},
                                           evaluate={"metrics": ["swd", "fid"]})))
    assert "inception" in execute_module.weights_problem(plan)  # fid's weights are absent in tests
    done = replace(plan, evals=tuple(replace(e, action="skip") for e in plan.evals))
    assert execute_module.weights_problem(done) is None
    execute_module.preflight(done)  # no WeightsError


@pytest.mark.parametrize("code, text, shell", [(0, "exit code 0", 0), (2, "exit code 2", 2),
                                               (-9, "killed by SIGKILL (137)", 137), (-15, "killed by SIGTERM (143)", 143),
                                               (-40, "killed by signal 40 (168)", 168)])
def test_a_child_end_is_said_and_coded_as_a_shell_does(code, text, shell) -> None:
    from dreamctl.signals import ended, shell_code

    assert ended(code) == text and shell_code(code) == shell
