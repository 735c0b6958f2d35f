"""The speed targets (docs/benchmarks.md), read from a benchmark result; PASS only for the setting each is stated for."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


def _row(name: str, key: str) -> Callable[[dict], float | None]:
    return lambda res: res.get("train", {}).get("rows", {}).get(name, {}).get(key)


def _naive_ratio(res: dict) -> float | None:
    return res.get("train", {}).get("naive_vs_ours", {}).get("ours_over_naive_step_time")


def _conservative_gb(res: dict) -> float | None:
    peak = _row("dream_conservative", "peak_memory_bytes")(res)
    return None if peak is None else peak / 1e9


def _sample(setting: str) -> Callable[[dict], float | None]:
    return lambda res: res.get("sample", {}).get("rows", {}).get(setting, {}).get("img_per_s")


_CPU = ("cpu", {"recipe": "tiny"})
_GPU = ("cuda", {"recipe": "conservative", "precision": "bf16", "batch_size": 128})
TARGETS = [  # (device, the setting it is stated for, what, read, op, limit)
    (*_CPU, "dream_conservative step time / standard", _row("dream_conservative", "step_time_ratio"), "<=", 2.15),
    (*_CPU, "dream_conservative step time / naive", _naive_ratio, "<=", 0.90),  # at least 10% faster
    (*_CPU, "dream step time / standard", _row("dream", "step_time_ratio"), "<=", 1.45),
    (*_GPU, "standard img/s", _row("standard", "img_per_s"), ">=", 1500),
    (*_GPU, "dream step time / standard", _row("dream", "step_time_ratio"), "<=", 1.35),
    (*_GPU, "dream_conservative step time / standard", _row("dream_conservative", "step_time_ratio"), "<=", 2.1),
    (*_GPU, "dream_conservative peak memory / standard", _row("dream_conservative", "peak_memory_ratio"), "<=", 1.15),
    (*_GPU, "dream_conservative peak memory (GB)", _conservative_gb, "<", 16.0),
    (*_GPU, "DDIM-50 img/s, eager", _sample("eager"), ">=", 200),
    (*_GPU, "DDIM-50 img/s, compiled", _sample("compiled"), ">=", 200),
    (*_GPU, "DDIM-50 img/s, compiled, CUDA graphs", _sample("compiled, CUDA graphs"), ">=", 200),
]
MIN_ROUNDS = 3  # timed training rounds, after at least one warm-up, for a verdict that is more than indicative
MIN_SAMPLE_BATCHES = 2  # timed DDIM-50 batches (each 50 forwards), after an untimed first one
_OPS = {"<=": lambda v, lim: v <= lim, ">=": lambda v, lim: v >= lim, "<": lambda v, lim: v < lim}


def _stated_setting(result: dict[str, Any], cond: dict[str, Any]) -> bool:
    """Is this run the setting a target is stated for: that recipe's network and resolution
    (not one changed with --set) and the listed values?"""
    from dreamctl.config import load_recipe

    stated = load_recipe(cond["recipe"])
    same_net = (result.get("model") == stated.model.model_dump(mode="json")
                and result.get("resolution") == stated.data.resolution)
    return same_net and all(result.get(k) == v for k, v in cond.items())


def _is_sampling(what: str) -> bool:
    return what.startswith("DDIM")


def _name(result: dict[str, Any], what: str, op: str, limit: float) -> str:
    """A training target measured with train.compile is named so, so that the summary of several
    results (gpu.sh) keeps the eager verdict and this one apart; sampling targets name their setting."""
    compiled = result.get("compile") and not _is_sampling(what)
    return f"{what}{', train.compile' if compiled else ''} {op} {limit}"


def _too_few(result: dict[str, Any], what: str) -> list[str]:
    """Why the rounds actually timed for a target cannot carry a verdict, if they cannot: a training
    target wants MIN_ROUNDS rounds after a warm-up; sampling times its batches after an untimed first one."""
    if _is_sampling(what):
        batches = result.get("sample", {}).get("batches") or 0
        return [] if batches >= MIN_SAMPLE_BATCHES else [f"{batches} timed batch(es)"]
    rows = result.get("train", {}).get("rows", {})
    rounds, warmup = min((r.get("rounds", 0) for r in rows.values()), default=0), result.get("warmup", 0)
    return [] if rounds >= MIN_ROUNDS and warmup >= 1 else [f"{rounds} round(s) after {warmup} warm-up"]


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The speed targets for this device: value, limit, pass; `conditions_met` False when the
    run differs from the setting the target is stated for, or timed too few rounds (then the verdict
    is only indicative, and `differs` says why)."""
    device = result["machine"]["device_type"]
    out = []
    for dev, cond, what, read, op, limit in TARGETS:
        if dev != device:
            continue
        value = read(result)
        if value is not None and math.isnan(value):  # no measurement; and bare NaN is not JSON
            value = None
        differs = ([] if _stated_setting(result, cond) else ["another setting"]) + _too_few(result, what)
        out.append({"target": _name(result, what, op, limit), "value": None if value is None else round(value, 3),
                    "pass": None if value is None else bool(_OPS[op](value, limit)),
                    "conditions": cond, "conditions_met": not differs, "differs": differs})
    return out
