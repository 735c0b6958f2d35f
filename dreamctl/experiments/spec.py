"""An ablation spec: a YAML file -> a checked Spec -> named grid points.

Train-time axes (`grid`) each make a training run; eval-time axes (`eval_grid`: sampler,
steps, eta, t_start) only re-sample a trained checkpoint. Run names come from their
overrides (`point_name`), so rerunning a spec finds the runs it made before.

`data` and `out` are relative to the working directory;
a recipe given as a .yaml path is looked up beside the spec first.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, ValidationInfo, field_validator

from dreamctl.config import RECIPES_DIR, parse_override
from dreamctl.config.keys import leaves_weights, setting_value
from dreamctl.config.load import builtin_or_path, option_args, override_keys, read_yaml
from dreamctl.config.metrics import check_eval_num, parse_metrics
from dreamctl.config.validation import problems
from dreamctl.errors import ConfigError

RECIPE_AXIS = "recipe"  # `grid: {recipe: [baseline, dream]}`: the base recipe itself varies
# evaluate's sampling flags (config.load.option_args); every other setting needs training
EVAL_AXES = ("sample.sampler", "sample.steps", "sample.eta", "sample.t_start", "sample.clip_x0", "sample.use_ema")

ABLATIONS_DIR = RECIPES_DIR / "ablations"  # `dreamctl ablate NAME` finds NAME.yaml here

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


def _spec_error(path: Path, text: str) -> ConfigError:
    return ConfigError(f"{path}: {text}")


def _axes(path: Path, section: str, raw: dict[str, list[Any]]) -> Axes:
    axes = []
    for key, values in raw.items():
        # 1e-3 and 0.001 are one value: two runs alike, under two names. Compared as the recipe holds them
        # (PyYAML reads 1e-3 as a string), and by type too: true == 1 in Python, but not in a recipe.
        held = [(type(h), h) for h in (setting_value(str(key), v) for v in values)]
        for i, h in enumerate(held):
            if h in held[:i]:
                a, b = values[held.index(h)], values[i]
                written = "" if (type(a), a) == (type(b), b) else f" (written {a!r} and {b!r})"
                raise _spec_error(path, f"{section}.{key} lists {h[1]!r} twice{written}; list each value once")
        if section == "grid" and key in EVAL_AXES:
            raise _spec_error(path, f"grid key '{key}' is an eval-time axis: put it under eval_grid (no retraining)")
        if section == "grid" and key == "train.seed":
            raise _spec_error(path, "grid key 'train.seed': list seeds under 'seeds:' (or pass --seeds)")
        if section == "grid" and leaves_weights(key):
            raise _spec_error(path, f"grid key '{key}' leaves the trained weights as they are, so every point would "
                                    "train the same run: give it in 'set' (evaluate's settings: 'evaluate:')")
        if section == "eval_grid" and key not in EVAL_AXES:
            raise _spec_error(path, f"eval_grid key '{key}' needs training; eval-time axes are {', '.join(EVAL_AXES)}")
        if key != RECIPE_AXIS:
            parse_override(f"{key}=0")  # a malformed key fails here, naming it
        axes.append((str(key), tuple(values)))
    return tuple(axes)


class _Evaluate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metrics: list[str] | None = Field(None, description="metric names, a list or 'fid,swd' as evaluate --metrics "
                                      "takes them; none: the recipe's eval.metrics")
    num: StrictInt | None = Field(None, description="the images each evaluation draws; none: the recipe's eval.num")

    @field_validator("metrics", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return value.split(",") if isinstance(value, str) else value


Values = Annotated[list[Any], Field(min_length=1)]


class SpecFile(BaseModel):
    """What an ablation spec's YAML may hold; the checks that need recipes come after (parse_spec)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = None  # None: the file's stem
    description: str = ""
    base: str | None = None  # the recipe; None only with a `recipe` grid axis
    data: str | None = None
    out: str | None = None
    set: list[str] = Field([], description="'section.key=value' strings, as --set takes them")
    grid: dict[str, Values] = Field({}, description="each setting's values, a non-empty list: a training run each")
    eval_grid: dict[str, Values] = Field({}, description="sample.sampler, steps, eta, t_start, clip_x0 or use_ema: a "
                                         "non-empty list of values, an evaluation of each trained run each")
    seeds: list[StrictInt] = Field([0], min_length=1, description="a non-empty list of integers: each grid point "
                                   "trains once per seed")  # strict: YAML's true would name a run seed-true
    evaluate: _Evaluate | None = Field(_Evaluate(), description="{metrics: [...], num: N}, or false to train only")

    @field_validator("set", "grid", "eval_grid", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any, info: ValidationInfo) -> Any:
        # `grid:` with every axis commented out is YAML's null: no axis, not an error
        return ([] if info.field_name == "set" else {}) if value is None else value

    @field_validator("evaluate", mode="before")
    @classmethod
    def _false_trains_only(cls, value: Any) -> Any:
        if value is False:
            return None
        if not isinstance(value, dict):  # `evaluate:` left empty is not `false`
            raise ValueError("must be a mapping")
        return value


