"""A run's status as compare reads it: run.json's, except a `running` that no process holds any more."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from dreamctl import atomic
from dreamctl.config import load_recipe, recipe_to_yaml
from dreamctl.experiments.runs import read_run
from dreamctl.training.rundir import RunDir
from tiny_runs import TINY, set_args


def _run_folder(path, **info):
    path.mkdir()
    (path / "recipe.yaml").write_text(recipe_to_yaml(load_recipe("tiny")))
    (path / "run.json").write_text(json.dumps(info))
    return path


def test_running_with_no_process_holding_the_folder_is_killed(tmp_path):
    run = _run_folder(tmp_path / "run", status="running", host=atomic.HOST)
    assert read_run(run).status == "killed"
    with RunDir(run).lock():  # a trainer holds it
        assert read_run(run).status == "running"
    assert read_run(run).status == "killed"
    elsewhere = _run_folder(tmp_path / "copied", status="running", host="another-machine")
    assert read_run(elsewhere).status == "running"  # a copy of a run training elsewhere: not ours to judge
    assert read_run(_run_folder(tmp_path / "done", status="finished", host=atomic.HOST)).status == "finished"


def test_a_trainer_killed_with_sigkill_shows_as_killed(tmp_path, synthetic_data_dir):
    """run.json says `running` until the next resume: nothing was left to record the end."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "dreamctl", "train", "--recipe", "tiny", "--data", str(synthetic_data_dir),
           "--run-dir", str(run), *set_args(TINY + ["train.epochs=1000"])]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (run / "metrics.jsonl").exists():
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.2)
    assert read_run(run).status == "running"  # the probe does not get in the trainer's way
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    assert json.loads((run / "run.json").read_text())["status"] == "running"
    assert read_run(run).status == "killed"


def test_a_probe_at_the_moment_a_trainer_locks_does_not_refuse_it(tmp_path):
    import fcntl
    import os
    import threading

    run = _run_folder(tmp_path / "run", status="created")
    fd = os.open(run / atomic.LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_SH)  # a probe caught holding its shared lock
    threading.Timer(0.05, os.close, [fd]).start()  # and letting go, as it does at once
    with RunDir(run).lock():
        assert atomic.in_use(run)


def test_a_lock_that_cannot_be_probed_leaves_the_status_as_recorded(tmp_path, monkeypatch):
    """No lock support (some network file systems), no permission: compare must not stop on it, nor guess."""
    import errno
    import fcntl

    run = _run_folder(tmp_path / "run", status="running", host=atomic.HOST)
    (run / atomic.LOCK).write_text("")

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    assert read_run(run).status == "running"
