"""ablate's plan: spec checks, grid expansion, run names, the dry run and its costs, the shipped specs."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch

from ablate_fakes import FakeCLI, write_spec
from dreamctl.cli import main
from dreamctl.errors import ConfigError, DataError
from dreamctl.experiments import execute as execute_module
from dreamctl.experiments.ablate import images_text, make_plan, plan_totals
from dreamctl.experiments.execute import Launch, evaluate_command, execute, train_command
from dreamctl.experiments.spec import ABLATIONS_DIR, expand, parse_spec, point_name


def test_run_names_come_from_overrides() -> None:
    assert point_name({"loss.lambda_max": 0.3, "seed": 0}) == "lambda_max-0.3_seed-0"
    assert point_name({"a.x": 1, "b.x": 2}) == "a.x-1_b.x-2"  # shared last parts keep the full key
    assert point_name({"recipe": "recipes/my.yaml", "data.path": "a/b c"}) == "recipe-my_path-a-b-c"


def test_dry_run_plan_separates_training_from_resampling_and_prices_it(tmp_path: Path) -> None:
    spec = parse_spec(write_spec(tmp_path, eval_grid={"sample.steps": [10, 20]}), seeds=(0, 1))
    plan = make_plan(spec)
    assert [j.name for j in plan.train] == ["lambda_max-0.3_seed-0", "lambda_max-0.3_seed-1", "lambda_max-0.5_seed-0",
                                            "lambda_max-0.5_seed-1", "lambda_max-0.7_seed-0", "lambda_max-0.7_seed-1"]
    assert {j.action for j in plan.train} == {"train"} and plan.train_images == (640,)
    # 640 images / batch 64 = 10 steps per epoch, 4 epochs; rectification from epoch 2: 20 steps at 3, 20 at 6
    job = plan.train[0]
    assert (job.steps, job.images, job.forwards) == (40, 2560, 64 * (3 * 20 + 6 * 20))
    assert job.overrides == ("train.epochs=4", "loss.lambda_max=0.3", "train.seed=0")
    assert len(plan.evals) == 12
    first = plan.evals[0]
    assert first.name == "lambda_max-0.3_seed-0__steps-10" and first.action == "evaluate"
    assert first.flags == ("--steps", "10", "--metrics", "swd", "--num", "50")
    assert (first.images, first.forwards) == (50, 500)
    assert plan_totals(plan)["train_images"] == 6 * 2560 and plan_totals(plan)["eval_forwards"] == 6 * (500 + 1000)


def test_recipe_axis_prices_each_method(tmp_path: Path) -> None:
    plan = make_plan(parse_spec(write_spec(tmp_path, base=None, grid={"recipe": ["tiny", "tiny-dream"]})))
    assert [j.name for j in plan.train] == ["recipe-tiny_seed-0", "recipe-tiny-dream_seed-0"]
    assert [j.forwards for j in plan.train] == [2560 * 3, 2560 * 4]


def test_costs_unknown_without_data_or_limit(tmp_path: Path) -> None:
    plan = make_plan(parse_spec(write_spec(tmp_path), data=str(tmp_path / "not-prepared")))
    assert plan.train[0].images is None and plan_totals(plan)["train_images"] is None
    plan = make_plan(parse_spec(write_spec(tmp_path, set=["train.epochs=4", "data.limit=320"]), data=str(tmp_path / "none")))
    assert plan.train[0].steps == 20  # 320 // 64 * 4


def test_unprepared_data_or_a_file_for_out_is_one_error_before_any_job(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture) -> None:
    """Both failed once per job before (each training job, then each log file)."""
    fake = FakeCLI()
    monkeypatch.setattr(execute_module, "run_command", fake)
    spec = str(write_spec(tmp_path))
    assert main(["ablate", spec, "--data", str(tmp_path / "not-prepared"), "--dry-run"]) == 0  # a plan may come first
    assert "warning: " in (err := capsys.readouterr().err) and "not-prepared/manifest.json not found" in err
    assert main(["ablate", spec, "--data", str(tmp_path / "not-prepared")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not-prepared/manifest.json not found" in err and "dreamctl prepare-data" in err and "\n" not in err
    (tmp_path / "a-file").write_text("mine")
    assert main(["ablate", spec, "--out", str(tmp_path / "a-file")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--out {tmp_path / 'a-file'} is a file, not a folder" in err and "\n" not in err
    assert main(["ablate", spec, "--out", str(tmp_path / "a-file" / "sub"), "--dry-run"]) == 0
    assert f"warning: --out {tmp_path / 'a-file' / 'sub'}: {tmp_path / 'a-file'} is a file" in capsys.readouterr().err
    assert fake.calls == [] and (tmp_path / "a-file").read_text() == "mine"


def test_spec_errors_exit_2_before_anything_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    fake = FakeCLI()
    monkeypatch.setattr(execute_module, "run_command", fake)
    assert main(["ablate", str(write_spec(tmp_path, sets=["x=1"]))]) == 2
    assert "sets: unknown key; did you mean 'set'?" in capsys.readouterr().err
    assert main(["ablate", str(write_spec(tmp_path, grid={"loss.lambda_max": [0.3, 1.5]}))]) == 2
    assert "loss.lambda_max" in capsys.readouterr().err
    assert main(["ablate", str(write_spec(tmp_path, grid={"loss.lambda_maxx": [0.3]}))]) == 2
    assert "loss.lambda_maxx" in capsys.readouterr().err
    assert fake.calls == [] and not (tmp_path / "out").exists()
    for bad, message in (({"grid": {"sample.steps": [10]}}, "eval-time axis"),
                         ({"eval_grid": {"loss.alpha": [0.5]}}, "needs training"),
                         ({"evaluate": {"metrics": ["swd", "fdi"]}}, "unknown metric"),
                         ({"evaluate": {"metrics": ["swd"], "nums": 3}}, "evaluate.nums"),
                         ({"grid": {"data.path": ["a/b", "a b"]}}, "same run name"),
                         ({"grid": {"optim.lr": [1e-3, 0.002, 0.001]}}, "grid.optim.lr lists 0.001 twice"),
                         ({"eval_grid": {"sample.steps": [10, 10]}}, "eval_grid.sample.steps lists 10 twice")):
        with pytest.raises(ConfigError, match=message):
            make_plan(parse_spec(write_spec(tmp_path, **bad)))


def test_data_too_small_for_the_batch_or_the_evaluation_is_refused_before_training(tmp_path: Path) -> None:
    """Both would fail only after the runs before them had trained (the evaluation after its own training)."""
    spec = write_spec(tmp_path, evaluate={"metrics": ["swd"], "num": 700})  # the data holds 640 training images
    with pytest.raises(DataError, match=r"spec\.yaml: run lambda_max-0\.3_seed-0: the evaluation needs 700 reference "
                                        r"images but split train of .* holds 640: lower `evaluate: \{num: N\}`"):
        make_plan(parse_spec(spec))
    make_plan(parse_spec(write_spec(tmp_path, set=["train.epochs=4", "eval.ref_num=640"],
                                    evaluate={"metrics": ["swd"], "num": 700})))  # 700 drawn against 640
    with pytest.raises(DataError, match=r"run lambda_max-0\.7_seed-0: train\.batch_size 1000 must be between 1 and the "
                                        r"number of training images \(640\): lower it"):
        make_plan(parse_spec(write_spec(tmp_path, grid={"loss.lambda_max": [0.7]}, set=["train.batch_size=1000"])))
    spec = write_spec(tmp_path, set=["train.epochs=4", "data.resolution=16", "model.channel_mult=[1, 2]"])
    with pytest.raises(DataError, match=r"holds 32px images but the run samples 16px ones; prepare the data at "
                                        r"--resolution 16, or set data\.resolution to the data's in the spec's `set`"):
        make_plan(parse_spec(spec))  # evaluate's fix ("evaluate against the data the run was trained on") before


def test_existing_folder_with_other_settings_is_refused(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path)
    execute(make_plan(parse_spec(spec_path)), runner=FakeCLI())
    # What resume may change is carried over: the finished runs are resumed with it.
    longer = make_plan(parse_spec(write_spec(tmp_path, set=["train.epochs=8"])))
    assert {(j.action, j.resume_set) for j in longer.train} == {("resume", ("train.epochs=8",))}
    assert train_command(longer.train[0], longer.data)[-2:] == ["--set", "train.epochs=8"]
    # Anything else is refused: the whole recipe is compared, so another base recipe too.
    for changes, key in (({"set": ["train.epochs=4", "loss.alpha=0.5"]}, "loss.alpha"),
                         ({"set": ["train.epochs=4", "optim.lr=0.01"]}, "optim.lr"),  # resume allows it; ablate not
                         ({"set": ["train.epochs=4"], "base": "tiny-dream"}, "tiny-dream")):
        with pytest.raises(ConfigError, match=key):
            make_plan(parse_spec(write_spec(tmp_path, **changes)))
    # ... and so is other data than the run's (its content hash in run.json).
    run_json = tmp_path / "out" / "lambda_max-0.3_seed-0" / "run.json"
    run_json.write_text(json.dumps({**json.loads(run_json.read_text()), "data_manifest_sha256": "f" * 64}))
    with pytest.raises(DataError, match="holds other data than this run trained on"):
        make_plan(parse_spec(write_spec(tmp_path)))  # the original spec (write_spec rewrites one file)


def test_a_finished_run_whose_recipe_asks_for_more_steps_is_resumed_not_skipped(tmp_path: Path) -> None:
    """`resume --set train.epochs=8` killed between writing recipe.yaml and run.json leaves run.json `finished` at
    step 40 under a recipe of 80 steps; the plan skipped it (crash audit)."""
    spec_path = write_spec(tmp_path)
    execute(make_plan(parse_spec(spec_path)), runner=FakeCLI())  # finished at step 40 (4 epochs of 10 steps)
    run = tmp_path / "out" / "lambda_max-0.3_seed-0"
    (run / "recipe.yaml").write_text((run / "recipe.yaml").read_text().replace("epochs: 4", "epochs: 8"))
    spec = parse_spec(write_spec(tmp_path, set=["train.epochs=8"], grid={"loss.lambda_max": [0.3]}))
    job = make_plan(spec).train[0]
    assert (job.action, job.resume_set, job.done, job.steps) == ("resume", (), 40, 40)
    spec = parse_spec(write_spec(tmp_path, grid={"loss.lambda_max": [0.5]}))  # a run the kill did not touch
    assert make_plan(spec).train[0].action == "skip"


def test_eval_grid_points_resolve_as_evaluate_does(tmp_path: Path) -> None:
    """DDPM runs all T steps; null is the recipe's own value, so a point evaluated once is not redone."""
    spec_path = write_spec(tmp_path, grid={"loss.lambda_max": [0.3]},
                           eval_grid={"sample.sampler": ["ddim", "ddpm"], "sample.t_start": [None]})
    plan = make_plan(parse_spec(spec_path))
    ddim, ddpm = plan.evals
    assert ddim.flags[:2] == ("--sampler", "ddim") and "--t-start" not in ddim.flags
    assert ddpm.forwards == 50 * 1000  # tiny's T
    execute(plan, runner=FakeCLI())
    assert [e.action for e in make_plan(parse_spec(spec_path)).evals] == ["skip", "skip"]


