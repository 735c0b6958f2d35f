"""Speed benchmark: training steps per loss kind, the naive conservative step, sampling, data.

Every comparison runs side by side in one process, after warm-up: the variants take turns
step by step (round-robin, starting at a different one each round) so that load from other
processes hits all of them alike, and ratios are medians of same-round ratios. A training
step is the loop's own: `backward_loss`, `clip_grad_norm_`, the finite check, AdamW, EMA.
Functions return JSON-ready dicts; printing is the CLI's job.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from typing import Any

import torch

from dreamctl.bench.sections import bench_inception, bench_sample, bench_train, bench_variants, check_only
from dreamctl.bench.steps import KINDS, NAIVE, loss_params, make_step, naive_conservative_loss
from dreamctl.bench.targets import TARGETS, evaluate_targets
from dreamctl.bench.timing import counting_forwards, interleaved, summarize
from dreamctl.config import Recipe
from dreamctl.errors import RunError
from dreamctl.events import OnEvent, ignore
from dreamctl.runtime import Runtime

__all__ = ["KINDS", "NAIVE", "SECTIONS", "TARGETS", "BenchOptions", "bench_inception", "bench_sample", "bench_train",
           "bench_variants", "counting_forwards", "default_recipe", "evaluate_targets", "interleaved",
           "loss_params", "machine", "make_step", "merge_targets", "naive_conservative_loss", "run_bench", "summarize"]


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


@dataclass(frozen=True)
class BenchOptions:
    """How much a benchmark times, beyond its recipe and device: `dreamctl bench`'s options."""

    rounds: int  # timed rounds, each running every variant once
    warmup: int = 3  # untimed rounds first
    sample_batches: int = 2  # timed DDIM-50 batches
    budget_s: float | None = None  # stop timing a section after the round that passes it
    variants: bool = True  # train: also eager/compile, bf16/fp32, channels_last; sample: compiled and eager
    only: tuple[str, ...] = ()  # the variants to run (the reference always runs)
    data_images: int = 2048  # the data section's synthetic images

    def as_args(self) -> list[str]:
        """These options as shell words, for the command a result records (to be rerun as it ran)."""
        return (["--rounds", str(self.rounds), "--warmup", str(self.warmup), "--sample-batches",
                 str(self.sample_batches)] + ([] if self.variants else ["--no-variants"])
                + ([] if self.budget_s is None else ["--budget-s", f"{self.budget_s:g}"])
                + [f"--only '{name}'" for name in self.only])


def run_bench(what: str, recipe: Recipe, rt: Runtime, opts: BenchOptions, *,
              on_event: OnEvent = ignore) -> dict[str, Any]:
    """One benchmark run; `what` is one of SECTIONS ('train' includes the variants unless told not to).
    `on_event` hears of each first (compiling) step and each timed round as it ends (dreamctl.events lists them)."""
    if what not in SECTIONS:
        raise RunError(f"unknown benchmark {what!r}: expected one of {', '.join(SECTIONS)}")
    rounds, warmup, budget_s = opts.rounds, opts.warmup, opts.budget_s
    runs_variants = what == "variants" or (what in ("train", "all") and opts.variants)
    check_only(opts.only, runs_variants, what)  # before any timing: not after the training section's minutes
    from dreamctl.models import build_model, count_parameters

    params = count_parameters(build_model(recipe.model, recipe.data.resolution))
    result: dict[str, Any] = {
        "what": what, "recipe": recipe.name, "batch_size": recipe.train.batch_size, "precision": rt.precision,
        "resolution": recipe.data.resolution, "model": recipe.model.model_dump(mode="json"), "parameters": params, "compile": recipe.train.compile,
        "channels_last": recipe.train.channels_last, "rounds": rounds, "warmup": warmup, "machine": machine(rt),
    }
    if what in ("train", "all"):
        result["train"] = bench_train(recipe, rt, rounds=rounds, warmup=warmup, budget_s=budget_s,
                                      on_event=on_event)
    if runs_variants:
        result["variants"] = bench_variants(recipe, rt, rounds=rounds, warmup=warmup, budget_s=budget_s,
                                           only=opts.only, on_event=on_event)
    if what in ("sample", "all"):
        result["sample"] = bench_sample(recipe, rt, batches=opts.sample_batches, compare_compile=opts.variants,
                                        on_event=on_event)
        result["inception"] = bench_inception(rt, batch_size=recipe.train.batch_size,
                                              resolution=recipe.data.resolution)
    if what in ("data", "all"):
        from dreamctl.bench.data import run_data_bench

        result["data"] = run_data_bench(count=opts.data_images, resolution=recipe.data.resolution,
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
