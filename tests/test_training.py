"""train and resume: exact resume, faults, locks, signals (tiny model, CPU)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dreamctl.cli import main
from dreamctl.diffusion import losses
from dreamctl.training.checkpoints import list_checkpoints, load_checkpoint, read_checkpoint
from tiny_runs import CONSERVATIVE, TINY, assert_identical, final_weights, set_args, train


def test_resume_is_bit_exact_across_epoch_and_dream_start(tmp_path, synthetic_data_dir):
    assert train(tmp_path / "straight", synthetic_data_dir, CONSERVATIVE + ["train.max_steps=12"]) == 0
    assert train(tmp_path / "split", synthetic_data_dir, CONSERVATIVE + ["train.max_steps=6"]) == 0
    assert main(["resume", str(tmp_path / "split"), "--set", "train.max_steps=12"]) == 0
    straight, split = final_weights(tmp_path / "straight"), final_weights(tmp_path / "split")
    assert straight["step"] == 12
    assert_identical(straight, split)
    info = json.loads((tmp_path / "split" / "run.json").read_text())
    assert info["status"] == "finished" and info["images_seen"] == 12 * 8
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 8, 10, 12]
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert "loss_rect" not in records[3] and records[4]["loss_rect"] > 0  # DREAM from step 8 (epoch 1)
    assert {"loss_q0", "lr", "grad_norm", "img_per_s", "peak_memory_bytes", "images_seen"} <= set(records[0])


@pytest.mark.parametrize("recipe,extra", [("tiny-dream", []), ("tiny", ["loss.kind=input_perturbation"])])
def test_resume_is_bit_exact_with_dropout_for_dream_and_ddpm_ip(tmp_path, synthetic_data_dir, recipe, extra):
    """Dropout and DDPM-IP's xi draw from the global RNG, reseeded from (seed, step, rank) before each step
    (checkpoints hold no RNG state): a resumed run draws what the straight run drew."""
    overrides = TINY + extra + ["model.dropout=0.1"]
    assert train(tmp_path / "straight", synthetic_data_dir, overrides + ["train.max_steps=6"], recipe=recipe) == 0
    assert train(tmp_path / "split", synthetic_data_dir, overrides + ["train.max_steps=3"], recipe=recipe) == 0
    assert main(["resume", str(tmp_path / "split"), "--set", "train.max_steps=6"]) == 0
    assert_identical(final_weights(tmp_path / "straight"), final_weights(tmp_path / "split"))


def test_the_checkpointed_ema_is_the_decayed_average_of_the_trained_weights(tmp_path, synthetic_data_dir):
    """ema_k = decay_k * ema_(k-1) + (1 - decay_k) * model_k after every step, with the warm-up decay."""
    from dreamctl.config import load_recipe
    from dreamctl.training.loop import ema_decay_at

    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=3", "train.checkpoint_every=1",
                                                  "train.keep_checkpoints=3"], recipe="tiny") == 0
    ckpts = [load_checkpoint(p) for p in list_checkpoints(run / "checkpoints")]
    optim = load_recipe(run / "recipe.yaml").optim
    for before, after in zip(ckpts, ckpts[1:]):
        decay = ema_decay_at(before["step"], optim)
        assert 0 < decay < 1
        for key, ema in after["ema"].items():
            expected = torch.lerp(before["ema"][key], after["model"][key], 1 - decay)
            torch.testing.assert_close(ema, expected, rtol=1e-6, atol=1e-7)
        assert any(not torch.equal(after["ema"][k], after["model"][k]) for k in after["model"])


def test_nan_loss_stops_without_poisoned_checkpoint(tmp_path, synthetic_data_dir, monkeypatch, capsys):
    real = losses.LOSSES["standard"].fn
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan"), stats) if calls["n"] == 6 else (loss, stats)

    monkeypatch.setitem(losses.LOSSES, "standard", dataclasses.replace(losses.LOSSES["standard"], fn=poisoned))
    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.checkpoint_every=1"], recipe="tiny") == 2
    err = capsys.readouterr().err
    assert "non-finite loss or gradient at step 5" in err and "no checkpoint written" in err
    assert f"dreamctl resume {run} --set optim.lr=" in err  # advice that resume accepts
    assert [p.name for p in list_checkpoints(run / "checkpoints")][-1] == "step-00000005.pt"
    for ckpt_path in list_checkpoints(run / "checkpoints"):
        ckpt = load_checkpoint(ckpt_path)
        assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert json.loads((run / "run.json").read_text())["status"] == "failed"


def test_run_folder_lock_and_no_overwrite(tmp_path, synthetic_data_dir, capsys):
    from dreamctl.training.rundir import RunDir

    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=2"], recipe="tiny") == 0
    recipe_before = (run / "recipe.yaml").read_text()
    assert train(run, synthetic_data_dir, TINY, recipe="tiny") == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run / "recipe.yaml").read_text() == recipe_before
    with RunDir(run).lock():
        assert main(["resume", str(run), "--set", "train.max_steps=4"]) == 2
    assert "in use by another trainer" in capsys.readouterr().err
    # Without run.json the run has lost its identity: resume refuses, and writes no anonymous one.
    (run / "run.json").rename(tmp_path / "run.json.saved")
    listing = sorted(p.relative_to(run) for p in run.rglob("*"))
    assert main(["resume", str(run)]) == 2
    assert "run.json is missing or holds no run_id: restore it" in capsys.readouterr().err
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == listing


def test_train_starts_only_in_a_new_empty_or_half_created_folder(tmp_path, synthetic_data_dir, capsys):
    """A run's files never go among other files (a data folder, the user's own recipe.yaml), and the refusal
    names what is there instead of calling it a run to resume; a folder that `train` was killed while
    creating (its lock, run.json, empty subfolders, the temporary file of the write it cut short, a writability
    probe) is taken over."""
    import socket

    from conftest import dead_pid

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "recipe.yaml").write_text("extends: tiny\n")
    (theirs / "manifest.json").write_text("{}")
    assert train(theirs, synthetic_data_dir, TINY + ["train.max_steps=1"], recipe="tiny") == 2
    err = capsys.readouterr().err
    assert "holds files that are not a new run's (manifest.json, recipe.yaml)" in err and "resume" not in err
    assert sorted(p.name for p in theirs.iterdir()) == ["manifest.json", "recipe.yaml"]  # nothing added
    half = tmp_path / "half"
    for sub in ("checkpoints", "samples"):
        (half / sub).mkdir(parents=True)
    (half / "run.json").write_text('{"status": "created"}')
    (half / ".lock").write_text("")
    for probe in (half / ".write-check-k1ll3d00", half / "checkpoints" / ".write-check-k1ll3d01"):
        probe.write_text("")  # a kill between check_writable's create and delete
    killed_writing = tmp_path / "killed-writing"  # killed while writing its first run.json
    (killed_writing / f".run.json.{dead_pid()}@{socket.gethostname()}.tmp").parent.mkdir()
    (killed_writing / f".run.json.{dead_pid()}@{socket.gethostname()}.tmp").write_text('{"run_id"')
    for sub in ("checkpoints", "samples"):
        (killed_writing / sub).mkdir()
    (half / f".recipe.yaml.{dead_pid()}@{socket.gethostname()}.tmp").write_text("name: ti")  # and recipe.yaml
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (half, killed_writing, empty):
        assert train(folder, synthetic_data_dir, TINY + ["train.max_steps=1"], recipe="tiny") == 0, folder
        assert (folder / "recipe.yaml").is_file() and (folder / "checkpoints" / "step-00000001.pt").is_file()
        assert not list(folder.glob(".*.tmp"))  # cleared by the writes they were the start of


def test_a_second_ctrl_c_says_the_run_goes_on_from_its_newest_checkpoint(tmp_path, capsys):
    """The abort left the terminal without a word after the first signal's promise of a checkpoint."""
    from dreamctl.cli.progress import run_training
    from tiny_runs import CPU

    def aborted(**kwargs):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(tmp_path / "run", CPU, aborted)
    assert capsys.readouterr().out.strip() == (f"aborted without a checkpoint of this step; continue from the newest "
                                               f"with:  dreamctl resume {tmp_path / 'run'}")