def test_cli_dry_run_prints_plan_and_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from dreamctl.cli import common

    monkeypatch.setattr(common.console, "width", 160)
    spec_path = write_spec(tmp_path, eval_grid={"sample.steps": [10, 20]})
    assert main(["ablate", str(spec_path), "--dry-run", "--seeds", "0,1"]) == 0
    out = capsys.readouterr().out
    assert "lambda_max-0.7_seed-1" in out and "seed-1__steps-20" in out and "evaluate: sample the run's final checkpoint" in out
    assert not (tmp_path / "out").exists()


def test_nproc_reaches_the_training_command(tmp_path: Path) -> None:
    plan = make_plan(parse_spec(write_spec(tmp_path)))
    cmd = train_command(plan.train[0], plan.data, Launch(nproc=2))
    assert cmd[-2:] == ["--nproc-per-node", "2"] and cmd[3:5] == ["train", "--recipe"]
    assert "--device" not in cmd  # no --device given: each command's own default


def test_device_reaches_every_command(tmp_path: Path) -> None:
    plan = make_plan(parse_spec(write_spec(tmp_path)))
    launch = Launch(device="cpu")
    train, evaluate = train_command(plan.train[0], plan.data, launch), evaluate_command(plan.evals[0], launch)
    assert train[3] == "train" and evaluate[3] == "evaluate"
    for cmd in (train, evaluate):
        assert cmd[cmd.index("--device") + 1] == "cpu"
    fake = FakeCLI(unfinished=(plan.train[0].name,))
    fake(train)  # interrupted: the next plan resumes it, on the same device
    resume = train_command(make_plan(parse_spec(write_spec(tmp_path))).train[0], plan.data, launch)
    assert resume[3] == "resume" and resume[resume.index("--device") + 1] == "cpu"


