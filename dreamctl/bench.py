"""Speed benchmark: training steps per loss kind, the naive conservative step, sampling, data.

Every comparison runs side by side in one process, after warm-up: the variants take turns
step by step (round-robin, starting at a different one each round) so that load from other
processes hits all of them alike, and ratios are medians of same-round ratios. A training
step is the loop's own: `backward_loss`, `clip_grad_norm_`, the finite check, AdamW, EMA.
Functions return JSON-ready dicts; printing is the CLI's job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from dreamctl.config import Recipe
from dreamctl.diffusion import schedule_for
from dreamctl.diffusion.losses import STEP_COST, backward_loss, conservative_lambda, per_sample
from dreamctl.diffusion.schedule import NoiseSchedule
from dreamctl.errors import RunError
from dreamctl.runtime import Runtime
from dreamctl.training.loop import init_state, step_noise, update, wrap_for_training
from dreamctl.training.state import TrainState

KINDS = ("standard", "dream", "dream_conservative", "input_perturbation")
NAIVE = "naive_conservative"
SAMPLE_STEPS = 50


# --- the baseline being beaten -------------------------------------------------------------

def naive_conservative_loss(model: nn.Module, schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor,
                            *, epoch: int, lambda_min: float = 0.0, lambda_max: float = 0.5, alpha: float = 0.7,
                            ramp_epochs: int = 20, **_: Any) -> Tensor:
    """BASELINE, NOT USED FOR TRAINING: the CelebA study's conservative step as it was written.

    A third, redundant forward pass recomputes eps_hat (ours reuses the detached first
    prediction), and both terms are summed into one loss, so one backward runs with both
    graphs alive (ours back-propagates the first term before the second pass). Same loss value.
    """
    x_t = schedule.q_sample(x0, t, noise)
    loss_std = per_sample(model(x_t, t) - noise).mean()
    with torch.no_grad():
        eps_hat = model(x_t, t)  # the redundant pass
    x0_hat = schedule.predict_x0(x_t, t, eps_hat).clamp(-1, 1)
    lam = conservative_lambda(t, schedule.num_timesteps, epoch, lambda_min, lambda_max, ramp_epochs)
    lam = lam.to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
    x_rect = schedule.q_sample(lam * x0_hat + (1 - lam) * x0, t, noise)
    loss_rect = per_sample(model(x_rect, t) - noise).mean()
    return alpha * loss_std + (1 - alpha) * loss_rect


# --- one training step, from the loop's building blocks -------------------------------------

def loss_params(recipe: Recipe, kind: str) -> dict[str, Any]:
    """The recipe's loss settings for `kind`, and an epoch at which every term is active."""
    lc = recipe.loss.model_copy(update={"kind": kind})
    return {"epoch": lc.start_epoch + lc.ramp_epochs, **lc.params()}


def make_step(name: str, net: nn.Module, schedule: NoiseSchedule, state: TrainState, recipe: Recipe,
              x0: Tensor, rt: Runtime) -> Callable[[int], None]:
    """step(i) -> None: one full training step of loss `name` (a kind, or NAIVE) at step i."""
    params = list(state.model.parameters())
    kind = "dream_conservative" if name == NAIVE else name
    kw = loss_params(recipe, kind)
    local = slice(0, recipe.train.batch_size)

    def step(i: int) -> None:
        t, noise = step_noise(recipe, i, rt, local)
        if name == NAIVE:
            loss = naive_conservative_loss(net, schedule, x0, t, noise, **kw)
            loss.backward()
            loss = loss.detach()
        else:
            loss = backward_loss(kind, net, schedule, x0, t, noise, **kw)["loss"]
        if update(state, params, recipe.optim, i, loss, rt) is None:
            raise RunError(f"benchmark step {i} went non-finite (loss {float(loss)}); lower optim.lr with --set")

    return step


