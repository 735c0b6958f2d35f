"""An ablation plan: every run and evaluation of a spec, what each must still do, its cost, and
the table that shows it (the dry run's and the report's).

A run already finished is skipped, one interrupted is resumed, one that stopped before its
first checkpoint starts again; an evaluation already on disk for the final checkpoint is
skipped. The plan is carried out by dreamctl.experiments.execute; the spec's format is in
dreamctl.experiments.spec and dreamctl/recipes/ablations/.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dreamctl import runtime
from dreamctl.config import Recipe, SampleConfig, flat_items, load_recipe
from dreamctl.config.keys import RESUMABLE_KEYS
from dreamctl.data.shards import limited, manifest_path, split_count
from dreamctl.errors import ConfigError, DataError, DreamctlWarning
from dreamctl.evaluation import EvalOptions, EvalRequest, check_reference, resolve_request
from dreamctl.experiments.runs import read_evals
from dreamctl.experiments.spec import Spec, expand, expand_eval
from dreamctl.inference import SampleOptions, sample_config
from dreamctl.protocol import Sampling, holds_protocol
from dreamctl.training.checkpoints import list_checkpoints
from dreamctl.training.loop import idle_rectification, train_cost
from dreamctl.training.rundir import RunDir

# What the plan does with a run (restart: it stopped before its first checkpoint) and with an evaluation.
TrainAction = Literal["train", "resume", "restart", "skip"]
EvalAction = Literal["evaluate", "skip"]


@dataclass(frozen=True)
class TrainJob:
    name: str
    recipe: str
    overrides: tuple[str, ...]
    run_dir: Path
    action: TrainAction
    steps: int | None
    images: int | None
    forwards: int | None  # image forward-pass units
    resolved_recipe: Recipe = field(compare=False, repr=False)  # what it trains
    split_images: int | None  # in its training split, data.limit applied (None: unknown, data not prepared yet)
    resume_set: tuple[str, ...] = ()  # settings the spec changed that resume may change (train.epochs, ...)
    done: int = 0  # steps already taken (resume): steps, images and forwards count only what is left


@dataclass(frozen=True)
class EvalJob:
    name: str
    run: str
    run_dir: Path
    flags: tuple[str, ...]
    action: EvalAction
    images: int
    forwards: int
    resolved_recipe: Recipe = field(compare=False, repr=False)  # its run's, with this point's sample section


@dataclass(frozen=True)
class Plan:
    spec: Spec
    data: Path | None
    train_images: tuple[int, ...]  # the distinct numbers of images the runs train on (data.limit applied); () unknown
    train: tuple[TrainJob, ...]
    evals: tuple[EvalJob, ...]



# ----------------------------------------------------------------------------- costs

def data_count(data: Path | None, split: str) -> int | None:
    """Images in a prepared split (manifest.json), None when the folder is not prepared yet."""
    if data is None or not manifest_path(data).is_file():
        return None
    return split_count(data, split)


def train_images(recipe: Recipe, count: int | None, data: Path | None) -> int | None:
    """The images a run trains on: the split's `count` under data.limit, checked as training will (the limit
    alone before the data is prepared)."""
    if count is None:
        return recipe.data.limit
    return limited(count, recipe.data.limit, recipe.data.split, data or "the data")


def images_text(plan: Plan) -> str | None:
    """`640 training images`, or a range where data.limit differs between runs; None when unknown."""
    if not plan.train_images:
        return None
    low, high = plan.train_images[0], plan.train_images[-1]
    return f"{low:,} training images" if low == high else f"{low:,}–{high:,} training images (data.limit varies)"


# ----------------------------------------------------------------------------- plan

def _step_reached(run_dir: Path) -> int:
    """The step of the run's last checkpoint (run.json is updated with each)."""
    return int(RunDir(run_dir).info().get("step") or 0)


def run_status(run_dir: Path) -> TrainAction:
    """What the plan does with the run in `run_dir`: train, resume, restart (no checkpoint yet) or skip."""
    run = RunDir(run_dir)
    if run.info().get("status") == "finished":
        return "skip"
    if list_checkpoints(run.checkpoints):
        return "resume"
    # A run that stopped before its first checkpoint cannot resume: it starts again (the old folder is kept aside).
    return "restart" if run.exists() else "train"


