"""Ablations: a YAML spec -> a grid of runs -> a plan -> CLI subprocesses -> a report.

Train-time axes (`grid`) each make a training run; eval-time axes (`eval_grid`: sampler,
steps, eta, t_start) only re-sample a trained checkpoint. Run names come from their
overrides, so rerunning a spec skips finished runs, resumes interrupted ones and runs
only what is new. See recipes/ablations/ for the study's questions.

`data` and `out` are relative to the working directory (run from the repository root);
a recipe given as a .yaml path is looked up beside the spec first.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dreamctl.config import Recipe, flat_items, load_recipe, parse_override, recipe_from_yaml
from dreamctl.data.shards import split_count
from dreamctl.errors import ConfigError
from dreamctl.experiments.runs import read_evals, read_json

SPEC_KEYS = ("name", "description", "base", "data", "out", "set", "grid", "eval_grid", "seeds", "evaluate")
EVALUATE_KEYS = ("metrics", "num")
RECIPE_AXIS = "recipe"  # `grid: {recipe: [baseline, dream]}`: the base recipe itself varies
EVAL_AXES = {"sample.sampler": "--sampler", "sample.steps": "--steps", "sample.eta": "--eta",
             "sample.t_start": "--t-start"}  # evaluate's flags; everything else needs training
# Forward-pass units per image per step (a backward counts as two forwards; DESIGN.md).
FORWARD_UNITS = {"standard": 3, "dream": 4, "dream_conservative": 6, "input_perturbation": 3}

Axes = tuple[tuple[str, tuple[Any, ...]], ...]


@dataclass(frozen=True)
class Spec:
    name: str
    path: Path
    base: str | None
    data: str | None
    out: Path
    set: tuple[str, ...]
    grid: Axes
    eval_grid: Axes
    seeds: tuple[int, ...]
    evaluate: bool  # `evaluate: false` trains only
    metrics: tuple[str, ...] | None  # None: the recipe's eval.metrics
    num: int | None  # None: the recipe's eval.num
    description: str = ""


@dataclass(frozen=True)
class TrainJob:
    name: str
    recipe: str
    overrides: tuple[str, ...]
    run_dir: Path
    action: str  # train | resume | restart (stopped before a checkpoint) | skip
    steps: int | None
    images: int | None
    forwards: int | None  # image forward-pass units


@dataclass(frozen=True)
class EvalJob:
    name: str
    run: str
    run_dir: Path
    flags: tuple[str, ...]
    action: str  # evaluate | skip
    images: int
    forwards: int


@dataclass(frozen=True)
class Plan:
    spec: Spec
    data: Path | None
    data_count: int | None  # images in the training split, from the data manifest
    train: tuple[TrainJob, ...]
    evals: tuple[EvalJob, ...]


def _spec_error(path: Path, text: str) -> ConfigError:
    return ConfigError(f"{path}: {text}")


def _axes(path: Path, section: str, raw: Any) -> Axes:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise _spec_error(path, f"'{section}' must map a setting to a list of values")
    axes = []
    for key, values in raw.items():
        if not isinstance(values, list) or not values:
            raise _spec_error(path, f"{section}.{key} must be a non-empty list of values, got {values!r}")
        if section == "grid" and key in EVAL_AXES:
            raise _spec_error(path, f"grid key '{key}' is an eval-time axis: put it under eval_grid (no retraining)")
        if section == "grid" and key == "train.seed":
            raise _spec_error(path, "grid key 'train.seed': list seeds under 'seeds:' (or pass --seeds)")
        if section == "eval_grid" and key not in EVAL_AXES:
            raise _spec_error(path, f"eval_grid key '{key}' needs training; eval-time axes are {', '.join(EVAL_AXES)}")
        if key != RECIPE_AXIS:
            parse_override(f"{key}=0")  # a malformed key fails here, naming it
        axes.append((str(key), tuple(values)))
    return tuple(axes)


def parse_spec(path: str | Path, seeds: tuple[int, ...] | None = None, data: str | None = None,
               out: str | None = None) -> Spec:
    """Read and check an ablation spec; CLI values (seeds, data, out) override the file's."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ablation spec {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise _spec_error(path, f"not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise _spec_error(path, "an ablation spec must be a mapping")
    for key in raw:
        if key not in SPEC_KEYS:
            raise _spec_error(path, f"unknown key '{key}' (known: {', '.join(SPEC_KEYS)})")
    grid, eval_grid = _axes(path, "grid", raw.get("grid")), _axes(path, "eval_grid", raw.get("eval_grid"))
    grid = tuple((k, tuple(_resolve_base(str(v), path) for v in vs) if k == RECIPE_AXIS else vs) for k, vs in grid)
    base = raw.get("base")
    if base is None and RECIPE_AXIS not in dict(grid):
        raise _spec_error(path, "key 'base' is required (a recipe name or path), unless grid has a 'recipe' axis")
    fixed = raw.get("set") or []
    if not isinstance(fixed, list) or not all(isinstance(s, str) for s in fixed):
        raise _spec_error(path, "'set' must be a list of 'section.key=value' strings")
    for text in fixed:
        parse_override(text)
    spec_seeds = raw.get("seeds", [0])
    if not isinstance(spec_seeds, list) or not spec_seeds or not all(isinstance(s, int) for s in spec_seeds):
        raise _spec_error(path, f"'seeds' must be a non-empty list of integers, got {spec_seeds!r}")
    evaluate = raw.get("evaluate", {})
    if evaluate is False and eval_grid:
        raise _spec_error(path, "'evaluate: false' contradicts 'eval_grid'")
    if evaluate is not False and not isinstance(evaluate, dict):
        raise _spec_error(path, "'evaluate' must be a mapping {metrics: [...], num: N} or false")
    for key in (evaluate or {}):
        if key not in EVALUATE_KEYS:
            raise _spec_error(path, f"unknown key 'evaluate.{key}' (known: {', '.join(EVALUATE_KEYS)})")
    metrics = (evaluate or {}).get("metrics")
    metrics = tuple(metrics.split(",")) if isinstance(metrics, str) else tuple(metrics) if metrics else None
    num = (evaluate or {}).get("num")
    if num is not None and (not isinstance(num, int) or num <= 0):
        raise _spec_error(path, f"evaluate.num must be a positive integer, got {num!r}")
    name = str(raw.get("name") or path.stem)
    return Spec(
        name=name, path=path, base=None if base is None else _resolve_base(str(base), path),
        data=data or (str(raw["data"]) if raw.get("data") else None),
        out=Path(out or raw.get("out") or f"runs/ablations/{name}"), set=tuple(fixed), grid=grid,
        eval_grid=eval_grid, seeds=tuple(seeds or spec_seeds), evaluate=evaluate is not False,
        metrics=metrics, num=num, description=str(raw.get("description", "")),
    )


