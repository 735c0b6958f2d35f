"""The benchmark's sections: training steps, CUDA variants, sampling (eager, compiled, CUDA graphs), Inception features."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from dreamctl.bench.steps import KINDS, NAIVE, NAIVE_COST, float32_groupnorm, make_step
from dreamctl.bench.timing import counting_forwards, interleaved, summarize, sync
from dreamctl.config import Recipe
from dreamctl.config.schema import STUDY_VARIANT_NOTE
from dreamctl.diffusion import schedule_for
from dreamctl.diffusion.losses import LOSSES
from dreamctl.errors import RunError
from dreamctl.events import OnEvent, ignore
from dreamctl.runtime import Runtime
from dreamctl.training.loop import wrap_for_training
from dreamctl.training.state import init_state

SAMPLE_STEPS = 50


def _rounds(section: str, on_event: OnEvent) -> Callable[[str, dict[str, float]], None]:
    return lambda label, seconds: on_event("bench_round", {"section": section, "round": label, "seconds": seconds})


def _fake_batch(recipe: Recipe, rt: Runtime) -> Tensor:
    """x0 in [-1, 1] built like the loop builds it, from uint8 images resident on the device."""
    from dreamctl.data.loader import to_model_input

    g = torch.Generator().manual_seed(recipe.train.seed)
    r = recipe.data.resolution
    images = torch.randint(0, 256, (recipe.train.batch_size, r, r, 3), generator=g, dtype=torch.uint8)
    return to_model_input(images.to(rt.device))


def bench_train(recipe: Recipe, rt: Runtime, *, rounds: int, warmup: int, budget_s: float | None = None,
                kinds: tuple[str, ...] = KINDS, naive: bool = True, on_event: OnEvent = ignore) -> dict[str, Any]:
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
        raw = interleaved(steps, rt.device, warmup=warmup, rounds=rounds, budget_s=budget_s, counter=counter,
                          on_round=_rounds("train", on_event))
    rows = summarize(raw, recipe.train.batch_size, rt.device.type == "cuda", reference=kinds[0])
    for name, row in rows.items():
        calls, units = NAIVE_COST if name == NAIVE else LOSSES[name].cost
        row["design_forward_calls"], row["design_forward_units"] = calls, units
    out: dict[str, Any] = {"reference": kinds[0], "rows": rows}
    if "dream_conservative" in rows:
        out["notes"] = [STUDY_VARIANT_NOTE]
    if naive and "dream_conservative" in rows:
        ours, base = raw["dream_conservative"], raw[NAIVE]
        time_ratio = statistics.median(o / b for o, b in zip(ours["seconds"], base["seconds"]))
        out["naive_vs_ours"] = {
            "ours_over_naive_step_time": round(time_ratio, 3),
            "ours_time_saved_percent": round((1 - time_ratio) * 100, 1),  # not "% faster": that is 1/ratio - 1
            "ours_over_naive_peak_memory": round(ours["peak"] / base["peak"], 3) if rt.device.type == "cuda" else None,
        }
    return out


VARIANT_REFERENCE = "eager bf16"
VARIANTS = {
    VARIANT_REFERENCE: dict(compile=False, precision="bf16", channels_last=False),
    "compile bf16": dict(compile=True, precision="bf16", channels_last=False),
    # Inductor keeps the training graph's layout as given (benchmarks/inductor_layout.py): only this sets it.
    "compile bf16 channels_last": dict(compile=True, precision="bf16", channels_last=True),
    "eager fp32 (tf32)": dict(compile=False, precision="fp32", channels_last=False),
    "eager bf16 channels_last": dict(compile=False, precision="bf16", channels_last=True),
    "eager bf16, float32 GroupNorm": dict(compile=False, precision="bf16", channels_last=False, float32_norm=True),
}


def _variant(recipe: Recipe, rt: Runtime, *, compile: bool, precision: str, channels_last: bool):
    r = recipe.model_copy(update={"train": recipe.train.model_copy(
        update={"compile": compile, "channels_last": channels_last})})
    return r, dataclasses.replace(rt, precision=precision)


def _with_float32_groupnorm(step: Callable[[int], Any]) -> Callable[[int], Any]:
    """The step with nn.GroupNorm's autocast behaviour (float32 out): what the UNet's GroupNorm replaced."""
    def run(i: int) -> Any:
        with float32_groupnorm():
            return step(i)
    return run


def check_only(only: tuple[str, ...], runs_variants: bool, what: str) -> None:
    """RunError for an `--only` name that is no variant, or an `--only` that the benchmark would ignore."""
    unknown = [n for n in only if n not in VARIANTS]
    if unknown:
        raise RunError(f"unknown variant {unknown[0]!r}: expected one of {', '.join(map(repr, VARIANTS))}")
    if only and not runs_variants:
        raise RunError(f"--only picks training variants, which `bench {what}` does not run: use `bench variants` "
                       "(or `bench train`/`bench all` without --no-variants)")


def bench_variants(recipe: Recipe, rt: Runtime, *, rounds: int, warmup: int, budget_s: float | None = None,
                   only: tuple[str, ...] = (), on_event: OnEvent = ignore) -> dict[str, Any]:
    """CUDA only: the standard step eager vs torch.compile, bf16 vs fp32, channels_last on/off, and
    the UNet's bf16 GroupNorm vs nn.GroupNorm's float32 output under autocast.

    Each variant changes one setting from the reference (eager, bf16, contiguous). 'fp32'
    is what runtime.setup gives on CUDA: TF32 matmuls and convolutions allowed. `only` picks
    some (the reference always runs): a slow compile then cannot cost the other figures.
    """
    check_only(only, True, "variants")
    if rt.device.type != "cuda":
        return {"skipped": "CUDA only (compile, bf16 and channels_last are GPU settings)"}
    configs = {n: c for n, c in VARIANTS.items() if not only or n in only or n == VARIANT_REFERENCE}
    steps, compile_s = {}, {}
    for name, cfg in configs.items():
        cfg = dict(cfg)
        float32_norm = cfg.pop("float32_norm", False)  # a model setting, applied around the step below
        vr, vrt = _variant(recipe, rt, **cfg)
        state = init_state(vr, vrt)
        net, _ = wrap_for_training(state.model, vr, vrt)
        net.train()
        steps[name] = make_step("standard", net, schedule_for(vr.diffusion), state, vr, _fake_batch(vr, vrt), vrt)
        if float32_norm:
            steps[name] = _with_float32_groupnorm(steps[name])
        t0 = time.perf_counter()
        steps[name](0)  # the first call compiles; timed apart so compile time is on record
        sync(rt.device)
        compile_s[name] = round(time.perf_counter() - t0, 1)
        on_event("bench_first", {"section": "variants", "name": name, "seconds": compile_s[name]})
    raw = interleaved(steps, rt.device, warmup=warmup, rounds=rounds, budget_s=budget_s,
                      on_round=_rounds("variants", on_event))
    rows = summarize(raw, recipe.train.batch_size, True, reference=VARIANT_REFERENCE)
    for name, row in rows.items():
        row["first_step_s"] = compile_s[name]
    return {"reference": VARIANT_REFERENCE, "loss": "standard", "rows": rows,
            "note": "all the variants' models stay resident: compare step_extra_bytes (the peak less what was resident)"}


SAMPLE_SETTINGS = {"eager": None, "compiled": "default", "compiled, CUDA graphs": "reduce-overhead"}  # name: mode


def _one_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def sample_settings(compile: bool, mode: str, device_type: str, compare: bool) -> list[str]:
    """The SAMPLE_SETTINGS to time, the recipe's own first: all of them with `compare`. A setting that
    compiles as another on this device (CUDA graphs off CUDA) is that one's row, not a second timing of it."""
    from dreamctl.inference import compile_mode_for

    names = [n for n, m in SAMPLE_SETTINGS.items() if m is None or compile_mode_for(m, device_type) == m]
    own_mode = compile_mode_for(mode, device_type) if compile else None
    own = next(n for n in names if SAMPLE_SETTINGS[n] == own_mode)
    return [own] + ([n for n in names if n != own] if compare else [])