# --- measuring ------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def counting_forwards(module: nn.Module) -> Iterator[list[int]]:
    """Count calls of `module` (a forward pre-hook); yields a one-element list holding the count."""
    count = [0]
    handle = module.register_forward_pre_hook(lambda mod, args: count.__setitem__(0, count[0] + 1))
    try:
        yield count
    finally:
        handle.remove()


def interleaved(steps: dict[str, Callable[[int], None]], device: torch.device, *, warmup: int, rounds: int,
                budget_s: float | None = None, counter: list[int] | None = None) -> dict[str, dict[str, Any]]:
    """Time each callable round-robin: `warmup` untimed rounds, then up to `rounds` timed ones.

    Each round starts at a different entry. `budget_s` stops after the round that exceeds it
    (at least one timed round). Per entry: seconds per round, forward calls, and on CUDA the
    peak memory and the step's own share of it ('extra': the peak less what was resident before).
    """
    names = list(steps)
    cuda = device.type == "cuda"
    out: dict[str, dict[str, Any]] = {n: {"seconds": [], "forward_calls": set(), "peak": 0, "reserved": 0,
                                          "extra": 0} for n in names}
    i = 0
    for _ in range(warmup):
        for name in names:
            steps[name](i)
            i += 1
    _sync(device)
    start = time.perf_counter()
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
                resident = torch.cuda.memory_allocated(device)
            if counter is not None:
                counter[0] = 0
            _sync(device)
            t0 = time.perf_counter()
            steps[name](i)
            _sync(device)
            rec = out[name]
            rec["seconds"].append(time.perf_counter() - t0)
            if counter is not None:
                rec["forward_calls"].add(counter[0])
            if cuda:
                rec["peak"] = max(rec["peak"], torch.cuda.max_memory_allocated(device))
                rec["extra"] = max(rec["extra"], torch.cuda.max_memory_allocated(device) - resident)
                rec["reserved"] = max(rec["reserved"], torch.cuda.max_memory_reserved(device))
            i += 1
        if budget_s is not None and time.perf_counter() - start > budget_s:
            break
    return out


def _calls(found: set[int]) -> int | list[int] | None:
    """The forward-call count; a sorted list if it varied between steps (it should not)."""
    return None if not found else (next(iter(found)) if len(found) == 1 else sorted(found))


def summarize(raw: dict[str, dict[str, Any]], batch: int, cuda: bool, reference: str) -> dict[str, dict[str, Any]]:
    """Median step time, img/s, memory, and same-round ratios of each entry to `reference`."""
    ref = raw[reference]["seconds"]
    rows = {}
    for name, rec in raw.items():
        secs = rec["seconds"]
        med = statistics.median(secs)
        paired = [s / r for s, r in zip(secs, ref)]
        rows[name] = {
            "forward_calls": _calls(rec["forward_calls"]),
            "rounds": len(secs),
            "step_ms_median": round(med * 1e3, 2),
            "step_ms_min": round(min(secs) * 1e3, 2),
            "step_ms_max": round(max(secs) * 1e3, 2),
            "img_per_s": round(batch / med, 1),
            "step_time_ratio": round(statistics.median(paired), 3),
            "peak_memory_bytes": rec["peak"] if cuda else None,
            "peak_reserved_bytes": rec["reserved"] if cuda else None,
            "peak_memory_ratio": round(rec["peak"] / raw[reference]["peak"], 3) if cuda else None,
            "step_extra_bytes": rec["extra"] if cuda else None,
            "step_extra_ratio": round(rec["extra"] / raw[reference]["extra"], 3) if cuda else None,
        }
    return rows


# --- sections -------------------------------------------------------------------------------

def _fake_batch(recipe: Recipe, rt: Runtime) -> Tensor:
    """x0 in [-1, 1] built like the loop builds it, from uint8 images resident on the device."""
    from dreamctl.data.loader import to_model_input

    g = torch.Generator().manual_seed(recipe.train.seed)
    r = recipe.data.resolution
    images = torch.randint(0, 256, (recipe.train.batch_size, r, r, 3), generator=g, dtype=torch.uint8)
    return to_model_input(images.to(rt.device))