# What a spec may change in a finished or interrupted run: its length and what it logs, samples and
# evaluates. Not the optimizer (a run trained at another lr is another experiment), though resume allows it.
CARRIED_KEYS = tuple(k for k in RESUMABLE_KEYS if not k.startswith(("optim.", "data.")))


def _changes(run_dir: Path, expected: Recipe, data: Path | None) -> tuple[str, ...]:
    """What the spec changes in an existing run: `--set` overrides for resume, or an error.

    The whole resolved recipe is compared (a key dropped from the spec counts too), and the
    data by its content hash; only CARRIED_KEYS are carried over.
    """
    run = RunDir(run_dir)
    if not run.exists():
        return ()
    have, want = flat_items(run.recipe()), flat_items(expected)
    differ = [k for k in want if k != "data.path" and have.get(k) != want[k]]
    fixed = [k for k in differ if not k.startswith(CARRIED_KEYS)]
    if fixed:
        k = fixed[0]
        raise ConfigError(f"{run_dir} already holds a run with {k}={have.get(k)!r} but the spec asks for "
                          f"{want[k]!r}: delete that folder or choose another 'out'")
    if data is not None and manifest_path(data).is_file():
        run.check_data(data, "give the spec that run's data, or choose another 'out'")
    return tuple(f"{k}={json.dumps(want[k])}" for k in differ)


def _evaluated(run_dir: Path, cfg: SampleConfig, req: EvalRequest) -> bool:
    """True when an eval file already has every asked metric, with a value, for the final checkpoint,
    under the protocol evaluate would record now (sampling settings, reference split and size, seed).

    A metric recorded as missing (absent weights, say) is asked for again: evaluate reuses its samples.
    """
    run = RunDir(run_dir)
    drawn = Sampling.of(cfg, run.info().get("step"), req.seed, runtime.inference_precision())
    want = drawn.protocol_fields(req.num, req.ref_split, req.ref_num)
    return any(holds_protocol(r.protocol, want) and all("value" in r.metrics.get(m, {}) for m in req.metrics)
               for r in read_evals(run.eval))


def _plan_run(spec: Spec, name: str, recipe: Recipe, data: Path | None, count: int | None,
              overrides: tuple[str, ...], recipe_name: str) -> tuple[TrainJob, list[EvalJob], int | None]:
    """One grid point's training job, its evaluation jobs, and the number of images it trains on (None: data not
    prepared yet), checked as train and evaluate will check them."""
    run_dir = spec.out / name
    # evaluate's own resolution of its flags (a DDPM point runs all T steps, null = the recipe's)
    points = [(suffix, sample_config(recipe, SampleOptions(**options), f"eval point {suffix}"), flags)
              for suffix, options, flags in expand_eval(spec)] if spec.evaluate else []
    # no point sets these; a spec that does not evaluate is not refused for its eval settings
    req = resolve_request(recipe, SampleOptions(), EvalOptions(num=spec.num, metrics=spec.metrics)) if points else None
    if req is not None and data is not None and manifest_path(data).is_file():  # evaluate's check, now
        check_reference(data, req.ref_split, req.ref_num, recipe.data.resolution,
                        fix="lower `evaluate: {num: N}` in the spec, or set eval.ref_num or eval.ref",
                        size_fix=f"prepare the data at --resolution {recipe.data.resolution}, or set "
                                 f"data.resolution to the data's in the spec's `set`")
    resume_set = _changes(run_dir, recipe, data)
    action = run_status(run_dir)
    steps_done = _step_reached(run_dir) if action in ("resume", "skip") else 0
    n = train_images(recipe, count, data)
    cost = (None, None, None) if n is None else train_cost(recipe, n, steps_done)  # unprepared: unknown
    steps, images, forwards = cost
    # A finished run resumes when the spec changes it, or when its recipe asks for steps not trained yet: a
    # `resume --set train.max_steps=N` killed between recipe.yaml and run.json leaves it `finished` at the old step.
    if action == "skip" and (resume_set or (steps or 0) > 0):
        action = "resume"
    if n is not None and (idle := idle_rectification(recipe, n)):
        warnings.warn(f"{spec.path}: run {name}: {idle}", DreamctlWarning, stacklevel=3)
    train = TrainJob(name, recipe_name, overrides, run_dir, action, steps, images, forwards, recipe, n,
                     resume_set=resume_set, done=steps_done)
    extra: tuple[str, ...] = ("--metrics", ",".join(spec.metrics)) if spec.metrics else ()
    extra += ("--num", str(spec.num)) if spec.num else ()
    evals = [EvalJob(f"{name}__{suffix}", name, run_dir, flags + extra,
                     "skip" if action == "skip" and _evaluated(run_dir, cfg, req) else "evaluate",
                     req.num, req.num * cfg.steps, recipe.model_copy(update={"sample": cfg}))
             for suffix, cfg, flags in points if req is not None]
    return train, evals, n


