"""Many processes on the CPU (gloo): DDP matches one process, the --nproc-per-node shortcut, and
what a failure under torchrun prints and returns."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from dreamctl.cli import main
from dreamctl.runtime import Runtime
from dreamctl.training.checkpoints import list_checkpoints, load_checkpoint
from dreamctl.training.rundir import RunDir
from tiny_runs import CONSERVATIVE, TINY, assert_identical, final_weights, set_args, train


def test_two_gloo_processes_match_one(tmp_path, synthetic_data_dir):
    """DDP over two CPU processes with the same global batch matches one process to rounding; stopped and
    resumed on two, it is bit for bit the straight run on two (weights, EMA, Adam's moments, the log)."""
    overrides = CONSERVATIVE + ["train.max_steps=10"]
    assert train(tmp_path / "one", synthetic_data_dir, overrides) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "dreamctl"]
    start = base + ["train", "--recipe", "tiny-conservative", "--data", str(synthetic_data_dir)]
    for cmd in (start + ["--run-dir", str(tmp_path / "two"), *set_args(CONSERVATIVE + ["train.max_steps=5"])],
                base + ["resume", str(tmp_path / "two"), "--set", "train.max_steps=10"],
                start + ["--run-dir", str(tmp_path / "straight"), *set_args(overrides)]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    assert one["step"] == two["step"] == 10
    for part in ("model", "ema"):
        for key in one[part]:
            torch.testing.assert_close(two[part][key], one[part][key], rtol=1e-4, atol=1e-5)
    assert_identical(two, final_weights(tmp_path / "straight"))
    adam = [load_checkpoint(list_checkpoints(tmp_path / name / "checkpoints")[-1])["optimizer"]["state"]
            for name in ("two", "straight")]
    assert adam[0] and adam[0].keys() == adam[1].keys()
    for i, state in adam[0].items():  # every moment and step count of every parameter
        assert state.keys() == adam[1][i].keys() and all(torch.equal(v, adam[1][i][k]) for k, v in state.items())
    terms = [{r["step"]: {k: v for k, v in r.items() if k.startswith(("loss", "lambda", "grad_norm"))}
              for r in map(json.loads, (tmp_path / name / "metrics.jsonl").read_text().splitlines())}
             for name in ("two", "straight")]
    assert {s: terms[0][s] for s in terms[1] if s > 6} == {s: v for s, v in terms[1].items() if s > 6}  # from the
    # first log step after the resume's: the log step at 5 ended that interval early
    assert json.loads((tmp_path / "two" / "run.json").read_text())["world_size"] == 2


def test_nproc_per_node_shortcut_starts_torchrun(tmp_path, synthetic_data_dir, monkeypatch, capfd):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = tmp_path / "run"
    args = ["train", "--recipe", "tiny", "--data", str(synthetic_data_dir), "--run-dir", str(run),
            "--nproc-per-node", "2", *set_args(TINY + ["train.max_steps=2"])]
    assert main(args) == 0
    assert json.loads((run / "run.json").read_text())["world_size"] == 2
    assert main(["resume", str(run), "--nproc-per-node", "2", "--set", "train.max_steps=4"]) == 0
    assert final_weights(run)["step"] == 4
    # What the workers would refuse is refused here, once, before torchrun starts.
    assert main(["train", "--recipe", "tiny", "--data", str(tmp_path / "nothing"), "--nproc-per-node", "2"]) == 2
    assert main([*args, "--run-dir", str(tmp_path / "odd"), "--set", "train.batch_size=9"]) == 2
    assert main(args) == 2  # the folder holds a run now
    damaged = tmp_path / "damaged"
    shutil.copytree(synthetic_data_dir, damaged)
    with open(damaged / "train-00000.h5", "r+b") as f:  # the hash sees it; the manifest alone does not
        f.seek(-100, 2)
        byte = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert main([*args, "--data", str(damaged), "--run-dir", str(tmp_path / "d")]) == 2
    assert main([*args, "--run-dir", str(tmp_path / "dev"), "--device", "tpu"]) == 2
    assert main(["resume", str(run), "--nproc-per-node", "2", "--device", "tpu"]) == 2
    out = capfd.readouterr().out
    assert not (tmp_path / "odd").exists() and out.count("starting:") == 2  # the two above
    assert not (tmp_path / "dev").exists() and final_weights(run)["step"] == 4
    assert " 'model.channel_mult=[1,2]' " in out  # quoted for a shell: the line is the command for more nodes


def test_torchrun_shortcut_forwards_a_signal_and_exits_like_one_process(monkeypatch):
    """The --nproc-per-node launcher passes SIGTERM on to torchrun and exits 143, not torchrun's 1."""
    import subprocess as sp

    from dreamctl.cli.launch import launch

    class FakeTorchrun:
        def __init__(self, cmd):
            self.cmd, self.sent, self.returncode = cmd, [], None

        def send_signal(self, signum):
            self.sent.append(signum)

        def __enter__(self):
            return self

        def __exit__(self, *exc):  # Popen's: wait for the child
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while the launcher waits for its workers
            self.returncode = 1

    made = []
    monkeypatch.setattr(sp, "Popen", lambda cmd, env: made.append(FakeTorchrun(cmd)) or made[-1])
    before = signal.getsignal(signal.SIGTERM)
    assert launch(2, ["train", "--recipe", "tiny"]) == 128 + signal.SIGTERM
    assert made[0].sent == [signal.SIGTERM] and "--nproc-per-node=2" in made[0].cmd
    assert signal.getsignal(signal.SIGTERM) is before  # the launcher's handler is gone again


def test_a_failure_of_rank_0_alone_is_one_line_and_exit_2(tmp_path, synthetic_data_dir, monkeypatch, capfd):
    """Only rank 0 claims the run folder. Finding it locked, it tells rank 1, which leaves quietly
    instead of failing in a collective; the shortcut exits 2, as one process would."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = tmp_path / "run"
    args = ["train", "--recipe", "tiny", "--data", str(synthetic_data_dir), "--run-dir", str(run),
            "--nproc-per-node", "2", *set_args(TINY + ["train.max_steps=2"])]
    with RunDir(run).lock():  # another trainer holds the folder
        assert main(args) == 2
    err = capfd.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: {run} is in use by another trainer (pid {os.getpid()}); wait for it to finish or stop it first"]
    assert "[rank1]" not in err and "gloo" not in err  # rank 1 did not fail in a collective
    assert "Traceback" not in err and "ChildFailedError" not in err  # nor torchrun's report of what was said
    assert "failed (exitcode" not in err  # nor its log line per failed worker
    assert not (run / "recipe.yaml").exists()


def test_errors_print_once_per_node(monkeypatch, capsys):
    """Ranks of one node hit the same checks: local rank 0 speaks, naming its rank on other nodes."""
    for env, printed in (({"RANK": "1", "LOCAL_RANK": "1"}, ""),
                         ({"RANK": "8", "LOCAL_RANK": "0"}, "rank 8: error: unknown recipe 'nope'")):
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert main(["train", "--recipe", "nope"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(printed) if printed else err == ""


def test_the_shortcut_prints_what_only_a_silent_rank_hit_and_returns_the_common_code(tmp_path, capsys):
    from dreamctl.cli.launch import workers_code

    def leave(**errors: tuple[int, str | None]) -> None:
        for p in tmp_path.glob("rank-*.json"):
            p.unlink()
        for rank, (code, error) in errors.items():
            (tmp_path / f"{rank.replace('r', 'rank-')}.json").write_text(json.dumps({"code": code, "error": error}))

    leave(r0=(2, "disk full"), r1=(2, "shard train-00001.h5 is truncated"))
    assert workers_code(1, tmp_path, 2) == 2  # torchrun says 1; both workers said 2
    assert capsys.readouterr().err == "rank 1: error: shard train-00001.h5 is truncated\n"  # rank 0 spoke for itself
    leave(r0=(2, "unknown recipe 'nope'"), r1=(2, "unknown recipe 'nope'"))
    assert workers_code(1, tmp_path, 2) == 2 and capsys.readouterr().err == ""  # said once, by rank 0
    leave(r0=(2, "unknown recipe 'nope'"))  # rank 1 died with a traceback: torchrun's code stands
    assert workers_code(1, tmp_path, 2) == 1
    leave(r0=(2, None), r1=(130, None))  # codes that disagree: torchrun's code stands
    assert workers_code(1, tmp_path, 2) == 1
    leave(r0=(0, None), r1=(0, None))
    assert workers_code(0, tmp_path, 2) == 0 and capsys.readouterr().err == ""


def test_torchruns_report_is_kept_only_for_a_rank_that_left_no_exit_code(tmp_path, monkeypatch, capsys):
    import torch.distributed.run
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from dreamctl.cli.common import EXIT_CODES_DIR
    from dreamctl.cli.torchrun import torchrun

    def failed(*args) -> None:  # rank 0 exited 2 after its one-line error; rank 1 was killed (OOM, say)
        raise ChildFailedError("dreamctl", {0: ProcessFailure(0, 100, 2, "<N/A>"), 1: ProcessFailure(1, 101, -9, "<N/A>")})

    monkeypatch.setattr(torch.distributed.run, "run", failed)
    monkeypatch.setenv(EXIT_CODES_DIR, str(tmp_path))
    (tmp_path / "rank-0.json").write_text(json.dumps({"code": 2, "error": "disk full"}))
    assert torchrun(["--standalone", "-m", "dreamctl"]) == 1
    report = capsys.readouterr().err
    assert "exitcode  : -9" in report and "exitcode  : 2" not in report  # the only word of rank 1, and only it
    (tmp_path / "rank-1.json").write_text(json.dumps({"code": 2, "error": "disk full"}))
    assert torchrun(["--standalone", "-m", "dreamctl"]) == 1
    assert capsys.readouterr().err == ""  # both said it themselves


def test_nproc_per_node_below_one_is_refused(tmp_path, capsys):
    for args in (["train", "--recipe", "tiny"], ["resume", str(tmp_path)], ["ablate", str(tmp_path / "spec.yaml")]):
        assert main([*args, "--nproc-per-node", "0"]) == 2, args
        assert "--nproc-per-node" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_under_torchrun_train_needs_a_run_dir(tmp_path, monkeypatch, capsys):
    """A default folder name is read from each process's clock, which may say another second on another
    rank or node: each would train into a folder of its own."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "--recipe", "tiny"]) == 2
    assert "add --run-dir runs/NAME" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def _main_first_worker(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from dreamctl.errors import StoppedWithMain
    from dreamctl.runtime import Runtime, main_first

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    rt = Runtime(torch.device("cpu"), "fp32", rank=rank, world_size=2)

    def claim() -> None:
        raise FileExistsError(17, "File exists", "run/samples")  # not a DreamctlError: a full disk, say

    try:
        main_first(rt, claim)
        raised = "nothing"
    except FileExistsError:
        raised = "FileExistsError"
    except StoppedWithMain:
        raised = "StoppedWithMain"
    torch.save(raised, f"{out}.{rank}")
    dist.barrier()  # both ranks are done with the group: one destroying it under the other's feet can abort gloo
    dist.destroy_process_group()


def test_main_first_tells_every_rank_whatever_rank_0_raised(tmp_path):
    """Any failure of rank 0's action reaches the others as StoppedWithMain (printed by nobody):
    they leave with it instead of waiting in a collective for a rank that is gone."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "raised")
    mp.spawn(_main_first_worker, args=(f"file://{tmp_path / 'store'}", out), nprocs=2, join=True)
    assert [torch.load(f"{out}.{r}", weights_only=True) for r in (0, 1)] == ["FileExistsError", "StoppedWithMain"]


def test_under_plain_torchrun_an_error_reaches_torchruns_report(tmp_path, monkeypatch, capsys):
    """Local rank 1 prints nothing (its node's rank 0 speaks), so an error it hit alone would be lost;
    it goes into torchrun's error file, which torchrun's own report shows for that rank."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    error_file = tmp_path / "error.json"
    for key, value in {"RANK": "1", "LOCAL_RANK": "1", "TORCHELASTIC_ERROR_FILE": str(error_file)}.items():
        monkeypatch.setenv(key, value)
    assert main(["train", "--recipe", "nope"]) == 2 and capsys.readouterr().err == ""
    report = ChildFailedError("dreamctl", {1: ProcessFailure(1, 101, 2, str(error_file))}).format_msg()
    assert "traceback : error: unknown recipe 'nope'" in report
    error_file.unlink()
    assert main(["train", "--help"]) == 0 and not error_file.exists()  # no error, no file


def _as_rank_of_two(rank: int, init: str, out: str, action: Callable[[Runtime], object]) -> None:
    """`action(rt)` as rank `rank` of two gloo processes; what it raised ("nothing" if nothing) goes to OUT.rank."""
    from datetime import timedelta

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2, timeout=timedelta(seconds=60))
    try:
        action(Runtime(torch.device("cpu"), "fp32", rank=rank, world_size=2))
        raised = "nothing"
    except Exception as err:
        raised = type(err).__name__
    torch.save(raised, f"{out}.{rank}")
    dist.barrier()  # both ranks are done with the group: one destroying it under the other's feet can abort gloo
    dist.destroy_process_group()


def _full_disk_worker(rank: int, init: str, data: str, run: str, out: str) -> None:
    from dreamctl.config import load_recipe
    from dreamctl.training import record
    from dreamctl.training.session import start_run

    real = record.save_checkpoint

    def full_disk(ckpt, folder, keep, **kwargs):
        if rank == 0 and ckpt.step == 4:
            raise OSError(28, "No space left on device", str(folder))
        return real(ckpt, folder, keep, **kwargs)

    record.save_checkpoint = full_disk
    recipe = load_recipe("tiny", TINY + ["train.max_steps=8", "train.checkpoint_every=2", f"data.path={data}"])
    _as_rank_of_two(rank, init, out, lambda rt: start_run(recipe, RunDir(Path(run)), rt))


def test_a_write_that_fails_on_rank_0_mid_run_stops_every_rank_cleanly(tmp_path, synthetic_data_dir):
    """Rank 0 alone writes checkpoints, grids and the log: when that fails (a full disk), the other
    ranks learn it at once and leave quietly, instead of failing (or waiting) in the next collective."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "raised")
    mp.spawn(_full_disk_worker, args=(f"file://{tmp_path / 'store'}", str(synthetic_data_dir), str(tmp_path / "run"),
                                      out), nprocs=2, join=True)
    assert [torch.load(f"{out}.{r}", weights_only=True) for r in (0, 1)] == ["OSError", "StoppedWithMain"]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["step"] == 2  # the last checkpoint written


def _resume_full_disk_worker(rank: int, init: str, run: str, out: str) -> None:
    from dreamctl.training.session import resume_run

    if rank == 0:
        def full_disk(self, after_step):
            raise OSError(28, "No space left on device", str(self.metrics_file))
        RunDir.truncate_metrics = full_disk
    _as_rank_of_two(rank, init, out, lambda rt: resume_run(RunDir(Path(run)), rt, ["train.max_steps=8"]))


def test_a_write_that_fails_on_rank_0_at_resume_stops_every_rank_cleanly(tmp_path, synthetic_data_dir):
    """What resume records before training (the log cut back, run.json, recipe.yaml) is rank 0's alone: a
    failure there reaches the other ranks at once, not as a lost peer once rank 0's process has gone."""
    import torch.multiprocessing as mp

    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=4", "train.checkpoint_every=2"], "tiny") == 0
    out = str(tmp_path / "raised")
    mp.spawn(_resume_full_disk_worker, args=(f"file://{tmp_path / 'store'}", str(run), out), nprocs=2, join=True)
    assert [torch.load(f"{out}.{r}", weights_only=True) for r in (0, 1)] == ["OSError", "StoppedWithMain"]


def _data_missing_worker(rank: int, init: str, data: str, run: str, out: str) -> None:
    from dreamctl.config import load_recipe
    from dreamctl.training.session import start_run

    where = data if rank == 0 else f"{data}-not-on-this-node"  # the path as the other node sees it
    recipe = load_recipe("tiny", TINY + ["train.max_steps=2", f"data.path={where}"])
    _as_rank_of_two(rank, init, out, lambda rt: start_run(recipe, RunDir(Path(run)), rt))


def test_data_missing_on_one_node_leaves_no_run_folder(tmp_path, synthetic_data_dir):
    """A plain retry of `train` must work once the data is there: no folder claimed by rank 0 meanwhile."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "raised")
    mp.spawn(_data_missing_worker, args=(f"file://{tmp_path / 'store'}", str(synthetic_data_dir),
                                         str(tmp_path / "run"), out), nprocs=2, join=True)
    assert [torch.load(f"{out}.{r}", weights_only=True) for r in (0, 1)] == ["RunError", "DataError"]
    assert not (tmp_path / "run").exists()


def test_the_shortcut_drops_torchruns_per_worker_lines_only():
    import logging

    from dreamctl.cli.torchrun import _WorkerFailedLines

    def kept(msg: str) -> bool:
        return _WorkerFailedLines().filter(logging.LogRecord("x", logging.WARNING, "f", 1, msg, (), None))

    assert not kept("failed (exitcode: %s) local_rank: %s (pid: %s) of binary: %s")
    assert not kept("Sending process %s closing signal %s")
    assert kept("Unable to shutdown process %s via %s, forcefully exiting via %s")  # killed at the timeout


def _peer_worker(rank: int, init: str, run: str, out: str, silent_s: float) -> None:
    """Rank 1 leaves (at once, as a worker killed by SIGKILL or the OOM killer; or after `silent_s` without a
    word, as a hang); rank 0 waits for it in a collective under run_training and saves what it said."""
    import torch.distributed as dist

    from dreamctl.cli.progress import run_training
    from dreamctl.errors import PeerLost
    from dreamctl.runtime import TIMEOUT_ENV, Runtime, collective_timeout

    # what torchrun sets (resume_command reads them), and a 2 s timeout where rank 1 is to outstay it
    os.environ.update({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", TIMEOUT_ENV: "2" if silent_s else "60"})
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2, timeout=collective_timeout())
    dist.barrier()
    if rank == 1:
        time.sleep(silent_s)
        os._exit(0)

    def session(on_event, should_stop) -> str:
        dist.all_reduce(torch.ones(4))  # waits for rank 1, which never comes
        return "finished"

    try:
        run_training(Path(run), Runtime(torch.device("cpu"), "fp32", rank=0, world_size=2), session)
        said = "nothing"
    except PeerLost as err:
        said = str(err)
    torch.save(said, out)


def test_a_process_that_dies_mid_run_is_one_line_on_the_others(tmp_path):
    """When a worker dies (SIGKILL, out of memory), the survivors' collective fails: that is one line
    saying so and how to go on, exit code 1, instead of gloo's traceback through the training loop."""
    import torch.multiprocessing as mp

    from dreamctl.errors import PeerLost

    out = str(tmp_path / "said")
    mp.spawn(_peer_worker, args=(f"file://{tmp_path / 'store'}", str(tmp_path / "run"), out, 0), nprocs=2,
             join=True)
    said = torch.load(out, weights_only=True)
    assert said.startswith("lost contact with another process of this job (") and "peer" in said
    assert "gloo" not in said and said.endswith(f"continue with `dreamctl resume {tmp_path / 'run'} "
                                                f"--nproc-per-node 2`")
    assert PeerLost.exit_code == 1


def test_a_process_that_hangs_is_one_line_on_the_others_after_the_timeout(tmp_path):
    """A silent peer ends the others' collective at the timeout (DREAMCTL_COLLECTIVE_TIMEOUT_S, here 2 s):
    one line saying what may be wrong and how to go on, not gloo's traceback (crash audit F1)."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "said")
    mp.spawn(_peer_worker, args=(f"file://{tmp_path / 'store'}", str(tmp_path / "run"), out, 8), nprocs=2,
             join=True)
    said = torch.load(out, weights_only=True)
    assert said.startswith("another process of this job did not answer within 0:00:02 (Timed out waiting 2000ms")
    assert "gloo" not in said and "\n" not in said
    assert said.endswith(f"continue with `dreamctl resume {tmp_path / 'run'} --nproc-per-node 2` "
                         "(DREAMCTL_COLLECTIVE_TIMEOUT_S sets the wait)")


@pytest.mark.parametrize("value", ["0", "-5", "ten", "inf", "nan", "1e20", "0.0001"])  # 1e20: timedelta's overflow
def test_a_bad_collective_timeout_is_named(monkeypatch, value):
    from dreamctl.errors import RunError
    from dreamctl.runtime import TIMEOUT_ENV, collective_timeout

    monkeypatch.setenv(TIMEOUT_ENV, value)
    with pytest.raises(RunError, match=f"DREAMCTL_COLLECTIVE_TIMEOUT_S='{value}': give the seconds"):
        collective_timeout()
    monkeypatch.setenv(TIMEOUT_ENV, "90")
    assert collective_timeout().total_seconds() == 90


def test_only_a_failed_collective_is_called_a_lost_process(monkeypatch, capsys):
    """Any other RuntimeError under torchrun is a bug and keeps its traceback; a lost process that reaches
    main (train's before its run exists: run_training names the run after that) says to run it again."""
    import pytest

    from dreamctl.runtime import Runtime

    monkeypatch.setenv("WORLD_SIZE", "2")  # a worker of torchrun, whose process group is not needed here
    monkeypatch.setattr("dreamctl.runtime.setup", lambda *args: Runtime(torch.device("cpu"), "fp32", 0, 2))

    def failing(message: str):
        def run_training(*args, **kwargs):
            raise RuntimeError(message)
        return run_training

    for bug in ("mat1 and mat2 shapes cannot be multiplied",  # and gloo's own, from ranks out of step:
                "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:446] op.preamble.length <= op.nbytes. 4 vs 8",
                ""):
        monkeypatch.setattr("dreamctl.cli.train.run_training", failing(bug))
        with pytest.raises(RuntimeError):
            main(["train", "--recipe", "tiny", "--run-dir", "unused", "--set", "data.path=unused"])
    # A peer lost, or one that does not answer (a hang): one line each, since neither is a bug of ours
    for message, said in (
        ("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:14758. "
         "This is typically caused by a remote worker crashing.",
         "error: lost contact with another process of this job (Connection closed by peer [127.0.0.1]:14758): "
         "it crashed or was stopped, and said why above if it could; what was finished is kept: "
         "run the same command again to go on"),
        ("[/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 1800000ms",
         "error: another process of this job did not answer within 0:30:00 (Timed out waiting 1800000ms): it hangs, "
         "is stopped (SIGSTOP), or its node is cut off; stop it if it still runs; what was finished is kept: run the "
         "same command again to go on (DREAMCTL_COLLECTIVE_TIMEOUT_S sets the wait)")):
        monkeypatch.setattr("dreamctl.cli.train.run_training", failing(message))
        assert main(["train", "--recipe", "tiny", "--run-dir", "unused", "--set", "data.path=unused"]) == 1
        assert capsys.readouterr().err.strip() == said


def test_the_shortcut_exits_like_a_shell_when_torchrun_is_killed(monkeypatch):
    """torchrun killed outright (SIGKILL, the OOM killer) is 128 + 9 as a shell says, not 256 - 9 = 247."""
    import subprocess as sp

    from dreamctl.cli.launch import launch
    from dreamctl.signals import PARENT_PID

    class KilledTorchrun:
        def __init__(self, env):
            self.env, self.returncode = env, None

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.returncode = -signal.SIGKILL

    made = []
    monkeypatch.setattr(sp, "Popen", lambda cmd, env: made.append(KilledTorchrun(env)) or made[-1])
    assert launch(2, ["train", "--recipe", "tiny"]) == 128 + signal.SIGKILL
    assert made[0].env[PARENT_PID] == str(os.getpid())  # torchrun gets SIGTERM should this process die


_TIED_WORKER = """
import os, signal, sys, time
from dreamctl.signals import stop_with_parent
def stopped(*a):  # written whole, then renamed: the test must not read the file between its creation and write
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write("SIGTERM")
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    sys.exit(0)
signal.signal(signal.SIGTERM, stopped)
stop_with_parent()
open(sys.argv[1] + ".up", "w").write(str(os.getppid()))
time.sleep(60)
"""


def test_workers_stop_with_a_checkpoint_when_the_shortcuts_torchrun_is_killed(tmp_path):
    """torchrun starts each worker in a session of its own: a SIGKILL of the shortcut's process group
    kills torchrun but not them, and they trained on to the end unwatched. Now each worker is tied
    to torchrun and gets SIGTERM (its checkpoint) when torchrun dies."""
    import time

    from dreamctl.cli.common import EXIT_CODES_DIR

    worker, marker = tmp_path / "worker.py", tmp_path / "stopped"
    worker.write_text(_TIED_WORKER)
    env = {**os.environ, EXIT_CODES_DIR: str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "dreamctl.cli.torchrun", "--standalone", "--nproc-per-node=1",
                             str(worker), str(marker)], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not Path(f"{marker}.up").is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert Path(f"{marker}.up").read_text() == str(proc.pid)  # the worker's parent is torchrun
        proc.kill()
        proc.wait()
        while not marker.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.read_text() == "SIGTERM"
    finally:
        proc.kill()


def test_a_worker_whose_shortcut_is_gone_exits_without_a_traceback(tmp_path, monkeypatch, capsys):
    """The shortcut removes the folder of exit codes when it ends: a worker stopping later (its shortcut
    killed) has no one to tell and must not fail writing there."""
    from dreamctl.cli.common import EXIT_CODES_DIR

    monkeypatch.setenv(EXIT_CODES_DIR, str(tmp_path / "gone"))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert main(["train", "--recipe", "nope"]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err and not (tmp_path / "gone").exists()


_COUNTING_WORKER = """
import signal, sys, time
received = []
def note(signum, frame):
    received.append(signum)
    open(sys.argv[1], "w").write(str(len(received)))
signal.signal(signal.SIGINT, note)
open(sys.argv[1] + ".up", "w").write("up")
deadline = time.monotonic() + 20
while len(received) < 2 and time.monotonic() < deadline:
    time.sleep(0.05)
"""


def test_a_second_ctrl_c_reaches_the_shortcuts_workers(tmp_path):
    """torchrun starts its workers out of the terminal's reach and passes on only the first signal, so
    a second Ctrl-C (abort without a checkpoint) stopped at torchrun and the workers checkpointed anyway."""
    import time

    from dreamctl.cli.common import EXIT_CODES_DIR

    worker, marker = tmp_path / "worker.py", tmp_path / "signals"
    worker.write_text(_COUNTING_WORKER)
    proc = subprocess.Popen([sys.executable, "-m", "dreamctl.cli.torchrun", "--standalone", "--nproc-per-node=1",
                             str(worker), str(marker)], env={**os.environ, EXIT_CODES_DIR: str(tmp_path)},
                            cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_for(path: Path, text: str) -> None:
        deadline = time.monotonic() + 60
        while not (path.is_file() and path.read_text() == text) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert path.read_text() == text

    try:
        wait_for(Path(f"{marker}.up"), "up")
        proc.send_signal(signal.SIGINT)  # the terminal's Ctrl-C reaches torchrun, not the workers
        wait_for(marker, "1")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 128 + signal.SIGINT
        assert marker.read_text() == "2"
    finally:
        proc.kill()


_KILLED_TORCHRUN = """
import os, signal, subprocess, sys
# a worker that, like the real ones on torchrun's death, takes a while to write its checkpoint
subprocess.Popen([sys.executable, "-c", "import sys, time; time.sleep(1.5); open(sys.argv[1], 'w').write('saved')",
                  sys.argv[1]])
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_shortcut_waits_for_the_workers_of_a_killed_torchrun(tmp_path, monkeypatch, capsys):
    """torchrun killed outright: its workers, tied to it, write their checkpoint; the shortcut returned at once
    and a `resume` right after found the run still locked by them."""
    import subprocess as sp

    from dreamctl.cli.launch import launch

    saved, real = tmp_path / "saved", sp.Popen
    monkeypatch.setattr(sp, "Popen", lambda cmd, env: real([sys.executable, "-c", _KILLED_TORCHRUN, str(saved)], env=env))
    assert launch(2, ["train", "--recipe", "tiny"]) == 128 + signal.SIGKILL
    assert saved.read_text() == "saved"  # waited for
    assert "torchrun was killed by SIGKILL (137): waiting for its workers" in capsys.readouterr().err


def _signal_worker(rank: int, init: str, run: str, out: str) -> None:
    import torch.distributed as dist
    import typer

    from dreamctl.cli.progress import run_training
    from dreamctl.runtime import any_rank

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    rt = Runtime(torch.device("cpu"), "fp32", rank=rank, world_size=2)

    def session(on_event, should_stop) -> str:  # a scheduler pre-empts rank 1's node alone
        if rank == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return "interrupted" if any_rank(should_stop(), rt) else "finished"

    try:
        run_training(Path(run), rt, session)
        code = 0
    except typer.Exit as exit:
        code = exit.exit_code
    torch.save(code, f"{out}.{rank}")


def test_a_sigterm_to_one_worker_is_every_workers_exit_code(tmp_path):
    """Rank 0 exited 130 (SIGINT, its default) and rank 1 143, so torchrun's code stayed 1: a pre-empted node's
    clean, requeue-able stop read as a failure (dist review F3)."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "code")
    mp.spawn(_signal_worker, args=(f"file://{tmp_path / 'store'}", str(tmp_path / "run"), out), nprocs=2, join=True)
    assert [torch.load(f"{out}.{r}", weights_only=True) for r in (0, 1)] == [143, 143]


def _non_finite_worker(rank: int, init: str, run: str, out: str) -> None:
    import torch.distributed as dist

    from dreamctl.config import load_recipe
    from dreamctl.training.loop import non_finite

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    rt = Runtime(torch.device("cpu"), "fp32", rank=rank, world_size=2)
    stats = {"loss": torch.tensor([1.0, float("nan")][rank]), "loss_std": torch.tensor(2.0 + rank)}
    torch.save(str(non_finite(stats, 3, 0, RunDir(run), load_recipe("tiny"), rt)), f"{out}.{rank}")
    dist.barrier()
    dist.destroy_process_group()


def test_a_non_finite_step_names_the_steps_loss_not_rank_0s_share(tmp_path):
    """Rank 1's batch went NaN; rank 0, the one that prints, reported its own finite loss (dist review F4)."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "said")
    mp.spawn(_non_finite_worker, args=(f"file://{tmp_path / 'store'}", str(tmp_path / "run"), out), nprocs=2,
             join=True)
    said = [torch.load(f"{out}.{r}", weights_only=True) for r in (0, 1)]
    assert said[0] == said[1]
    assert said[0].startswith("non-finite loss or gradient at step 3 (epoch 0): {'loss': nan, 'loss_std': 2.5}; ")


def _update_worker(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist
    from torch import nn

    from dreamctl.config import OptimConfig
    from dreamctl.training.loop import update
    from dreamctl.training.state import TrainState

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    rt = Runtime(torch.device("cpu"), "fp32", rank=rank, world_size=2)
    torch.manual_seed(0)
    model, ema = nn.Linear(4, 4), nn.Linear(4, 4).requires_grad_(False)
    state = TrainState(model, ema, torch.optim.SGD(model.parameters(), lr=0.1))
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.ones_like(p)  # finite on both ranks: only rank 1's loss is not
    said = []
    for loss in ([1.0, float("nan")][rank], 1.0):  # the second step is finite everywhere: both take it
        grad_norm = update(state, list(model.parameters()), OptimConfig(grad_clip=None), 0, torch.tensor(loss), rt)
        said.append((grad_norm is None, all(torch.equal(b, p) for b, p in zip(before, model.parameters()))))
    torch.save(said, f"{out}.{rank}")
    dist.barrier()
    dist.destroy_process_group()


def test_a_step_that_is_not_finite_on_one_rank_is_taken_on_none(tmp_path):
    """The finiteness flag is reduced on the device (one wait, not two): a NaN loss on rank 1 alone still skips
    the step on rank 0, whose own loss is finite, and a finite step after it is taken on both."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "said")
    mp.spawn(_update_worker, args=(f"file://{tmp_path / 'store'}", out), nprocs=2, join=True)
    said = [torch.load(f"{out}.{r}", weights_only=True) for r in (0, 1)]
    assert said == [[(True, True), (False, False)]] * 2


def _resume_check_worker(rank: int, init: str, run: str, out: str) -> None:
    import torch.distributed as dist

    from dreamctl.errors import DataError
    from dreamctl.training import session

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    rt = Runtime(torch.device("cpu"), "fp32", rank=rank, world_size=2)
    if rank == 1:  # this node lacks the run's data
        def no_data(*args, **kwargs):
            raise DataError("the run's data folder /data/celeba64 is not there")
        session.check_resume = no_data
    try:
        session.resume_run(RunDir(run), rt)
        said = "resumed"
    except Exception as err:
        said = f"{type(err).__name__}: {err}"
    torch.save(said, f"{out}.{rank}")
    dist.barrier()
    dist.destroy_process_group()


def test_a_resume_whose_data_one_node_lacks_is_that_nodes_error_on_every_rank(tmp_path, synthetic_data_dir):
    """Rank 0 reported a lost peer (exit 1) and the real error was only in torchrun's report (dist review F2)."""
    import torch.multiprocessing as mp

    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=2"], recipe="tiny") == 0
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    out = str(tmp_path / "said")
    mp.spawn(_resume_check_worker, args=(f"file://{tmp_path / 'store'}", str(run), out), nprocs=2, join=True)
    said = [torch.load(f"{out}.{r}", weights_only=True) for r in (0, 1)]
    assert said[0].startswith(f"RunError: rank 0: checking {run} and opening its data failed on another process")
    assert said[1] == "DataError: the run's data folder /data/celeba64 is not there"
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # nothing claimed or rewritten