def bench_train(recipe: Recipe, rt: Runtime, *, rounds: int, warmup: int, budget_s: float | None = None,
                kinds: tuple[str, ...] = KINDS, naive: bool = True) -> dict[str, Any]:
    """Every loss kind (and the naive conservative step) stepping one shared model in turn.

    Sharing the model, AdamW state and EMA keeps the resident memory identical, so peak
    memory differs only by what each step allocates, as it would in a real run.
    """
    state = init_state(recipe, rt)
    net, _ = wrap_for_training(state.model, recipe, rt)
    net.train()
    schedule, x0 = schedule_for(recipe.diffusion), _fake_batch(recipe, rt)
    names = list(kinds) + ([NAIVE] if naive else [])
    steps = {n: make_step(n, net, schedule, state, recipe, x0, rt) for n in names}
    with counting_forwards(net) as counter:
        raw = interleaved(steps, rt.device, warmup=warmup, rounds=rounds, budget_s=budget_s, counter=counter)
    rows = summarize(raw, recipe.train.batch_size, rt.device.type == "cuda", reference=kinds[0])
    for name, row in rows.items():
        calls, units = (3, 7) if name == NAIVE else STEP_COST[name]
        row["design_forward_calls"], row["design_forward_units"] = calls, units
    out: dict[str, Any] = {"reference": kinds[0], "rows": rows}
    if naive and "dream_conservative" in rows:
        ours, base = raw["dream_conservative"], raw[NAIVE]
        time_ratio = statistics.median(o / b for o, b in zip(ours["seconds"], base["seconds"]))
        out["naive_vs_ours"] = {
            "ours_over_naive_step_time": round(time_ratio, 3),
            "ours_faster_by_percent": round((1 - time_ratio) * 100, 1),
            "ours_over_naive_peak_memory": round(ours["peak"] / base["peak"], 3) if rt.device.type == "cuda" else None,
        }
    return out


def _variant(recipe: Recipe, rt: Runtime, *, compile: bool, precision: str, channels_last: bool):
    r = recipe.model_copy(update={"train": recipe.train.model_copy(
        update={"compile": compile, "channels_last": channels_last})})
    return r, dataclasses.replace(rt, precision=precision)


def bench_variants(recipe: Recipe, rt: Runtime, *, rounds: int, warmup: int,
                   budget_s: float | None = None) -> dict[str, Any]:
    """CUDA only: the standard step eager vs torch.compile, bf16 vs fp32, channels_last on/off.

    Each variant changes one setting from the reference (eager, bf16, contiguous). 'fp32'
    is what runtime.setup gives on CUDA: TF32 matmuls and convolutions allowed.
    """
    if rt.device.type != "cuda":
        return {"skipped": "CUDA only (compile, bf16 and channels_last are GPU settings)"}
    configs = {
        "eager bf16": dict(compile=False, precision="bf16", channels_last=False),
        "compile bf16": dict(compile=True, precision="bf16", channels_last=False),
        "eager fp32 (tf32)": dict(compile=False, precision="fp32", channels_last=False),
        "eager bf16 channels_last": dict(compile=False, precision="bf16", channels_last=True),
    }
    steps, compile_s = {}, {}
    for name, cfg in configs.items():
        vr, vrt = _variant(recipe, rt, **cfg)
        state = init_state(vr, vrt)
        net, _ = wrap_for_training(state.model, vr, vrt)
        net.train()
        steps[name] = make_step("standard", net, schedule_for(vr.diffusion), state, vr, _fake_batch(vr, vrt), vrt)
        t0 = time.perf_counter()
        steps[name](0)  # the first call compiles; timed apart so compile time is on record
        _sync(rt.device)
        compile_s[name] = round(time.perf_counter() - t0, 1)
    raw = interleaved(steps, rt.device, warmup=warmup, rounds=rounds, budget_s=budget_s)
    rows = summarize(raw, recipe.train.batch_size, True, reference="eager bf16")
    for name, row in rows.items():
        row["first_step_s"] = compile_s[name]
    return {"reference": "eager bf16", "loss": "standard", "rows": rows,
            "note": "all four models stay resident: compare step_extra_bytes (the peak less what was resident)"}