def test_ablate_refuses_a_device_this_machine_lacks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec_path = write_spec(tmp_path)
    device = "tpu" if torch.cuda.is_available() else "cuda"
    assert main(["ablate", str(spec_path), "--device", device]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--device {device}" in err
    assert not (tmp_path / "out").exists()  # refused before the first job, nothing written
    # Planned on a laptop for a GPU box: the dry run warns, as for missing data or weights (diff review #3)
    assert main(["ablate", str(spec_path), "--device", device, "--dry-run"]) == 0
    assert f"warning: --device {device}" in capsys.readouterr().err


SHIPPED_SPECS = sorted(p.stem for p in ABLATIONS_DIR.glob("*.yaml"))


def test_specs_are_shipped() -> None:
    assert {"methods", "lambda-max", "tiny-methods"} <= set(SHIPPED_SPECS)


@pytest.mark.parametrize("spec", SHIPPED_SPECS)
def test_shipped_specs_expand_and_validate(spec: str, tmp_path: Path) -> None:
    plan = make_plan(parse_spec(spec, out=str(tmp_path / "out")))  # by name, as `dreamctl ablate methods`
    assert plan.train and len({j.name for j in plan.train}) == len(plan.train) == len(expand(plan.spec))


def test_unknown_spec_name_lists_the_built_in_ones(capsys: pytest.CaptureFixture) -> None:
    assert main(["ablate", "lambda-maxx", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown ablation spec 'lambda-maxx'" in err and "lambda-max," in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("t_start, counts", [(None, True), (975, False), (985, False)])
def test_an_evaluation_counts_as_done_only_under_the_protocol_it_would_run(tmp_path: Path, t_start, counts) -> None:
    """DDIM with 40 of 1000 steps starts at 39*25 = 975 by default, but an evaluation told `--t-start 975` is
    filed under another protocol id (-tstart975) than the one the ablation's table reads: not done."""
    from dreamctl.config import load_recipe
    from dreamctl.evaluation import EvalOptions, resolve_request
    from dreamctl.experiments.ablate import _evaluated
    from dreamctl.inference import SampleOptions, sample_config
    from dreamctl.protocol import SEED_RULE

    recipe = load_recipe("tiny", ["sample.steps=40", "sample.t_start=null"])
    cfg = sample_config(recipe, SampleOptions(), "test")
    (tmp_path / "eval").mkdir()
    (tmp_path / "run.json").write_text(json.dumps({"step": 40}))
    protocol = {"sampler": "ddim", "steps": 40, "eta": 0.0, "clip_x0": False, "t_start": t_start, "ema": True,
                "precision": "fp32",
                "num_generated": 50, "ref_split": "train", "ref_num": 50, "seed": 0, "checkpoint_step": 40,
                "image_seeds": SEED_RULE}
    (tmp_path / "eval" / "p.json").write_text(json.dumps({"protocol_id": "p", "protocol": protocol,
                                                           "metrics": {"swd": {"value": 1.0}}}))
    req = resolve_request(recipe, SampleOptions(), EvalOptions(num=50, metrics=("swd",)))
    assert _evaluated(tmp_path, cfg, req) is counts


def test_a_resumed_conservative_run_is_priced_for_its_remaining_steps_only(tmp_path: Path) -> None:
    """Resuming after start_epoch, every remaining step is a rectified (6-unit) one; none of the cheap ones is left."""
    from dreamctl.config import load_recipe
    from dreamctl.training.loop import train_cost

    spec_path = write_spec(tmp_path, grid={"loss.lambda_max": [0.3]})
    plan = make_plan(parse_spec(spec_path))
    FakeCLI(unfinished=("lambda_max-0.3_seed-0",))(train_command(plan.train[0], plan.data))  # stops at step 20
    (job,) = make_plan(parse_spec(spec_path)).train
    # 640 images / batch 64 = 10 steps an epoch, 40 in all, rectified from epoch 2 = step 20: 20 left, all at 6
    assert (job.action, job.done) == ("resume", 20)
    assert (job.steps, job.images, job.forwards) == (20, 20 * 64, 64 * 6 * 20)
    # Resumed at step 15: 5 standard steps (3 units) are still ahead of the 20 rectified ones.
    recipe = load_recipe("tiny-conservative", ["train.epochs=4"])
    assert train_cost(recipe, 640, done=15) == (25, 25 * 64, 64 * (3 * 5 + 6 * 20))


def test_a_data_limit_below_the_split_sets_the_cost(tmp_path: Path) -> None:
    """data.limit trains on fewer images than the split holds: the plan must price those, not the whole split."""
    plan = make_plan(parse_spec(write_spec(tmp_path, grid={"loss.lambda_max": [0.3]},
                                           set=["train.epochs=4", "data.limit=320"])))
    job = plan.train[0]
    # 320 // 64 = 5 steps an epoch, 20 in all; rectified from epoch 2 = step 10
    assert (job.steps, job.images, job.forwards) == (20, 1280, 64 * (3 * 10 + 6 * 10))
    assert plan.train_images == (320,) and images_text(plan) == "320 training images"  # not the split's 640
    plan = make_plan(parse_spec(write_spec(tmp_path, grid={"data.limit": [320, 640]}, set=["train.epochs=4"])))
    assert images_text(plan) == "320–640 training images (data.limit varies)"
    # A limit beyond the split is refused as training would refuse it, before any job: it was priced as the split.
    with pytest.raises(DataError, match=r"run limit-1000_seed-0: data\.limit 1000 is outside 1..640, the size of "
                                        r"split train of .*; lower it with --set data.limit=N"):
        make_plan(parse_spec(write_spec(tmp_path, grid={"data.limit": [320, 1000]}, set=["train.epochs=4"])))


def _write_eval_record(run_dir: Path, **changes) -> None:
    """An eval file as `dreamctl evaluate` writes it for tiny at 40 DDIM steps, 50 images, the final step 40."""
    from dreamctl.protocol import SEED_RULE

    (run_dir / "eval").mkdir()
    (run_dir / "run.json").write_text(json.dumps({"step": 40}))
    record = {"protocol_id": "p", "metrics": {"swd": {"value": 1.0}},
              "protocol": {"sampler": "ddim", "steps": 40, "eta": 0.0, "clip_x0": False, "t_start": None, "ema": True,
                           "precision": "fp32",  # what evaluate uses on this CPU-only machine
                           "num_generated": 50, "ref_split": "train", "ref_num": 50, "seed": 0, "checkpoint_step": 40,
                           "image_seeds": SEED_RULE}}
    record["protocol"].update(changes.pop("protocol", {}))
    for key in changes.pop("drop", ()):
        del record["protocol"][key]
    record.update(changes)
    (run_dir / "eval" / "p.json").write_text(json.dumps(record))


@pytest.mark.parametrize("changes, sets, done", [
    ({}, [], True),
    ({"protocol": {"ema": False}}, [], False),  # raw weights measured, EMA asked for
    ({"drop": ["ema"]}, [], False),  # a file that does not say which weights: measured again
    ({"protocol": {"precision": "bf16"}}, [], False),  # drawn in bf16 (on a GPU); evaluate here would use fp32
    ({"metrics": {"swd": {"missing": "weights absent"}}}, [], False),  # recorded missing: asked for again
    ({"protocol": {"ref_num": 640}}, ["eval.ref_num=640"], True),  # 50 drawn against the recipe's 640 references
    ({}, ["eval.ref_num=640"], False),  # measured against 50 references, the recipe asks for 640
])
def test_an_existing_evaluation_is_reused_only_when_it_is_what_evaluate_would_write(tmp_path: Path, changes, sets,
                                                                                     done) -> None:
    """A plan skips an evaluation only if the file on disk measured the same weights, references and metrics."""
    from dreamctl.config import load_recipe
    from dreamctl.evaluation import EvalOptions, resolve_request
    from dreamctl.experiments.ablate import _evaluated
    from dreamctl.inference import SampleOptions, sample_config

    recipe = load_recipe("tiny", ["sample.steps=40", "sample.t_start=null", *sets])
    _write_eval_record(tmp_path, **changes)
    req = resolve_request(recipe, SampleOptions(), EvalOptions(num=50, metrics=("swd",)))  # what `evaluate --num 50` asks
    assert _evaluated(tmp_path, sample_config(recipe, SampleOptions(), "test"), req) is done


def test_plan_totals_leave_out_skipped_evaluations(tmp_path: Path) -> None:
    """Totals are what is still to spend: an evaluation already on disk costs nothing."""
    from dreamctl.config import load_recipe
    from dreamctl.experiments.ablate import EvalJob, Plan

    recipe = load_recipe("tiny")
    evals = (EvalJob("a__steps-10", "a", tmp_path, (), "skip", 50, 500, recipe),
             EvalJob("a__steps-20", "a", tmp_path, (), "evaluate", 50, 1000, recipe))
    totals = plan_totals(Plan(None, None, None, (), evals))
    assert (totals["eval_runs"], totals["eval_images"], totals["eval_forwards"]) == (1, 50, 1000)


@pytest.mark.parametrize("changes, message", [
    ({"grid": {"loss.lambda_max": []}}, r"grid\.loss\.lambda_max: List should have at least 1 item"),  # else zero jobs
    ({"eval_grid": {"sample.steps": []}}, r"eval_grid\.sample\.steps: List should have at least 1 item"),
    ({"seeds": []}, r"seeds: List should have at least 1 item.* \(a non-empty list of integers"),  # else no run at all
    ({"grid": [0.3, 0.5]}, r"grid: Input should be a valid dictionary \(each setting's values"),
    ({"evaulate": {}}, r"evaulate: unknown key; did you mean 'evaluate'\?"),
    ({"grid": {"train.seed": [0, 1]}}, r"list seeds under 'seeds:'"),
    ({"evaluate": {"metrics": ["swd"], "num": 0}}, r"evaluate\.num 0: evaluate draws 2 \(a covariance needs two\)"),
    ({"evaluate": False, "eval_grid": {"sample.steps": [10, 20]}}, r"'evaluate: false' contradicts 'eval_grid'"),
])
def test_specs_that_would_run_nothing_or_contradict_themselves_are_refused(tmp_path: Path, changes, message) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_spec(write_spec(tmp_path, **changes))


def test_the_smallest_valid_values_next_to_the_refused_ones_are_accepted(tmp_path: Path) -> None:
    spec = parse_spec(write_spec(tmp_path, seeds=[7], evaluate={"metrics": ["swd"], "num": 2},
                                 grid={"loss.lambda_max": [0.3]}))
    assert spec.seeds == (7,) and spec.num == 2 and spec.grid == (("loss.lambda_max", (0.3,)),)
    spec = parse_spec(write_spec(tmp_path, evaluate=False))
    assert spec.evaluate is False and spec.eval_grid == ()


def test_a_spec_without_base_or_recipe_axis_is_refused(tmp_path: Path) -> None:
    """Without a base recipe no run could be built: say so at parse time, not train a recipe named 'None'."""
    with pytest.raises(ConfigError, match=r"key 'base' is required \(a recipe name or path\), unless grid has a 'recipe' axis"):
        parse_spec(write_spec(tmp_path, base=None))


@pytest.mark.parametrize("fixed", [["train.epochs=4", 4], [["train.epochs=4"]], [{"train.epochs": 4}]])
def test_set_entries_that_are_not_strings_are_refused(tmp_path: Path, fixed) -> None:
    """`set: [train.epochs: 4]` (a YAML mapping, not 'key=value') is a spec error naming the form, not a crash."""
    with pytest.raises(ConfigError, match=r"set\.[01]: Input should be a valid string \('section\.key=value' strings"):
        parse_spec(write_spec(tmp_path, set=fixed))


def test_a_recipe_path_is_taken_beside_the_spec_only_when_it_is_there(tmp_path: Path, monkeypatch) -> None:
    """A recipe file beside the spec wins; one that is not there stays as written (relative to the working dir)."""
    spec_path = write_spec(tmp_path, base="mine.yaml", grid={"recipe": ["theirs.yml", "tiny"], "loss.lambda_max": [0.3]})
    spec = parse_spec(spec_path)
    assert spec.base == "mine.yaml" and dict(spec.grid)["recipe"] == ("theirs.yml", "tiny")
    (tmp_path / "mine.yaml").write_text("x: 1\n")
    (tmp_path / "theirs.yml").write_text("x: 1\n")
    monkeypatch.chdir(tmp_path / "data")  # the spec's folder is not the working directory
    spec = parse_spec(spec_path)
    assert spec.base == str(tmp_path.resolve() / "mine.yaml")
    assert dict(spec.grid)["recipe"] == (str(tmp_path.resolve() / "theirs.yml"), "tiny")


def test_training_without_data_is_one_error_naming_the_fix_before_any_job(tmp_path: Path) -> None:
    """No --data and no 'data:' in the spec: refused before the first command, saying where to give it."""
    fake = FakeCLI()
    plan = make_plan(parse_spec(write_spec(tmp_path, data=None, grid={"loss.lambda_max": [0.3, 0.5]})))
    assert plan.data is None
    with pytest.raises(ConfigError, match=r"run lambda_max-0\.3_seed-0 needs training data: give --data DIR or 'data:' in the spec"):
        execute(plan, runner=fake)
    assert fake.calls == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("changes, message", [
    # an AttributeError in the plan before
    ({"evaluate": {"metrics": [1, 2]}}, "evaluate.metrics.0: Input should be a valid string (metric names, a list or "
                                        "'fid,swd' as evaluate --metrics takes them; none: the recipe's eval.metrics); "
                                        "evaluate.metrics.1: Input should be a valid string"),
    ({"evaluate": None}, "evaluate: must be a mapping ({metrics: [...], num: N}, or false to train only)"),  # not false
    ({"evaluate": 5}, "evaluate: must be a mapping"),
    ({"evaluate": {"metrics": ["swd", "fdi"]}}, "unknown metric(s) fdi in evaluate.metrics; choose from"),
    ({"evaluate": {"metrics": [" "]}}, "unknown metric(s) (none given) in evaluate.metrics"),
    ({"seeds": [True]}, "seeds.0: Input should be a valid integer (a non-empty list of integers"),  # was run seed-true
    ({"evaluate": {"num": True}}, "evaluate.num: Input should be a valid integer (the images each evaluation draws"),
    ({"name": "../../elsewhere", "out": None}, "'name' '../../elsewhere' must be a plain name (it names runs/ablations/NAME); set"),
    ({"name": "..", "out": None}, "'name' '..' must be a plain name"),
    ({"evaluate": {"num": 1}}, "evaluate.num 1: evaluate draws 2 (a covariance needs two) to 1,048,576 images"),
])
def test_spec_values_are_checked_when_the_spec_is_read(tmp_path: Path, changes, message) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_spec(write_spec(tmp_path, **changes))


def test_metric_names_are_taken_as_evaluate_takes_them(tmp_path: Path) -> None:
    assert parse_spec(write_spec(tmp_path, evaluate={"metrics": ["SWD", " fid"]})).metrics == ("SWD", " fid")
    assert parse_spec(write_spec(tmp_path, evaluate={"metrics": "swd,kid,"})).metrics == ("swd", "kid", "")


def test_a_value_written_two_ways_is_one_grid_point(tmp_path: Path) -> None:
    """PyYAML reads 1e-3 (no dot) as a string: compared as the recipe holds it, it is 0.001 listed twice."""
    path = write_spec(tmp_path, grid={"optim.lr": [0.001, "1e-3"]})
    path.write_text(path.read_text().replace("'1e-3'", "1e-3"))
    with pytest.raises(ConfigError, match=re.escape("grid.optim.lr lists 0.001 twice (written 0.001 and '1e-3'); "
                                                    "list each value once")):
        parse_spec(path)
    for bad in ({"grid": {"train.batch_size": [16, "16"]}}, {"grid": {"optim.betas": [[0.9, 0.99], ["9e-1", 0.99]]}},
                {"eval_grid": {"sample.eta": [0.0, "0e0"]}}):
        with pytest.raises(ConfigError, match="twice"):
            parse_spec(write_spec(tmp_path, **bad))
    # values as written name the runs; distinct values stay distinct, and true is not 1 (the recipe refuses it)
    spec = parse_spec(write_spec(tmp_path, grid={"optim.lr": [0.001, "2e-3"], "train.batch_size": [1, True]}))
    assert [name for name, _, _ in expand(spec)][:3] == ["lr-0.001_batch_size-1_seed-0", "lr-0.001_batch_size-true_seed-0",
                                                        "lr-2e-3_batch_size-1_seed-0"]


def test_a_name_with_a_slash_is_taken_where_out_is_given(tmp_path: Path) -> None:
    """The name builds the default output folder only: with 'out' set it is a title, slashes and all."""
    spec = parse_spec(write_spec(tmp_path, name="lr sweep 1/2", out=str(tmp_path / "o")))
    assert spec.name == "lr sweep 1/2" and spec.out == tmp_path / "o"


def test_a_run_that_would_rectify_no_step_is_warned_about_in_the_plan(tmp_path: Path) -> None:
    """Two epochs of tiny-conservative end before its start_epoch 2: each point is standard DDPM, and the
    ablation compares identical methods under two names (research review #1)."""
    from dreamctl.errors import DreamctlWarning

    with pytest.warns(DreamctlWarning, match=r"run lambda_max-0\.3_seed-0: this dream_conservative run rectifies no "
                                             r"step \(it ends in epoch 1, before loss\.start_epoch 2\)"):
        make_plan(parse_spec(write_spec(tmp_path, set=["train.epochs=2"])))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_plan(parse_spec(write_spec(tmp_path, set=["train.epochs=3"])))  # epoch 2 rectifies


def test_a_grid_axis_that_no_run_reads_is_refused(tmp_path: Path) -> None:
    """`base: tiny-dream` with a grid over loss.alpha planned two bit-identical runs (research review #2)."""
    with pytest.raises(ConfigError, match=r"grid axis loss\.alpha: loss\.kind dream does not read it, so its runs "
                                          r"would be identical"):
        make_plan(parse_spec(write_spec(tmp_path, base="tiny-dream", grid={"loss.alpha": [0.3, 0.7]})))
    # Read by one of the recipes on a recipe axis: planned (and warned about for the other).
    plan = make_plan(parse_spec(write_spec(tmp_path, base=None, grid={"recipe": ["tiny-dream", "tiny-conservative"],
                                                                      "loss.alpha": [0.3, 0.7]})))
    assert len(plan.train) == 4


def test_ablate_set_shrinks_a_spec_without_copying_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A quick look at a built-in spec meant copying it to lower train.max_steps (research review #6)."""
    spec_path = write_spec(tmp_path, set=["train.epochs=4", "train.max_steps=30"])
    spec = parse_spec(spec_path, extra_set=("train.max_steps=10",))
    assert spec.set == ("train.epochs=4", "train.max_steps=10")  # the spec's value replaced, not set twice
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "--set .* is given twice")  # not for each run
        assert {j.steps for j in make_plan(spec).train} == {10}
    assert main(["ablate", str(spec_path), "--dry-run", "--set", "train.max_steps=10"]) == 0
    assert "train.max_steps=10" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"loss\.lambda_max is both a grid axis and in 'set' \(or --set\)"):
        parse_spec(spec_path, extra_set=("loss.lambda_max=0.2",))  # the grid's values would win unseen


def test_seeds_and_settings_that_train_nothing_new_are_not_set_or_grid_keys(tmp_path: Path) -> None:
    """Each run's train.seed comes last, so one in set/--set lost without a word; a grid over a setting that
    leaves the weights as they are trained the same run under two names (diff review #1, #5)."""
    with pytest.raises(ConfigError, match=r"train\.seed in 'set' \(or --set\): list seeds under 'seeds:' or pass --seeds"):
        parse_spec(write_spec(tmp_path), extra_set=("train.seed=3",))
    for key in ("sample.batch_size", "train.log_every", "eval.num"):
        with pytest.raises(ConfigError, match=rf"grid key '{re.escape(key)}' leaves the trained weights as they are"):
            parse_spec(write_spec(tmp_path, grid={key: [10, 20]}))
    with pytest.raises(ConfigError, match=r"grid key 'sample\.clip_x0' is an eval-time axis"):
        parse_spec(write_spec(tmp_path, grid={"sample.clip_x0": [True, False]}))


def test_true_false_eval_axes_become_evaluate_flags(tmp_path: Path) -> None:
    from dreamctl.experiments.spec import expand_eval

    spec = parse_spec(write_spec(tmp_path, eval_grid={"sample.clip_x0": [True, False], "sample.use_ema": [False]}))
    assert [(name, flags) for name, _, flags in expand_eval(spec)] == [
        ("clip_x0-true_use_ema-false", ("--clip-x0", "--no-ema")), ("clip_x0-false_use_ema-false", ("--no-clip-x0", "--no-ema"))]
    plan = make_plan(spec)
    assert {e.name.split("__")[1] for e in plan.evals} == {"clip_x0-true_use_ema-false", "clip_x0-false_use_ema-false"}


def test_an_empty_set_or_grid_key_is_no_entry(tmp_path: Path) -> None:
    """`grid:` with its last axis commented out is YAML's null; the pydantic spec refused it (diff review #2)."""
    path = tmp_path / "spec.yaml"
    write_spec(tmp_path)  # its data folder
    path.write_text(f"base: tiny\ndata: {tmp_path / 'data'}\nset:\ngrid:\n  # loss.lambda_max: [0.3]\neval_grid:\n")
    spec = parse_spec(path)
    assert (spec.set, spec.grid, spec.eval_grid) == ((), (), ())
