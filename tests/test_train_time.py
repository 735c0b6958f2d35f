"""`train --dry-run --time` and `ablate --dry-run --time`: the runs' own steps timed on this device price the steps
the dry run counts, and their evaluations' sampler steps."""

from __future__ import annotations

import re

import pytest
import torch

from dreamctl.bench.estimate import StepTimer, estimate_sampling_time, estimate_training_time
from dreamctl.cli import main
from dreamctl.config import load_recipe
from dreamctl.errors import DataError, RunError
from dreamctl.runtime import Runtime
from dreamctl.training.loop import total_steps

DURATION = r"(\d+ h \d+ min|\d+ min|\d+ s)"  # cli.common.duration's forms


def _close(printed: str, expected: float) -> bool:
    """Whether `duration(expected)` could print as `printed`: minutes are rounded, and the factor priced was
    printed to three digits."""
    h, _, rest = printed.rpartition(" h ")
    seconds = (int(h or 0) * 60 + int(rest.split()[0])) * 60 if rest.endswith("min") else int(rest.split()[0])
    return abs(seconds - expected) <= (30 if rest.endswith("min") else 1) + 0.01 * expected


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
    line = re.search(rf"time          about {DURATION} for 28 steps on .*: ([\d.e-]+) s per standard step "
                     r"\(16 images per process, fp32\); medians of 3 steps after a warm-up", out)
    assert line and _close(line[1], 28 * float(line[2])), out
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
    assert re.search(rf"time: about {DURATION} for 480 steps of 3 runs on .*: [\d.e-]+ s per dream_conservative "
                     r"step \(16 images per process, fp32\), [\d.e-]+ s per standard step \(16 images per process, "
                     r"fp32\); medians of 3 steps after a warm-up; not counted: data loading", out), out
    # three evaluations of 50 images, each drawn with tiny's 50 DDIM steps from t_start
    line = re.search(rf"time to evaluate: about {DURATION} to sample 7,500 network evaluations \(images x sampler "
                     r"steps\) of 3 evaluations on .*: ([\d.e-]+) s per image per step \(batches of 64, fp32\); "
                     r"medians of 3 calls after a warm-up; not counted: Inception features and the metrics", out)
    assert line and _close(line[1], 7500 * float(line[2])), out
    assert main(["ablate", str(spec), "--time"]) == 2
    assert "--time goes with --dry-run" in capsys.readouterr().err
    assert main(["ablate", str(spec), "--dry-run", "--time", "--device", "cpu", "--nproc-per-node", "2"]) == 2
    assert "--time with 2 processes on the CPU" in capsys.readouterr().err


def test_an_evaluation_is_priced_per_network_evaluation_timed_once_per_sampling_setting(monkeypatch):
    """The sampler's network is timed once per batch size, model and compile setting, at the inference precision:
    another step count or eta changes only how many evaluations there are. It is the network `sample` draws
    with (inference.sampling_net), called on a batch of sample.batch_size."""
    import dreamctl.bench.estimate as estimate

    built = []
    real = estimate.sampling_net
    monkeypatch.setattr(estimate, "sampling_net", lambda model, rt, mode: built.append((rt.precision, mode))
                        or real(model, rt, None))  # eager: the mode asked is recorded, a CPU compile takes a minute
    timer = StepTimer(Runtime(torch.device("cpu"), "bf16"), rounds=2, warmup=1)  # training's precision: not used
    recipe = load_recipe("tiny", [*SMALL[1:], "sample.batch_size=8"])
    est = estimate_sampling_time(recipe, 1000, timer)
    assert est.seconds == pytest.approx(1000 * est.seconds_per_image) and est.seconds_per_image > 0
    assert (est.batch_size, est.precision, est.timed_calls) == (8, "fp32", 2)
    fewer = load_recipe("tiny", [*SMALL[1:], "sample.batch_size=8", "sample.steps=10", "sample.eta=1.0"])
    assert estimate_sampling_time(fewer, 5, timer).seconds_per_image == est.seconds_per_image
    assert built == [("fp32", None)]
    estimate_sampling_time(load_recipe("tiny", [*SMALL[1:], "sample.batch_size=4"]), 5, timer)
    estimate_sampling_time(load_recipe("tiny", [*SMALL[1:], "sample.batch_size=8", "sample.compile=true"]), 5, timer)
    assert built == [("fp32", None), ("fp32", None), ("fp32", "default")]