@pytest.mark.parametrize("resuming,started,said", [(True, False, "stopping before the first step"),
                                                    (True, True, "finishing this step"),
                                                    (False, False, "finishing this step")])
def test_the_first_stop_says_what_it_will_do(resuming, started, said, tmp_path, capfd):
    """A resume stopped while it loads trains no step (loop.train): its first line said "finishing this step
    and writing a checkpoint" all the same. Once training has started, or in a new run, it does finish a step."""
    import typer

    from dreamctl.cli.progress import run_training
    from tiny_runs import CPU

    def session(on_event, should_stop):
        if started:
            on_event("start", {"step": 2, "total_steps": 6, "steps_per_epoch": 3})
        os.kill(os.getpid(), signal.SIGTERM)
        assert should_stop()
        if started:
            on_event("step", {"step": 3})
        return "interrupted"

    with pytest.raises(typer.Exit) as stopped:
        run_training(tmp_path / "run", CPU, session, resuming=resuming)
    assert stopped.value.exit_code == 143
    printed = capfd.readouterr()
    assert printed.err.strip().splitlines()[0].startswith(f"SIGTERM: {said}")
    # The last line: no step taken, no checkpoint written (crash audit 7: it said "stopped with a checkpoint").
    assert " ".join(printed.out.split()).startswith("stopped with a checkpoint" if started else
                                                    "stopped before the first step, no checkpoint written; continue")