def bench_sample(recipe: Recipe, rt: Runtime, *, batches: int, warmup: int = 1,
                 compare_compile: bool = False, on_event: OnEvent = ignore) -> dict[str, Any]:
    """DDIM-50 img/s through generate(), as `dreamctl sample` runs it: one model (no EMA copy), eval
    mode, no autograd, the recipe's sample.compile and compile_mode. With `compare_compile`, the other
    settings too (CUDA graphs on CUDA only), on the same weights, batches interleaved; each one's first
    batch (the compile) timed apart. A compared setting whose first batch fails is recorded with its
    error in `failed` and left out, so that it costs no other setting's figures; the recipe's own fails the run."""
    from dreamctl.generate import generate
    from dreamctl.inference import sampling_net
    from dreamctl.models import build_model

    torch.manual_seed(recipe.train.seed)
    model = build_model(recipe.model, recipe.data.resolution)
    cfg = recipe.sample.model_copy(update={"sampler": "ddim", "steps": SAMPLE_STEPS, "eta": 0.0, "t_start": None})
    b, schedule = recipe.train.batch_size, schedule_for(recipe.diffusion)
    names = sample_settings(recipe.sample.compile, recipe.sample.compile_mode, rt.device.type, compare_compile)
    own = names[0]

    def runner(mode: str | None):
        net = sampling_net(model, rt, mode)
        return lambda k: generate(net, schedule, list(range(k * b, (k + 1) * b)), image_size=recipe.data.resolution,
                                  cfg=cfg, device=rt.device, batch_size=b)

    runs, first_s, failed = {}, {}, {}
    for name in names:
        t0 = time.perf_counter()
        try:
            run = runner(SAMPLE_SETTINGS[name])
            run(0)  # generate() ends with a copy to the CPU, so this is synchronous
        except Exception as err:  # a compile or graph capture that fails on this machine: kept on record
            if name == own:
                raise
            failed[name] = _one_line(err)
            on_event("bench_failed", {"section": "sample", "name": name, "error": failed[name]})
            continue
        runs[name] = run
        first_s[name] = round(time.perf_counter() - t0, 1)
        on_event("bench_first", {"section": "sample", "name": name, "seconds": first_s[name]})
    raw = interleaved(runs, rt.device, warmup=max(warmup - 1, 0), rounds=batches, on_round=_rounds("sample", on_event))
    summary = summarize(raw, b, rt.device.type == "cuda", reference=own)
    # A CUDA graph's memory lives in a private pool that replays allocate nothing from: reserved shows it.
    rows = {name: {"img_per_s": r["img_per_s"], "batch_s_median": round(r["step_ms_median"] / 1e3, 3),
                   "time_ratio": r["step_time_ratio"], "first_batch_s": first_s[name],
                   "peak_memory_bytes": r["peak_memory_bytes"], "peak_reserved_bytes": r["peak_reserved_bytes"]}
            for name, r in summary.items()}
    return {"sampler": f"ddim-{SAMPLE_STEPS} (eta 0)", "batch_size": b, "precision": rt.precision,
            "compile": recipe.sample.compile, "compile_mode": recipe.sample.compile_mode,
            "batches": summary[own]["rounds"], "batch_s_median": rows[own]["batch_s_median"],
            "img_per_s": rows[own]["img_per_s"], "rows": rows, "reference": own, "failed": failed,
            "includes": "per-seed initial noise drawn on the CPU and the uint8 copy back, as `dreamctl sample`"}


def bench_inception(rt: Runtime, *, batch_size: int, resolution: int, batches: int = 2) -> dict[str, Any]:
    """Inception feature extraction img/s, only when its weights are present and intact."""
    import numpy as np

    from dreamctl.metrics import weights
    from dreamctl.metrics.inception import batched_features
    from dreamctl.metrics.inputs import load_feature_net

    st = weights.status(weights.INCEPTION)
    if not st.intact:
        why = "weights corrupt" if st.present else "weights missing"
        return {"skipped": f"{why}: {st.path} (see `dreamctl weights`)"}
    net, why = load_feature_net(None, None, str(rt.device))  # a whole file that is not clean-fid's Inception
    if net is None:
        return {"skipped": why}
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