def bench_sample(recipe: Recipe, rt: Runtime, *, batches: int, warmup: int = 1) -> dict[str, Any]:
    """DDIM-50 img/s through generate(): a fresh model (no EMA copy), eval mode, no autograd."""
    from dreamctl.generate import generate
    from dreamctl.models import build_model
    from dreamctl.runtime import Autocast

    torch.manual_seed(recipe.train.seed)
    model = build_model(recipe.model, recipe.data.resolution).to(rt.device).eval().requires_grad_(False)
    if recipe.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = Autocast(torch.compile(model) if recipe.train.compile else model, rt).eval()
    cfg = recipe.sample.model_copy(update={"sampler": "ddim", "steps": SAMPLE_STEPS, "eta": 0.0, "t_start": None})
    b, schedule = recipe.train.batch_size, schedule_for(recipe.diffusion)

    def run(k: int) -> None:
        generate(net, schedule, list(range(k * b, (k + 1) * b)), image_size=recipe.data.resolution, cfg=cfg,
                 device=rt.device, batch_size=b)

    for k in range(warmup):
        run(k)
    seconds = []
    for k in range(batches):
        _sync(rt.device)
        t0 = time.perf_counter()
        run(warmup + k)  # generate() ends with a copy to the CPU, so this is synchronous
        seconds.append(time.perf_counter() - t0)
    med = statistics.median(seconds)
    return {"sampler": f"ddim-{SAMPLE_STEPS} (eta 0)", "batch_size": b, "precision": rt.precision,
            "compile": recipe.train.compile, "batches": batches, "batch_s_median": round(med, 3),
            "img_per_s": round(b / med, 1),
            "includes": "per-seed initial noise drawn on the CPU and the uint8 copy back, as `dreamctl sample`"}


def bench_inception(rt: Runtime, *, batch_size: int, resolution: int, batches: int = 2) -> dict[str, Any]:
    """Inception feature extraction img/s, only when its weights are present and intact."""
    import numpy as np

    from dreamctl.metrics import weights

    st = weights.status(weights.INCEPTION)
    if not st.intact:
        why = "weights corrupt" if st.present else "weights missing"
        return {"skipped": f"{why}: {st.path} (see `dreamctl weights`)"}
    from dreamctl.metrics.inception import InceptionFeatureNet, batched_features

    net = InceptionFeatureNet(device=str(rt.device))
    images = np.random.default_rng(0).integers(0, 256, (batch_size, resolution, resolution, 3), dtype=np.uint8)
    batched_features(net, images, batch_size)  # warm-up
    seconds = []
    for _ in range(batches):
        t0 = time.perf_counter()
        batched_features(net, images, batch_size)
        seconds.append(time.perf_counter() - t0)
    med = statistics.median(seconds)
    return {"network": net.name, "batch_size": batch_size, "resolution": resolution, "batches": batches,
            "img_per_s": round(batch_size / med, 1), "includes": "clean-fid's PIL resize to 299 on the CPU"}


def machine(rt: Runtime) -> dict[str, Any]:
    """What ran the benchmark: device, torch, threads and the load at that moment."""
    dev = torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else (
        f"{platform.machine()} {platform.processor() or platform.system()}, {os.cpu_count()} cores")
    return {"device": dev, "device_type": rt.device.type, "torch": torch.__version__,
            "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
            "load_average_1min": round(os.getloadavg()[0], 2), "date": time.strftime("%Y-%m-%d %H:%M:%S %z")}


def default_recipe(device: str) -> str:
    return "conservative" if device == "cuda" else "tiny"


SECTIONS = ("train", "variants", "sample", "data", "all")


