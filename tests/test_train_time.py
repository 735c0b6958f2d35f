"""`train --dry-run --time`: the run's own steps timed on this device price the steps the dry run counts."""

from __future__ import annotations

import re

import pytest
import torch

from dreamctl.bench.estimate import StepTimer, estimate_training_time
from dreamctl.cli import main
from dreamctl.config import load_recipe
from dreamctl.errors import DataError, RunError
from dreamctl.runtime import Runtime
from dreamctl.training.loop import total_steps

SMALL = ["train.batch_size=16", "model.channels=8", "model.channel_mult=[1, 2]", "model.attention_resolutions=[]"]


def test_a_staged_kind_is_priced_at_standard_steps_before_its_start_epoch():
    recipe = load_recipe("tiny-conservative", [*SMALL, "train.epochs=5"])  # rectifies from epoch 2
    n = 230  # 14 steps of 16 per epoch
    est = estimate_training_time(recipe, n, StepTimer(Runtime(torch.device("cpu"), "fp32"), rounds=2, warmup=1))
    assert est.steps == {"dream_conservative": 3 * 14, "standard": 2 * 14}
    assert sum(est.steps.values()) == total_steps(recipe, n)
    assert est.seconds == pytest.approx(42 * est.step_seconds["dream_conservative"] + 28 * est.step_seconds["standard"])
    assert est.timed_steps == 2 and est.batch_size == 16
    assert set(est.step_seconds) == {"dream_conservative", "standard"} and min(est.step_seconds.values()) > 0
    # a run that ends before start_epoch takes standard steps only
    early = estimate_training_time(load_recipe("tiny-conservative", [*SMALL, "train.epochs=1"]), n,
                                   StepTimer(Runtime(torch.device("cpu"), "fp32"), rounds=1, warmup=1))
    assert early.steps == {"standard": 14} and list(early.step_seconds) == ["standard"] and early.precision == "fp32"


def test_a_process_times_its_share_of_the_batch_and_the_cpu_is_not_shared_out():
    gpu = Runtime(torch.device("cuda"), "bf16")  # no step is timed here: no GPU needed
    assert StepTimer(gpu, processes=2).share(load_recipe("tiny", SMALL)) == 8
    with pytest.raises(DataError, match="train.batch_size 16 .* must split evenly over 3 processes"):
        StepTimer(gpu, processes=3).share(load_recipe("tiny", SMALL))
    with pytest.raises(RunError, match="--time with 2 processes on the CPU: they share its cores"):
        StepTimer(Runtime(torch.device("cpu"), "fp32"), processes=2)


def test_train_dry_run_time_prints_the_estimate(synthetic_data_dir, capsys):
    args = ["train", "--recipe", "tiny", "--data", str(synthetic_data_dir), "--dry-run", "--device", "cpu",
            *(a for s in SMALL for a in ("--set", s)), "--set", "train.epochs=2"]
    assert main([*args, "--time"]) == 0
    out = capsys.readouterr().out
    assert "schedule      230 images, 28 steps of 16" in out
    line = re.search(r"time          about (\d+) (s|min) for 28 steps on .*: ([\d.e-]+) s per standard step "
                     r"\(16 images per process, fp32\); medians of 3 steps after a warm-up", out)
    assert line, out
    printed, expected = int(line[1]) * (60 if line[2] == "min" else 1), 28 * float(line[3])
    assert abs(printed - expected) <= (30 if line[2] == "min" else 1) + 0.01 * expected  # step time: 3 digits
    assert "not counted: data loading, checkpoints, sample grids" in out


@pytest.mark.parametrize("args, needle", [
    (["--time"], "--time goes with --dry-run and --data"),
    (["--dry-run", "--time"], "--time goes with --dry-run and --data"),
])
def test_time_without_a_dry_run_and_data_is_one_line(args, needle, capsys):
    assert main(["train", "--recipe", "tiny", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


def test_time_under_torchrun_is_refused(synthetic_data_dir, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # every worker would time its own share on its own
    assert main(["train", "--recipe", "tiny", "--data", str(synthetic_data_dir), "--dry-run", "--time"]) == 2
    assert "without torchrun" in capsys.readouterr().err


def test_a_timer_times_each_kind_of_step_once_and_prices_what_is_left(monkeypatch):
    import dreamctl.bench.estimate as estimate

    calls = []
    real = estimate.bench_train
    monkeypatch.setattr(estimate, "bench_train", lambda recipe, rt, **kw: calls.append(kw["kinds"]) or real(recipe, rt, **kw))
    timer = StepTimer(Runtime(torch.device("cpu"), "fp32"), rounds=1, warmup=1)
    recipe = load_recipe("tiny-conservative", [*SMALL, "train.epochs=5"])
    first = estimate_training_time(recipe, 230, timer)
    other_weight = load_recipe("tiny-conservative", [*SMALL, "train.epochs=5", "loss.lambda_max=0.3"])
    resumed = estimate_training_time(other_weight, 230, timer, done=30)  # past the 28 standard steps of epochs 0-1
    assert calls == [("dream_conservative", "standard")]  # a loss weight changes no work: timed once
    assert resumed.steps == {"dream_conservative": 40} and resumed.step_seconds["dream_conservative"] == (
        first.step_seconds["dream_conservative"])
    estimate_training_time(load_recipe("tiny", SMALL), 230, timer)  # standard: timed already
    estimate_training_time(load_recipe("tiny", [*SMALL[1:], "train.batch_size=8"]), 230, timer)  # another batch
    assert calls == [("dream_conservative", "standard"), ("standard",)]


def test_ablate_dry_run_time_prices_the_plan(tmp_path, capsys):
    from ablate_fakes import write_spec

    spec = write_spec(tmp_path, set=[*SMALL, "train.epochs=4"])  # three loss weights, one kind of step
    assert main(["ablate", str(spec), "--dry-run", "--time", "--device", "cpu"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps the line
    assert re.search(r"time: about \d+ (s|min) for 480 steps of 3 runs on .*: [\d.e-]+ s per dream_conservative "
                     r"step \(16 images per process, fp32\), [\d.e-]+ s per standard step \(16 images per process, "
                     r"fp32\); medians of 3 steps after a warm-up; not counted: evaluation, data loading", out), out
    assert main(["ablate", str(spec), "--time"]) == 2
    assert "--time goes with --dry-run" in capsys.readouterr().err
    assert main(["ablate", str(spec), "--dry-run", "--time", "--device", "cpu", "--nproc-per-node", "2"]) == 2
    assert "--time with 2 processes on the CPU" in capsys.readouterr().err