def _resolve_base(base: str, spec_path: Path) -> str:
    """A recipe path is taken relative to the spec file when it exists there; names stay names."""
    beside = spec_path.parent / base
    return str(beside.resolve()) if base.endswith((".yaml", ".yml")) and beside.is_file() else base


# ----------------------------------------------------------------------------- names and grids

def _value_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(_value_text(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+=-]+", "-", text).strip("-.") or "x"


def point_name(point: dict[str, Any], keys: list[str] | None = None) -> str:
    """{'loss.lambda_max': 0.3, 'seed': 0} -> 'lambda_max-0.3_seed-0' (deterministic, filesystem-safe).

    A key is shortened to its last part unless two keys of the spec share that part.
    """
    keys = keys or list(point)
    last = [k.rsplit(".", 1)[-1] for k in keys]
    short = {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}
    parts = []
    for key, value in point.items():
        if key == RECIPE_AXIS:
            value = Path(str(value)).stem
        parts.append(_safe(f"{short.get(key, key)}-{_value_text(value)}"))
    return "_".join(parts)


def override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"  # JSON is YAML: strings stay strings, null stays null


def expand(spec: Spec) -> list[tuple[str, str, tuple[str, ...]]]:
    """(run name, recipe, overrides) for every grid point and seed, in spec order."""
    keys = [k for k, _ in spec.grid]
    out = []
    for values in itertools.product(*(v for _, v in spec.grid)):
        point = dict(zip(keys, values))
        recipe = str(point.get(RECIPE_AXIS, spec.base))
        overrides = spec.set + tuple(override(k, v) for k, v in point.items() if k != RECIPE_AXIS)
        for seed in spec.seeds:
            name = point_name({**point, "seed": seed}, keys + ["seed"])
            out.append((name, recipe, overrides + (f"train.seed={seed}",)))
    return out


def expand_eval(spec: Spec) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """(suffix, recipe overrides, evaluate flags) per eval-grid point; one plain point without a grid."""
    keys = [k for k, _ in spec.eval_grid]
    out = []
    for values in itertools.product(*(v for _, v in spec.eval_grid)):
        point = dict(zip(keys, values))
        flags = [f for k, v in point.items() if v is not None for f in (EVAL_AXES[k], str(v))]
        out.append((point_name(point) or "eval", tuple(override(k, v) for k, v in point.items()), tuple(flags)))
    return out


# ----------------------------------------------------------------------------- costs

def data_count(data: Path | None, split: str) -> int | None:
    """Images in a prepared split (manifest.json), None when the folder is not prepared yet."""
    if data is None or not (data / "manifest.json").is_file():
        return None
    return split_count(data, split)


def train_cost(recipe: Recipe, count: int | None) -> tuple[int | None, int | None, int | None]:
    """(steps, images, forward units); steps = min(max_steps, epochs * floor(N / batch))."""
    n = min(count, recipe.data.limit) if count and recipe.data.limit else count or recipe.data.limit
    if n is None:
        return None, None, None
    batch = recipe.train.batch_size
    per_epoch = n // batch  # the loader drops the last partial batch
    steps = per_epoch * recipe.train.epochs
    steps = min(steps, recipe.train.max_steps) if recipe.train.max_steps else steps
    loss = recipe.loss
    if loss.kind == "dream_conservative":  # standard cost (3) until start_epoch
        before = min(steps, loss.start_epoch * per_epoch)
        return steps, steps * batch, batch * (3 * before + 6 * (steps - before))
    return steps, steps * batch, steps * batch * FORWARD_UNITS[loss.kind]


# ----------------------------------------------------------------------------- plan

def _status(run_dir: Path) -> str:
    info = run_dir / "run.json"
    if info.is_file() and read_json(info).get("status") == "finished":
        return "skip"
    if any((run_dir / "checkpoints").glob("*.pt")):
        return "resume"
    # A run that stopped before its first checkpoint cannot resume: it starts again (the old folder is kept aside).
    return "restart" if (run_dir / "recipe.yaml").is_file() else "train"


def _check_existing(run_dir: Path, expected: Recipe, overrides: tuple[str, ...]) -> None:
    """An existing folder must hold the same run the spec asks for; never mix two settings under one name."""
    path = run_dir / "recipe.yaml"
    if not path.is_file():
        return
    have, want = flat_items(recipe_from_yaml(path.read_text(), str(path))), flat_items(expected)
    keys = ["name"] + [".".join(parse_override(o)[0]) for o in overrides]
    for key in keys:
        if have.get(key) != want.get(key):
            raise ConfigError(f"{run_dir} already holds a run with {key}={have.get(key)!r} but the spec asks for "
                              f"{want.get(key)!r}: delete that folder or choose another 'out'")


def _evaluated(run_dir: Path, recipe: Recipe, num: int, metrics: tuple[str, ...]) -> bool:
    """True when an eval file already has every asked metric, with a value, for the final checkpoint.

    A metric recorded as missing (absent weights, say) is asked for again: evaluate reuses its samples.
    """
    s = recipe.sample
    want = {"sampler": s.sampler, "steps": s.steps, "eta": s.eta, "num_generated": num,
            "checkpoint_step": read_json(run_dir / "run.json").get("step")}
    t = recipe.diffusion.num_timesteps
    t_starts = (s.t_start,) if s.t_start is not None else (None, t - t // s.steps)  # unset or resolved default
    for record in read_evals(run_dir / "eval"):
        p = record.protocol
        if all(p.get(k) == v for k, v in want.items()) and p.get("t_start") in t_starts \
                and p.get("ema", s.use_ema) == s.use_ema and all("value" in record.metrics.get(m, {}) for m in metrics):
            return True
    return False


def make_plan(spec: Spec) -> Plan:
    """Validate every expanded recipe first (a bad key fails before anything runs), then price each job."""
    data = Path(spec.data) if spec.data else None
    trains, evals = [], []
    count_cache: dict[str, int | None] = {}
    runs = expand(spec)
    names = [name for name, _, _ in runs]
    if len(set(names)) < len(names):
        clash = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"{spec.path}: two grid points get the same run name ({', '.join(clash)}); make the values distinct")
    for name, recipe_name, overrides in runs:
        try:
            recipe = load_recipe(recipe_name, overrides)
            points = [(suffix, load_recipe(recipe_name, overrides + extra), flags)
                      for suffix, extra, flags in expand_eval(spec)] if spec.evaluate else []
        except ConfigError as err:
            raise ConfigError(f"{spec.path}: run {name}: {err}") from None
        run_dir = spec.out / name
        _check_existing(run_dir, recipe, overrides)
        if recipe.data.split not in count_cache:
            count_cache[recipe.data.split] = data_count(data, recipe.data.split)
        action = _status(run_dir)
        trains.append(TrainJob(name, recipe_name, overrides, run_dir, action,
                               *train_cost(recipe, count_cache[recipe.data.split])))
        for suffix, eval_recipe, flags in points:
            num = spec.num or eval_recipe.eval.num
            metrics = spec.metrics or eval_recipe.eval.metrics
            done = action == "skip" and _evaluated(run_dir, eval_recipe, num, metrics)
            extra = ("--metrics", ",".join(spec.metrics)) if spec.metrics else ()
            extra += ("--num", str(spec.num)) if spec.num else ()
            evals.append(EvalJob(f"{name}__{suffix}", name, run_dir, flags + extra, "skip" if done else "evaluate",
                                 num, num * eval_recipe.sample.steps))
    count = next(iter(count_cache.values()), None)
    return Plan(spec, data, count, tuple(trains), tuple(evals))