def run_bench(what: str, recipe: Recipe, rt: Runtime, *, rounds: int, warmup: int, sample_batches: int = 2,
              budget_s: float | None = None, variants: bool = True, data_images: int = 2048) -> dict[str, Any]:
    """One benchmark run; `what` is one of SECTIONS ('train' includes the variants unless told not to)."""
    if what not in SECTIONS:
        raise RunError(f"unknown benchmark {what!r}: expected one of {', '.join(SECTIONS)}")
    from dreamctl.models import build_model, count_parameters

    params = count_parameters(build_model(recipe.model, recipe.data.resolution))
    result: dict[str, Any] = {
        "what": what, "recipe": recipe.name, "batch_size": recipe.train.batch_size, "precision": rt.precision,
        "resolution": recipe.data.resolution, "model": recipe.model.model_dump(mode="json"), "parameters": params, "compile": recipe.train.compile,
        "channels_last": recipe.train.channels_last, "rounds": rounds, "warmup": warmup, "machine": machine(rt),
    }
    if what in ("train", "all"):
        result["train"] = bench_train(recipe, rt, rounds=rounds, warmup=warmup, budget_s=budget_s)
    if what == "variants" or (what in ("train", "all") and variants):
        result["variants"] = bench_variants(recipe, rt, rounds=rounds, warmup=warmup, budget_s=budget_s)
    if what in ("sample", "all"):
        result["sample"] = bench_sample(recipe, rt, batches=sample_batches)
        result["inception"] = bench_inception(rt, batch_size=recipe.train.batch_size,
                                              resolution=recipe.data.resolution)
    if what in ("data", "all"):
        from dreamctl.data.bench import run_data_bench

        result["data"] = run_data_bench(count=data_images, resolution=recipe.data.resolution,
                                        batch_size=recipe.train.batch_size)
    result["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    result["targets"] = evaluate_targets(result)
    return result


def merge_targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per target over several results (sections run apart): the first measured value wins."""
    merged: dict[str, dict[str, Any]] = {}
    for res in results:
        for t in res.get("targets", []):
            if t["target"] not in merged or merged[t["target"]]["value"] is None:
                merged[t["target"]] = t
    return list(merged.values())


# --- targets (issue 7) ----------------------------------------------------------------------

def _row(name: str, key: str) -> Callable[[dict], float | None]:
    return lambda res: res.get("train", {}).get("rows", {}).get(name, {}).get(key)


def _naive_ratio(res: dict) -> float | None:
    return res.get("train", {}).get("naive_vs_ours", {}).get("ours_over_naive_step_time")


def _conservative_gb(res: dict) -> float | None:
    peak = _row("dream_conservative", "peak_memory_bytes")(res)
    return None if peak is None else peak / 1e9


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
    (*_GPU, "DDIM-50 img/s", lambda res: res.get("sample", {}).get("img_per_s"), ">=", 200),
]
_OPS = {"<=": lambda v, lim: v <= lim, ">=": lambda v, lim: v >= lim, "<": lambda v, lim: v < lim}


def _stated_setting(result: dict[str, Any], cond: dict[str, Any]) -> bool:
    """Is this run the setting a target is stated for: that recipe's network and resolution
    (not one changed with --set) and the listed values?"""
    from dreamctl.config import load_recipe

    stated = load_recipe(cond["recipe"])
    same_net = (result.get("model") == stated.model.model_dump(mode="json")
                and result.get("resolution") == stated.data.resolution)
    return same_net and all(result.get(k) == v for k, v in cond.items())


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for this device: value, limit, pass; `conditions_met` False when the
    run differs from the setting the target is stated for (then the verdict is only indicative)."""
    device = result["machine"]["device_type"]
    out = []
    for dev, cond, what, read, op, limit in TARGETS:
        if dev != device:
            continue
        value = read(result)
        out.append({"target": f"{what} {op} {limit}", "value": None if value is None else round(value, 3),
                    "pass": None if value is None or math.isnan(value) else bool(_OPS[op](value, limit)),
                    "conditions": cond, "conditions_met": _stated_setting(result, cond)})
    return out