def test_a_stop_that_comes_during_a_scheduled_checkpoint_stops_at_that_step(tmp_path, synthetic_data_dir):
    """A scheduler's SIGTERM while step 4's checkpoint is written: the step is saved, so the run stops there.
    The stop was asked before the write, so the run trained step 5 and wrote a second checkpoint, in the
    scheduler's grace period, rotating out an older one."""
    from dreamctl.config import load_recipe
    from dreamctl.training.rundir import RunDir
    from dreamctl.training.session import start_run
    from tiny_runs import CPU

    saved: list[int] = []
    recipe = load_recipe("tiny", [*TINY, f"data.path={synthetic_data_dir}"])
    status = start_run(recipe, RunDir(tmp_path / "run"), CPU, should_stop=lambda: bool(saved),
                       on_event=lambda kind, payload: saved.append(payload["step"]) if kind == "checkpoint" else None)
    assert (status, saved) == ("interrupted", [4])
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step-00000004.pt"]


def test_a_stop_while_resume_loads_its_checkpoint_trains_and_writes_nothing(tmp_path, synthetic_data_dir):
    """The loaded checkpoint is the state: a SIGTERM that came while it was read stops before the first step.
    It trained one step and wrote a second full checkpoint, in a scheduler's grace period (crash audit F2)."""
    from dreamctl.training.rundir import RunDir
    from dreamctl.training.session import resume_run
    from tiny_runs import CPU

    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=2"], recipe="tiny") == 0
    steps: list[int] = []
    status = resume_run(RunDir(run), CPU, ["train.max_steps=6"], should_stop=lambda: True,
                        on_event=lambda kind, payload: steps.append(payload["step"]) if kind == "step" else None)
    assert (status, steps) == ("interrupted", [])
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000002.pt"]
    info = json.loads((run / "run.json").read_text())
    assert (info["status"], info["step"]) == ("interrupted", 2)
    assert main(["resume", str(run)]) == 0  # and goes on from there
    assert json.loads((run / "run.json").read_text())["step"] == 6
    # A finished run has nothing to train: a stop while it is resumed as it was leaves it finished (diff review)
    assert resume_run(RunDir(run), CPU, should_stop=lambda: True) == "finished"
    assert json.loads((run / "run.json").read_text())["status"] == "finished"


def test_a_resume_on_other_processes_or_threads_says_so_and_run_json_keeps_both(tmp_path, synthetic_data_dir,
                                                                               monkeypatch, capsys):
    """Another thread count (or number of processes) changes the order of float sums: the resume is exact only
    to rounding. It said nothing, and run.json's world_size became the last session's (crash audit F4, F5)."""
    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=2"], recipe="tiny") == 0
    first = json.loads((run / "run.json").read_text())
    threads = torch.get_num_threads()
    assert (first["world_size"], first["threads"]) == (1, threads)
    capsys.readouterr()
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads + 5)
    assert main(["resume", str(run), "--set", "train.max_steps=4"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"note: threads {threads} until now, {threads + 5} in this resume: the same images and noise" in out
    assert f"to continue bit for bit, resume on {threads} threads per process (OMP_NUM_THREADS={threads})" in out
    assert "world size" not in out  # unchanged, not named
    info = json.loads((run / "run.json").read_text())
    assert (info["world_size"], info["threads"]) == (1, threads)  # the start's
    assert info["resumes"] == [{"step": 2, "set": ["train.max_steps=4"], "world_size": 1, "threads": threads + 5}]
    assert main(["resume", str(run), "--set", "train.max_steps=6"]) == 0  # the same as the last session: no note
    assert "note:" not in capsys.readouterr().out
    # What wrote the checkpoint counts, not run.json's last resume: one killed before its first checkpoint
    # (recorded with other threads) changes nothing that is resumed from (diff review).
    info = json.loads((run / "run.json").read_text())
    info["resumes"].append({"step": 6, "set": [], "world_size": 1, "threads": threads + 9})
    (run / "run.json").write_text(json.dumps(info))
    assert main(["resume", str(run), "--set", "train.max_steps=8"]) == 0
    assert "note:" not in capsys.readouterr().out


def test_resuming_a_finished_run_as_it_was_records_no_resume(tmp_path, synthetic_data_dir):
    """It trains nothing; each such call added a resume at the last step to run.json. With an override
    (more epochs, say) it is a resume and is recorded."""
    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=2"], recipe="tiny") == 0
    for _ in range(2):
        assert main(["resume", str(run)]) == 0
    info = json.loads((run / "run.json").read_text())
    assert (info["status"], info["step"], info.get("resumes", [])) == ("finished", 2, [])
    assert main(["resume", str(run), "--set", "train.max_steps=3"]) == 0
    assert [r["set"] for r in json.loads((run / "run.json").read_text())["resumes"]] == [["train.max_steps=3"]]


def test_resume_refuses_a_sample_section_that_starts_where_x_t_is_still_image(tmp_path, synthetic_data_dir, capsys):
    """sample.* may change on resume, and the progress grids draw with it: 600 DDIM steps would start them at t = 599."""
    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=2"], recipe="tiny") == 0
    before = (run / "recipe.yaml").read_text()
    assert main(["resume", str(run), "--set", "sample.t_start=null", "--set", "sample.steps=600",
                 "--set", "train.max_steps=4"]) == 2
    assert "starts 600 steps, which do not divide T = 1000, at t = 599" in capsys.readouterr().err
    assert (run / "recipe.yaml").read_text() == before and json.loads((run / "run.json").read_text())["step"] == 2


def test_resume_with_new_settings_writes_them_before_recording_the_change(tmp_path, synthetic_data_dir,
                                                                         monkeypatch):
    """A stop between the two writes must not leave run.json saying `optim.lr` changed while recipe.yaml, what
    the next resume trains with, still holds the old value (compare would then group the run by a change not made)."""
    import errno

    from dreamctl.training.rundir import RunDir

    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=2"], recipe="tiny") == 0
    update = RunDir.update_info

    def full_disk_at_the_record(self, info):
        if "resumes" in info:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.run_file))
        return update(self, info)

    monkeypatch.setattr(RunDir, "update_info", full_disk_at_the_record)
    assert main(["resume", str(run), "--set", "optim.lr=0.0005", "--set", "train.max_steps=4"]) == 2
    assert "lr: 0.0005" in (run / "recipe.yaml").read_text()
    assert "resumes" not in json.loads((run / "run.json").read_text())