def _check_axes_read(spec: Spec, recipes: list[Recipe]) -> None:
    """An axis no run reads trains the same run under each of its names."""
    for key, _ in spec.grid:
        if all(key.removeprefix("loss.") in recipe.loss.unused() for recipe in recipes):
            kinds = ", ".join(sorted({recipe.loss.kind for recipe in recipes}))
            raise ConfigError(f"{spec.path}: grid axis {key}: loss.kind {kinds} does not read it, so its runs "
                              "would be identical; vary a setting of the kind, or set loss.kind")


def make_plan(spec: Spec) -> Plan:
    """Validate every expanded recipe first (a bad key fails before anything runs), then price each job."""
    data = Path(spec.data) if spec.data else None
    runs = expand(spec)
    names = [name for name, _, _ in runs]
    if len(set(names)) < len(names):
        clash = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"{spec.path}: two grid points get the same run name ({', '.join(clash)}); make the values distinct")
    trains, evals, recipes = [], [], []
    counts: dict[str, int | None] = {}  # images per split, read once
    used: set[int | None] = set()
    for name, recipe_name, overrides in runs:
        try:
            recipe = load_recipe(recipe_name, overrides)
            if recipe.data.split not in counts:
                counts[recipe.data.split] = data_count(data, recipe.data.split)
            count = counts[recipe.data.split]
            train, run_evals, n = _plan_run(spec, name, recipe, data, count, overrides, recipe_name)
        except (ConfigError, DataError) as err:  # which spec and which grid point, before anything runs
            raise type(err)(f"{spec.path}: run {name}: {err}") from None
        recipes.append(recipe)
        trains.append(train)
        evals += run_evals
        used.add(None if count is None else n)  # data.limit alone is no count
    _check_axes_read(spec, recipes)
    known = tuple(sorted(n for n in used if n is not None)) if None not in used else ()
    return Plan(spec, data, known, tuple(trains), tuple(evals))


# ----------------------------------------------------------------------------- presentation

def count_text(value: int | None) -> str:
    """A cost for the plan's table: thousands separated, or unknown (data not prepared yet)."""
    return "unknown" if value is None else f"{value:,}"


PLAN_NOTE = ("evaluate: sample the run's final checkpoint and score it (eval-time settings need no training of "
             "their own); forward passes count a backward as two; skipped jobs cost nothing")


def plan_rows(plan: Plan) -> tuple[list[str], list[list[str]]]:
    """The plan as text cells (dry-run table and report): what runs, how, and what it costs.

    A run's settings are in its name; an evaluation samples its run's final checkpoint, so each
    eval-time point (eval_grid) costs sampling only. A skipped job costs nothing (—).
    """
    head = ["job", "action", "steps", "images", "forward passes"]
    rows = []
    for job in plan.train:
        action = {"skip": "skip (finished)", "resume": f"resume from step {job.done}", "train": "train",
                  "restart": "train again (no checkpoint)"}[job.action]
        costs = ["—"] * 3 if job.action == "skip" else [count_text(job.steps), count_text(job.images), count_text(job.forwards)]
        rows.append([job.name, action, *costs])
        for ev in (e for e in plan.evals if e.run == job.name):
            if ev.action == "skip":
                rows.append([ev.name, "skip (evaluated)", "—", "—", "—"])
            else:
                rows.append([ev.name, "evaluate", "—", count_text(ev.images), count_text(ev.forwards)])
    return head, rows


def plan_totals(plan: Plan) -> dict[str, int | None]:
    """Images and forward passes still to spend (skipped jobs cost nothing); None when any is unknown."""
    def total(values: list[int | None]) -> int | None:
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)

    trains = [j for j in plan.train if j.action != "skip"]
    evals = [e for e in plan.evals if e.action != "skip"]
    return {"train_runs": len(trains), "train_images": total([j.images for j in trains]),
            "train_forwards": total([j.forwards for j in trains]), "eval_runs": len(evals),
            "eval_images": total([e.images for e in evals]), "eval_forwards": total([e.forwards for e in evals])}
