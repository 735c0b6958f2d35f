"""ablate: spec checks, grid expansion, the dry-run plan and its costs, skip/resume/train
through a fake CLI runner that writes run folders itself, failures that do not stop the rest."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from dreamctl.cli import main
from dreamctl.config import load_recipe, recipe_from_yaml, recipe_to_yaml
from dreamctl.config.schema import SEED_RULE
from dreamctl.data.shards import FORMAT
from dreamctl.errors import ConfigError, DataError, WeightsError
from dreamctl.experiments import execute as execute_module
from dreamctl.experiments.ablate import make_plan
from dreamctl.experiments.spec import ABLATIONS_DIR, expand, parse_spec, point_name
from dreamctl.sampling import SampleOptions, sample_config
from dreamctl.experiments.execute import CommandResult, execute, plan_rows, plan_totals, train_command



class FakeCLI:
    """Stands in for `python -m dreamctl ...`: writes what train/resume/evaluate would write."""

    def __init__(self, fail: tuple[str, ...] = (), unfinished: tuple[str, ...] = ()) -> None:
        self.calls: list[list[str]] = []
        self.fail, self.unfinished = fail, unfinished

    def __call__(self, cmd: list[str]) -> CommandResult:
        assert cmd[:3] == [sys.executable, "-m", "dreamctl"]
        args = cmd[3:]
        self.calls.append(args)
        return getattr(self, args[0])(args[1:])

    def train(self, args: list[str]) -> CommandResult:
        opts = dict(zip(args[::2], args[1::2]))
        sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
        run_dir = Path(opts["--run-dir"])
        run_dir.mkdir(parents=True, exist_ok=True)
        recipe = load_recipe(opts["--recipe"], sets)
        (run_dir / "recipe.yaml").write_text(recipe_to_yaml(recipe))
        if run_dir.name in self.fail:
            return CommandResult(3, "step 1\nTraceback (most recent call last):\nRuntimeError: boom\n")
        status = "interrupted" if run_dir.name in self.unfinished else "finished"
        self._write(run_dir, status, recipe.loss.lambda_max)
        return CommandResult(0)

    def resume(self, args: list[str]) -> CommandResult:
        run_dir = Path(args[0])
        info = json.loads((run_dir / "run.json").read_text())
        self._write(run_dir, "finished", 0.0, start=info["step"])
        return CommandResult(0)

    def evaluate(self, args: list[str]) -> CommandResult:
        run_dir = Path(args[0])
        opts = dict(zip(args[1::2], args[2::2]))
        recipe = recipe_from_yaml((run_dir / "recipe.yaml").read_text(), "fake")
        asked = SampleOptions(sampler=opts.get("--sampler"), eta=float(opts["--eta"]) if "--eta" in opts else None,
                              steps=int(opts["--steps"]) if "--steps" in opts else None,
                              t_start=int(opts["--t-start"]) if "--t-start" in opts else None)
        sample = sample_config(recipe, asked, "fake")  # evaluate's own resolution of its flags
        steps = sample.steps
        protocol = {"checkpoint_step": json.loads((run_dir / "run.json").read_text())["step"], "ema": True,
                    "sampler": sample.sampler, "steps": steps, "eta": sample.eta, "t_start": sample.t_start,
                    "num_generated": int(opts["--num"]),
                    "ref_split": "train", "ref_num": int(opts["--num"]), "seed": recipe.eval.seed,
                    "image_seeds": SEED_RULE, "clip_x0": sample.clip_x0,
                    "resize": "none", "feature_network": None}
        pid = f"{sample.sampler}{steps}-n{opts['--num']}"
        metrics = {m: {"value": 1.0 + steps / 100} for m in opts["--metrics"].split(",")}
        (run_dir / "eval").mkdir(exist_ok=True)
        (run_dir / "eval" / f"{pid}.json").write_text(json.dumps({"protocol_id": pid, "protocol": protocol, "metrics": metrics}))
        return CommandResult(0)

    @staticmethod
    def _write(run_dir: Path, status: str, lam: float, start: int = 0) -> None:
        step = 20 if status == "interrupted" else 40
        rows = [{"step": s, "loss": 1 / s, "loss_std": 1 / s, "loss_rect": 1.2 / s, "lambda_mean": lam * s / 40}
                for s in range(start + 5, step + 1, 5)]
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        (run_dir / "checkpoints" / f"step-{step:08d}.pt").write_bytes(b"fake")
        (run_dir / "run.json").write_text(json.dumps({"name": run_dir.name, "status": status, "step": step,
                                                      "images_seen": step * 64, "wall_time_s": 3.0}))


def write_spec(tmp_path: Path, **changes) -> Path:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    shard = {"file": "train-00000.h5", "count": 640, "sha256": "0" * 64}  # only the manifest is read
    (data / "manifest.json").write_text(json.dumps({"format": FORMAT, "preprocessing": {}, "image_shape": [32, 32, 3],
                                                    "splits": {"train": {"count": 640, "shards": [shard]}}}))
    spec = {"name": "lam", "base": "tiny-conservative", "data": str(data), "out": str(tmp_path / "out"),
            "set": ["train.epochs=4"], "grid": {"loss.lambda_max": [0.3, 0.5, 0.7]}, "seeds": [0],
            "evaluate": {"metrics": ["swd"], "num": 50}}
    spec.update(changes)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_run_names_come_from_overrides() -> None:
    assert point_name({"loss.lambda_max": 0.3, "seed": 0}) == "lambda_max-0.3_seed-0"
    assert point_name({"a.x": 1, "b.x": 2}) == "a.x-1_b.x-2"  # shared last parts keep the full key
    assert point_name({"recipe": "recipes/my.yaml", "data.path": "a/b c"}) == "recipe-my_path-a-b-c"


def test_dry_run_plan_separates_training_from_resampling_and_prices_it(tmp_path: Path) -> None:
    spec = parse_spec(write_spec(tmp_path, eval_grid={"sample.steps": [10, 20]}), seeds=(0, 1))
    plan = make_plan(spec)
    assert [j.name for j in plan.train] == ["lambda_max-0.3_seed-0", "lambda_max-0.3_seed-1", "lambda_max-0.5_seed-0",
                                            "lambda_max-0.5_seed-1", "lambda_max-0.7_seed-0", "lambda_max-0.7_seed-1"]
    assert {j.action for j in plan.train} == {"train"} and plan.data_count == 640
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


def test_skip_finished_resume_interrupted_train_new(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path)
    out = tmp_path / "out"
    setup = FakeCLI(unfinished=("lambda_max-0.5_seed-0",))
    for job in make_plan(parse_spec(spec_path)).train[:2]:  # 0.3 finishes, 0.5 is interrupted
        setup(train_command(job, tmp_path / "data", None))
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
    assert result.figures and all(f"figures/{p.name}" in report and p.stat().st_size > 10_000 for p in result.figures)

    again = FakeCLI()
    execute(make_plan(parse_spec(spec_path)), runner=again)
    assert again.calls == []  # nothing new: everything finished and evaluated


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


def test_spec_errors_exit_2_before_anything_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    fake = FakeCLI()
    monkeypatch.setattr(execute_module, "run_command", fake)
    assert main(["ablate", str(write_spec(tmp_path, sets=["x=1"]))]) == 2
    assert "unknown key 'sets'" in capsys.readouterr().err
    assert main(["ablate", str(write_spec(tmp_path, grid={"loss.lambda_max": [0.3, 1.5]}))]) == 2
    assert "loss.lambda_max" in capsys.readouterr().err
    assert main(["ablate", str(write_spec(tmp_path, grid={"loss.lambda_maxx": [0.3]}))]) == 2
    assert "loss.lambda_maxx" in capsys.readouterr().err
    assert fake.calls == [] and not (tmp_path / "out").exists()
    for bad, message in (({"grid": {"sample.steps": [10]}}, "eval-time axis"),
                         ({"eval_grid": {"loss.alpha": [0.5]}}, "needs training"),
                         ({"evaluate": {"metrics": ["swd", "fdi"]}}, "unknown metric"),
                         ({"evaluate": {"metrics": ["swd"], "nums": 3}}, "evaluate.nums"),
                         ({"grid": {"data.path": ["a/b", "a b"]}}, "same run name")):
        with pytest.raises(ConfigError, match=message):
            make_plan(parse_spec(write_spec(tmp_path, **bad)))


def test_existing_folder_with_other_settings_is_refused(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path)
    execute(make_plan(parse_spec(spec_path)), runner=FakeCLI())
    # What resume may change is carried over: the finished runs are resumed with it.
    longer = make_plan(parse_spec(write_spec(tmp_path, set=["train.epochs=8"])))
    assert {(j.action, j.resume_set) for j in longer.train} == {("resume", ("train.epochs=8",))}
    assert train_command(longer.train[0], longer.data, None)[-2:] == ["--set", "train.epochs=8"]
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


def test_metrics_without_weights_stop_before_any_training(tmp_path: Path) -> None:
    fake = FakeCLI()
    with pytest.raises(WeightsError, match="inception"):
        execute(make_plan(parse_spec(write_spec(tmp_path, evaluate={"metrics": ["swd", "fid"]}))), runner=fake)
    assert fake.calls == [] and not (tmp_path / "out").exists()


def test_ctrl_c_keeps_the_report_and_exits_130(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    fake = FakeCLI()

    def interrupted_second_job(cmd: list[str]) -> CommandResult:
        if len(fake.calls) == 2:
            raise KeyboardInterrupt
        return fake(cmd)

    monkeypatch.setattr(execute_module, "run_command", interrupted_second_job)
    assert main(["ablate", str(write_spec(tmp_path))]) == 130
    assert "interrupted" in capsys.readouterr().err
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Interrupted (Ctrl-C)** after 2 of 6 jobs" in report and "succeeded" not in report


def test_a_set_aside_folder_never_overwrites_an_earlier_one(tmp_path: Path) -> None:
    parking = tmp_path / "parked"
    for name in ("r.1", "r.2"):
        (parking / name).mkdir(parents=True)
    for expected in ("r", "r.3"):
        (tmp_path / "r").mkdir()
        assert execute_module._set_aside(tmp_path / "r", parking).name == expected
    assert sorted(p.name for p in parking.iterdir()) == ["r", "r.1", "r.2", "r.3"]


def test_cli_dry_run_prints_plan_and_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from dreamctl.cli import common

    monkeypatch.setattr(common.console, "width", 160)
    spec_path = write_spec(tmp_path, eval_grid={"sample.steps": [10, 20]})
    assert main(["ablate", str(spec_path), "--dry-run", "--seeds", "0,1"]) == 0
    out = capsys.readouterr().out
    assert "lambda_max-0.7_seed-1" in out and "seed-1__steps-20" in out and "evaluate only" in out
    assert not (tmp_path / "out").exists()


def test_nproc_reaches_the_training_command(tmp_path: Path) -> None:
    plan = make_plan(parse_spec(write_spec(tmp_path)))
    cmd = train_command(plan.train[0], plan.data, 2)
    assert cmd[-2:] == ["--nproc-per-node", "2"] and cmd[3:5] == ["train", "--recipe"]


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