def test_resume_refuses_overrides_that_change_the_past(tmp_path, synthetic_data_dir, capsys):
    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=2"], recipe="tiny") == 0
    assert main(["resume", str(run), "--set", "train.batch_size=4"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "resume cannot change 'train.batch_size'" in err and "sample.*, eval.*, data.path" in err  # not "sample.,"
    assert main(["resume", str(run), "--set", "loss.kind=dream"]) == 2
    assert "resume cannot change 'loss.kind'" in capsys.readouterr().err
    recipe_before = (run / "recipe.yaml").read_text()
    assert main(["resume", str(run), "--set", "train.max_steps=1"]) == 2
    assert "cannot shorten a run" in capsys.readouterr().err and (run / "recipe.yaml").read_text() == recipe_before
    assert main(["resume", str(run), "--set", "train.nosuch=1"]) == 2
    assert "train.nosuch: unknown key" in capsys.readouterr().err
    assert main(["resume", str(tmp_path / "nothing-here")]) == 2


def test_resume_may_lower_the_learning_rate_and_move_the_data(tmp_path, synthetic_data_dir):
    """What a user does after a NaN or a move: both act from the resumed step on, and run.json says so."""
    import shutil

    run, moved = tmp_path / "run", tmp_path / "moved-data"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=4"], recipe="tiny") == 0
    shutil.copytree(synthetic_data_dir, moved)
    assert main(["resume", str(run), "--set", "train.max_steps=6", "--set", "optim.lr=0.0005",
                 "--set", f"data.path={moved}"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["lr"]) for r in records] == [(2, 2e-3), (4, 2e-3), (6, 5e-4)]
    last = load_checkpoint(list_checkpoints(run / "checkpoints")[-1])  # the optimizer's, not only the log's
    assert last["optimizer"]["param_groups"][0]["lr"] == 5e-4
    info = json.loads((run / "run.json").read_text())
    assert info["data"] == str(moved.resolve()) and info["resumes"][-1]["step"] == 4
    assert info["resumes"][-1]["world_size"] == 1
    assert "optim.lr=0.0005" in info["resumes"][-1]["set"]


def test_resume_refuses_data_that_changed_since_the_start(tmp_path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    prepare = ["prepare-data", "--source", "synthetic", "--count", "80", "--resolution", "32", "--out", str(data)]
    assert main(prepare) == 0
    assert train(run, data, TINY + ["train.max_steps=2"], recipe="tiny") == 0
    assert main(prepare + ["--seed", "5", "--overwrite"]) == 0  # other faces under the same path
    before = (run / "run.json").read_text()
    assert main(["resume", str(run), "--set", "train.max_steps=4"]) == 2
    assert "holds other data than this run trained on" in capsys.readouterr().err
    assert (run / "run.json").read_text() == before and len(list_checkpoints(run / "checkpoints")) == 1


def test_the_stop_note_is_written_without_rich(monkeypatch, capfd):
    """The signal can land inside a rich print (once, inside its first import of the emoji table): a rich
    print from the handler re-entered it and crashed the run with an ImportError instead of a checkpoint."""
    import os

    from rich.console import Console

    from dreamctl.cli.progress import stop_on_signals

    def reentered(self, *args, **kwargs):
        raise AssertionError("rich printed from the signal handler")

    monkeypatch.setattr(Console, "print", reentered)
    with stop_on_signals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs at the next bytecode boundary
        assert stop.requested() and stop.signum == signal.SIGTERM
    assert "SIGTERM: finishing this step and writing a checkpoint" in capfd.readouterr().err


def test_the_stop_note_offers_a_second_ctrl_c_only_where_it_reaches_the_process(monkeypatch, capfd):
    """A torchrun the user started passes only the first signal on to its workers; the note said a second
    Ctrl-C would abort there too. The --nproc-per-node shortcut's torchrun passes it on (test_torchrun)."""
    import os

    from dreamctl.cli.common import EXIT_CODES_DIR
    from dreamctl.cli.progress import stop_on_signals

    def note() -> str:
        with stop_on_signals():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
        return capfd.readouterr().err

    monkeypatch.delenv(EXIT_CODES_DIR, raising=False)
    assert "press Ctrl-C again to abort without one" in note()  # one process
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    assert "torchrun passes no second Ctrl-C on to its workers" in note()
    monkeypatch.setenv(EXIT_CODES_DIR, "/nowhere")  # under the shortcut
    assert "press Ctrl-C again to abort without one" in note()


def test_sigterm_checkpoints_and_says_how_to_resume(tmp_path, synthetic_data_dir):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "dreamctl", "train", "--recipe", "tiny", "--data", str(synthetic_data_dir),
           "--run-dir", str(run), *set_args(TINY + ["train.epochs=1000", "train.checkpoint_every=100000"])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300  # a loaded machine took 85 s to the first log line
    while not (run / "metrics.jsonl").exists():
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    seen = []
    while not seen or "SIGTERM: finishing this step" not in seen[-1]:
        seen.append(proc.stderr.readline())
        assert seen[-1], "".join(seen)
    proc.send_signal(signal.SIGTERM)  # again (a scheduler signals every process, and ablate passes it on): no abort
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err  # stopped, not finished: `train && sample` stops here
    assert f"dreamctl resume {run}" in out
    assert out.startswith("step 2/") and "loss " in out  # no terminal (a batch job's log): one plain line per log step
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted"
    assert load_checkpoint(list_checkpoints(run / "checkpoints")[-1])["step"] == info["step"] >= 2


def test_sigterm_with_nobody_reading_stderr_still_checkpoints(tmp_path, synthetic_data_dir):
    """What ablate's child sees when ablate is killed: its stderr pipe has no reader, and the death signal
    arrives as SIGTERM. The stop notice cannot be shown, but the step still ends in a checkpoint."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "dreamctl", "train", "--recipe", "tiny", "--data", str(synthetic_data_dir),
           "--run-dir", str(run), *set_args(TINY + ["train.epochs=1000", "train.checkpoint_every=100000"])]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (run / "metrics.jsonl").exists():
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.2)
    proc.stderr.close()  # the reader is gone
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted" and info.get("error") is None
    assert load_checkpoint(list_checkpoints(run / "checkpoints")[-1])["step"] == info["step"] >= 2



def test_a_run_whose_output_reader_is_gone_trains_on_to_the_end(tmp_path, synthetic_data_dir):
    """`dreamctl train ... | tee log` and tee is killed (its terminal closed): the next progress line
    meets a closed pipe. The run goes on unseen and finishes, instead of failing at that line."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "dreamctl", "train", "--recipe", "tiny", "--data", str(synthetic_data_dir),
           "--run-dir", str(run), *set_args(TINY + ["train.epochs=1000", "train.max_steps=40"])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("step 2/40")  # then the reader goes
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["step"] == 40

def test_a_step_with_a_grid_and_a_checkpoint_draws_the_grid_first(tmp_path, synthetic_data_dir, monkeypatch):
    """A run killed between the two resumes from the checkpoint before and draws the grid again; had the
    checkpoint come first, resume would start after that step and its grid would never be drawn."""
    from dreamctl.training import record

    def killed(ckpt, *args, **kwargs):
        raise RuntimeError("killed")  # stands for a kill while the checkpoint is written

    monkeypatch.setattr(record, "save_checkpoint", killed)
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="killed"):
        train(run, synthetic_data_dir, TINY + ["train.max_steps=8", "train.sample_every=4"], recipe="tiny")
    assert (run / "samples" / "step-00000004.png").is_file()


def test_bad_data_path_or_batch_creates_nothing(tmp_path, synthetic_data_dir, capsys):
    run = tmp_path / "run"
    assert train(run, tmp_path / "no-such-data", TINY, recipe="tiny") == 2
    assert "no-such-data" in capsys.readouterr().err
    assert not (run / "recipe.yaml").exists()  # so the same command can simply be run again
    assert train(run, synthetic_data_dir, TINY + ["train.batch_size=500", "data.limit=64"], recipe="tiny") == 2
    assert "train.batch_size 500 must be between 1 and the number of training images (64)" in capsys.readouterr().err
    assert not run.exists()


def test_resume_after_a_crash_before_the_first_checkpoint_and_a_torn_log(tmp_path, synthetic_data_dir):
    from dreamctl.config import load_recipe
    from dreamctl.training.rundir import RunDir

    overrides = TINY + ["train.max_steps=6", f"data.path={synthetic_data_dir}"]
    run = RunDir(tmp_path / "run")
    run.create(load_recipe("tiny", overrides), {"name": "run"})  # as left by a process killed at step 0
    run.metrics_file.write_text('{"step": 2, "loss": 1.0}\n{"step": 4, "lo')  # torn by SIGKILL mid-line
    assert main(["resume", str(run.root)]) == 0
    assert train(tmp_path / "straight", synthetic_data_dir, TINY + ["train.max_steps=6"], recipe="tiny") == 0
    assert_identical(final_weights(run.root), final_weights(tmp_path / "straight"))
    steps = [json.loads(line)["step"] for line in run.metrics_file.read_text().splitlines()]
    assert steps == [2, 4, 6]



def test_a_kill_while_a_run_is_created_never_leaves_a_run_without_its_identity(tmp_path, synthetic_data_dir,
                                                                               monkeypatch):
    """run.json's run_id is written before recipe.yaml (what makes the folder a run): a folder left between
    the two is one `train` starts again, not a run that trains but can never be sampled or evaluated."""
    from dreamctl.training import rundir

    real_write_text = rundir.atomic.write_text

    def killed_at_the_recipe(path, *args, **kwargs):
        if Path(path).name == "recipe.yaml":
            raise RuntimeError("killed")
        return real_write_text(path, *args, **kwargs)

    monkeypatch.setattr(rundir.atomic, "write_text", killed_at_the_recipe)
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="killed"):
        train(run, synthetic_data_dir, TINY + ["train.max_steps=4"], recipe="tiny")
    assert json.loads((run / "run.json").read_text())["run_id"] and not (run / "recipe.yaml").exists()
    monkeypatch.undo()
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=4"], recipe="tiny") == 0  # the same command
    assert main(["sample", str(run), "--num", "2", "--out", str(tmp_path / "s")]) == 0


def test_a_stop_between_log_steps_resumes_to_the_same_log(tmp_path, synthetic_data_dir):
    """The partial interval travels in the checkpoint: the log after a resume equals an uninterrupted run's."""
    from dreamctl.config import load_recipe
    from dreamctl.runtime import setup
    from dreamctl.training.rundir import RunDir
    from dreamctl.training.session import resume_run, start_run

    recipe = load_recipe("tiny-conservative", CONSERVATIVE + ["train.max_steps=12", "train.log_every=3",
                                                              f"data.path={synthetic_data_dir}"])
    rt = setup("fp32", "cpu")
    assert start_run(recipe, RunDir(tmp_path / "straight"), rt) == "finished"
    calls = iter(range(100))  # should_stop is asked once per step: stop after step 7, mid-interval
    assert start_run(recipe, RunDir(tmp_path / "split"), rt, should_stop=lambda: next(calls) == 6) == "interrupted"
    assert resume_run(RunDir(tmp_path / "split"), rt) == "finished"

    def logged(run: Path) -> list[dict]:
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("img_per_s", "time", "peak_memory_bytes")} for r in records]

    straight = logged(tmp_path / "straight")
    assert [r["step"] for r in straight] == [3, 6, 9, 12] and "loss_rect" in straight[2]  # DREAM from step 9
    assert logged(tmp_path / "split") == straight