def parse_spec(path: str | Path, seeds: tuple[int, ...] | None = None, data: str | None = None,
               out: str | None = None, extra_set: tuple[str, ...] = ()) -> Spec:
    """Read and check an ablation spec (a built-in name or a path); CLI values (seeds, data, out) override the
    file's, and `extra_set` (ablate --set) follows its `set`, so a value there wins."""
    path = builtin_or_path(path, ABLATIONS_DIR, "ablation spec")
    try:
        raw = SpecFile.model_validate(read_yaml(path) or {})
    except ValidationError as err:
        raise _spec_error(path, problems(err, SpecFile)) from None
    grid, eval_grid = _axes(path, "grid", raw.grid), _axes(path, "eval_grid", raw.eval_grid)
    grid = tuple((k, tuple(_resolve_base(str(v), path) for v in vs) if k == RECIPE_AXIS else vs) for k, vs in grid)
    if raw.base is None and RECIPE_AXIS not in dict(grid):
        raise _spec_error(path, "key 'base' is required (a recipe name or path), unless grid has a 'recipe' axis")
    replaced = set(override_keys(extra_set))  # left out, not applied and then replaced: no "given twice" warning
    fixed = (*(o for o in raw.set if not set(override_keys([o])) <= replaced), *extra_set)
    given = override_keys(fixed)
    if "train.seed" in given:  # each run's seed comes last (expand): this one would lose unseen
        raise _spec_error(path, "train.seed in 'set' (or --set): list seeds under 'seeds:' or pass --seeds")
    if both := [k for k in given if k in dict(grid)]:  # the grid's value would win unseen
        raise _spec_error(path, f"{both[0]} is both a grid axis and in 'set' (or --set): give it in one place")
    if raw.evaluate is None and eval_grid:
        raise _spec_error(path, "'evaluate: false' contradicts 'eval_grid'")
    evaluate = raw.evaluate or _Evaluate()
    metrics = evaluate.metrics
    try:  # the names and number evaluate takes, checked before anything trains
        if metrics:
            parse_metrics(metrics, "evaluate.metrics")
        if evaluate.num is not None:
            check_eval_num(evaluate.num, "evaluate.num")
    except ConfigError as err:
        raise _spec_error(path, str(err)) from None
    name = raw.name or path.stem
    default_out = not (out or raw.out)  # the name builds the output folder only when none is given
    if default_out and (any(sep in name for sep in "/\\") or name in (".", "..")):  # `../../x`: anywhere
        raise _spec_error(path, f"'name' {name!r} must be a plain name (it names runs/ablations/NAME); "
                                "set 'out' to put the ablation elsewhere")
    return Spec(
        name=name, path=path, base=None if raw.base is None else _resolve_base(raw.base, path),
        data=data or raw.data or None, out=Path(out or raw.out or f"runs/ablations/{name}"), set=fixed,
        grid=grid, eval_grid=eval_grid, seeds=tuple(seeds or raw.seeds), evaluate=raw.evaluate is not None,
        metrics=tuple(metrics) if metrics else None, num=evaluate.num, description=raw.description,
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


def expand_eval(spec: Spec) -> list[tuple[str, dict[str, Any], tuple[str, ...]]]:
    """(suffix, sampling options, evaluate flags) per eval-grid point; one plain point without a grid.

    The options are SampleOptions' keywords; a null value is not passed, so evaluate (and the plan)
    take the run recipe's value.
    """
    keys = [k for k, _ in spec.eval_grid]
    out = []
    for values in itertools.product(*(v for _, v in spec.eval_grid)):
        point = {k: v for k, v in zip(keys, values) if v is not None}
        options = {k.removeprefix("sample."): v for k, v in point.items()}
        flags = [f for k, v in options.items() for f in option_args(k, v)]
        out.append((point_name(dict(zip(keys, values))) or "eval", options, tuple(flags)))
    return out