def test_tensorboard_sink_is_made_once_the_run_has_claimed_its_folder(tmp_path, synthetic_data_dir, monkeypatch):
    """With tensorboard installed, its folder appears only in a run that started, never in a refused one."""
    from dreamctl.training import tensorboard

    made: list[dict] = []

    class Sink:
        def __init__(self, log_dir: Path):
            self.record = {"dir": log_dir, "claimed": (log_dir.parent / "run.json").is_file(), "logs": [], "closed": False}
            made.append(self.record)

        def on_event(self, kind: str, payload: dict) -> None:
            if kind == "log":
                self.record["logs"].append(payload["step"])

        def close(self) -> None:
            self.record["closed"] = True

    monkeypatch.setattr(tensorboard, "available", lambda: True)
    monkeypatch.setattr(tensorboard, "TensorBoardSink", Sink)
    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=4"], recipe="tiny") == 0
    assert made == [{"dir": run / "tensorboard", "claimed": True, "logs": [2, 4], "closed": True}]
    assert train(run, synthetic_data_dir, TINY, recipe="tiny") == 2  # the folder already holds a run
    assert len(made) == 1


def test_the_stop_message_resumes_on_as_many_processes(monkeypatch, tmp_path):
    """Only the same count continues bit for bit, and the per-process batch (memory) stays as it was."""
    from dreamctl.runtime import resume_command

    for env, expected in (({}, "dreamctl resume RUN"),
                          ({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4"}, "dreamctl resume RUN --nproc-per-node 4"),
                          ({"WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8"}, "torchrun (as before, 16 processes) -m "
                                                                          "dreamctl resume RUN")):
        for key in ("WORLD_SIZE", "LOCAL_WORLD_SIZE"):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert resume_command(Path("RUN")) == expected


def test_resume_set_is_written_to_the_runs_recipe_and_may_change_grad_clip(tmp_path, synthetic_data_dir):
    """recipe.yaml is what a later resume, sample and compare read: it must hold the settings the run
    continued with; grad_clip is one a user tightens after a NaN, so resume accepts it."""
    from dreamctl.config import recipe_from_file

    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=1"], recipe="tiny") == 0
    assert main(["resume", str(run), "--set", "train.max_steps=2", "--set", "optim.grad_clip=0.25"]) == 0
    recipe = recipe_from_file(run / "recipe.yaml")
    assert (recipe.train.max_steps, recipe.optim.grad_clip) == (2, 0.25)
    assert load_checkpoint(list_checkpoints(run / "checkpoints")[-1])["step"] == 2


def test_train_refuses_data_of_another_resolution(tmp_path, synthetic_data_dir, capsys):
    """32 px data under a 16 px recipe: named before anything is written, with both ways out."""
    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=1", "data.resolution=16"], recipe="tiny") == 2
    err = capsys.readouterr().err
    assert "holds 32px images but data.resolution is 16" in err
    assert "--resolution 16" in err and "--set data.resolution=32" in err
    assert not (run / "recipe.yaml").exists()


def test_resuming_a_finished_run_at_its_last_step_succeeds(tmp_path, synthetic_data_dir):
    """`resume` on a run that already reached its last step (the same length) is no error: nothing to train."""
    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=2"], recipe="tiny") == 0
    assert main(["resume", str(run)]) == 0
    assert main(["resume", str(run), "--set", "train.max_steps=2"]) == 0
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000002.pt"]
    assert json.loads((run / "run.json").read_text())["status"] == "finished"


def test_ctrl_c_is_recorded_as_interrupted_not_failed(tmp_path, synthetic_data_dir):
    """A user's Ctrl-C is a stop to resume from, not a failure to investigate: run.json tells them apart."""
    from dreamctl.config import load_recipe
    from dreamctl.runtime import setup
    from dreamctl.training.rundir import RunDir
    from dreamctl.training.session import start_run

    def ctrl_c() -> bool:
        raise KeyboardInterrupt

    recipe = load_recipe("tiny", TINY + ["train.max_steps=2", f"data.path={synthetic_data_dir}"])
    with pytest.raises(KeyboardInterrupt):
        start_run(recipe, RunDir(tmp_path / "run"), setup("fp32", "cpu"), should_stop=ctrl_c)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (info["status"], info["error"]) == ("interrupted", "KeyboardInterrupt")


def test_a_lost_process_is_recorded_in_one_line_not_as_gloos_page(tmp_path, synthetic_data_dir):
    """run.json's error for a peer that died is the line the console shows, without gloo's source path."""
    from dreamctl.config import load_recipe
    from dreamctl.runtime import setup
    from dreamctl.training.rundir import RunDir
    from dreamctl.training.session import start_run

    def peer_died() -> bool:
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
                           "[127.0.0.1]:15774. This is typically caused by a remote worker crashing.\nGLHF!")

    recipe = load_recipe("tiny", TINY + ["train.max_steps=2", f"data.path={synthetic_data_dir}"])
    with pytest.raises(RuntimeError):
        start_run(recipe, RunDir(tmp_path / "run"), setup("fp32", "cpu"), should_stop=peer_died)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "failed"
    assert info["error"] == ("PeerLost: lost contact with another process of this job (Connection closed by peer "
                             "[127.0.0.1]:15774): it crashed or was stopped, and said why above if it could; "
                             "the last checkpoint, if any, is kept: resume the run")


def test_a_busy_run_folder_names_the_pid_that_holds_it(tmp_path, synthetic_data_dir, capsys):
    """The lock file held a longer pid from an earlier trainer: the message names this holder's pid alone."""
    import os

    from dreamctl.training.rundir import RunDir

    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=1"], recipe="tiny") == 0
    (run / ".lock").write_text("123456789012345")  # longer than any pid
    with RunDir(run).lock():
        assert main(["resume", str(run), "--set", "train.max_steps=2"]) == 2
    assert f"is in use by another trainer (pid {os.getpid()});" in capsys.readouterr().err


@pytest.mark.parametrize("content,needle", [(b"[1, 2]", "holds a JSON list, not an object"),
                                            (b"\xff\xfe{}", "cannot be read")])
def test_a_damaged_run_json_is_named_with_the_fix(tmp_path, synthetic_data_dir, capsys, content, needle):
    """A run.json that is not a JSON object (a list, or bytes that are not UTF-8) is one line saying what to do."""
    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=1"], recipe="tiny") == 0
    (run / "run.json").write_bytes(content)
    assert main(["resume", str(run), "--set", "train.max_steps=2"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "run.json" in err and "restore it from a copy" in err


def test_the_peak_memory_in_run_json_is_over_every_session(tmp_path, synthetic_data_dir):
    """A resume on a smaller machine keeps the larger peak of an earlier session (what the run needed)."""
    from dreamctl.training.rundir import RunDir

    run = RunDir(tmp_path / "run")
    assert train(run.root, synthetic_data_dir, TINY + ["train.max_steps=1"], recipe="tiny") == 0
    run.update_info({"peak_memory_bytes": 10**15})  # 1 PB: more than this process can have used
    assert main(["resume", str(run.root), "--set", "train.max_steps=2"]) == 0
    assert run.info()["peak_memory_bytes"] == 10**15


def test_train_says_when_a_conservative_run_will_rectify_no_step(tmp_path, synthetic_data_dir, capsys):
    """Said at the start, not found out from a flat lambda_mean after the run (research review #1)."""
    assert train(tmp_path / "run", synthetic_data_dir, TINY + ["train.max_steps=2"], recipe="tiny-conservative") == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "warning: this dream_conservative run rectifies no step (it ends in epoch 0, before loss.start_epoch" in err
    assert main(["train", "--recipe", "tiny-conservative", "--data", str(synthetic_data_dir), "--dry-run",
                 *set_args(TINY + ["train.max_steps=2"])]) == 0
    assert "rectifies no step" in capsys.readouterr().err


def test_resuming_a_finished_run_says_how_to_train_it_on(tmp_path, synthetic_data_dir, capsys):
    """It printed `finished: RUN` as if it had trained (research review)."""
    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=2"], recipe="tiny") == 0
    capsys.readouterr()
    assert main(["resume", str(run)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"finished before: {run} is at its last step (2); to train on, lengthen it: dreamctl resume {run} " \
           "--set train.max_steps=N (or train.epochs=N)" in out
    assert main(["resume", str(run), "--set", "train.max_steps=3"]) == 0
    assert f"finished: {run}" in capsys.readouterr().out


def test_the_resume_note_names_the_old_process_count_as_a_user_would_give_it():
    """"resume on 1 processes (--nproc-per-node 1 on one node)" (dist review F6)."""
    from dreamctl.cli.progress import _other_processes

    assert _other_processes({"world_size": (1, 2)}).endswith("resume on 1 process (no --nproc-per-node)")
    assert _other_processes({"world_size": (16, 8)}).endswith(
        "resume on 16 processes in all (--nproc-per-node 16 on one node, or the nodes and processes per node it had)")


def test_a_dry_run_for_several_processes_gives_each_ones_share_or_refuses_as_the_run_would(monkeypatch, capsys):
    """It printed the plan for a batch of 64 over 3 processes, which the run then refused; under torchrun each
    rank printed it (dist review F7)."""
    assert main(["train", "--recipe", "tiny", "--dry-run", "--nproc-per-node", "4"]) == 0
    assert "processes     4, each 16 images of the global batch of 64" in capsys.readouterr().out
    assert main(["train", "--recipe", "tiny", "--dry-run", "--nproc-per-node", "3"]) == 2
    assert "train.batch_size 64 (the global batch) must split evenly over 3 processes" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert main(["train", "--recipe", "tiny", "--dry-run"]) == 0
    assert capsys.readouterr().out == ""  # local rank 0 of the node speaks


def test_a_change_recipe_yaml_holds_but_run_json_does_not_record_is_recorded_by_the_next_resume(
        tmp_path, synthetic_data_dir, capsys):
    """A `resume --set optim.lr=...` killed between writing recipe.yaml and recording the change in run.json left a
    run that compare showed as trained at the new rate from step 0 (crash audit 1)."""
    from dreamctl.config import load_recipe, recipe_to_yaml

    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=2"], recipe="tiny") == 0
    from dreamctl.training.rundir import RunDir
    from dreamctl.training.session import unrecorded_changes
    newest = read_checkpoint(list_checkpoints(run / "checkpoints")[-1])
    assert unrecorded_changes(RunDir(run), newest, []) == []  # as train left it: nothing to record
    changed = load_recipe(run / "recipe.yaml", ["optim.lr=0.001"])  # what the killed resume wrote
    (run / "recipe.yaml").write_text(recipe_to_yaml(changed))
    capsys.readouterr()
    assert main(["resume", str(run), "--set", "train.max_steps=4"]) == 0
    assert "differs from checkpoint step 2's recipe in optim.lr=0.001, a change" in " ".join(
        capsys.readouterr().err.split())
    (entry,) = json.loads((run / "run.json").read_text())["resumes"]
    assert (entry["step"], entry["set"]) == (2, ["optim.lr=0.001", "train.max_steps=4"])
    # A change recorded at the step resumed from is not recorded twice (the resume stopped before its next
    # checkpoint: here, the checkpoints after step 2 lost).
    for path in list_checkpoints(run / "checkpoints")[1:]:
        path.unlink()
    assert main(["resume", str(run)]) == 0
    assert "differs from checkpoint" not in capsys.readouterr().err
    assert [e["set"] for e in json.loads((run / "run.json").read_text())["resumes"]][1] == []


def test_the_same_resume_stopped_before_its_first_checkpoint_is_recorded_once(tmp_path, synthetic_data_dir):
    """A kill -9 loop before the first checkpoint left one identical `resumes` entry per kill (crash audit 7)."""
    from dreamctl.training.rundir import RunDir
    from dreamctl.training.session import resume_run
    from tiny_runs import CPU

    run = tmp_path / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=2", "train.epochs=1"], recipe="tiny") == 0
    for overrides in ([], [], ["optim.lr=0.001"], ["optim.lr=0.001"]):
        assert resume_run(RunDir(run), CPU, ["train.max_steps=4", *overrides], should_stop=lambda: True) == \
            "interrupted"
    sets = [e["set"] for e in json.loads((run / "run.json").read_text())["resumes"]]
    assert sets == [["train.max_steps=4"], ["train.max_steps=4", "optim.lr=0.001"]]
