"""Starting and resuming a run: the folder, the lock, the data, the status in run.json.

`start_run` and `resume_run` are what the CLI (and tests) call; both end in `train()`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

import dreamctl
from dreamctl.config import Recipe, apply_overrides, recipe_to_yaml, validate_recipe
from dreamctl.data.loader import ImageSet, open_split
from dreamctl.errors import RunError
from dreamctl.runtime import Runtime, peak_memory_bytes
from dreamctl.training.loop import OnEvent, train
from dreamctl.training.rundir import RunDir
from dreamctl.training.state import load_latest

# What `resume --set` may change: settings that do not alter the steps already taken.
RESUMABLE_KEYS = ("train.epochs", "train.max_steps", "train.log_every", "train.checkpoint_every",
                  "train.sample_every", "train.keep_checkpoints", "train.sample_grid", "sample.", "eval.")


def _open_data(recipe: Recipe, rt: Runtime) -> ImageSet:
    if recipe.data.path is None:
        raise RunError("no prepared data: pass --data DIR (a folder written by `dreamctl prepare-data`)")
    images = open_split(recipe.data.path, recipe.data.split, recipe.data.limit)
    if images.resolution != recipe.data.resolution:
        raise RunError(f"data {recipe.data.path} holds {images.resolution}px images but data.resolution is "
                       f"{recipe.data.resolution}; prepare it with --resolution {recipe.data.resolution} "
                       f"or --set data.resolution={images.resolution}")
    return images.to(rt.device) if images.images is not None else images


def _run(run: RunDir, recipe: Recipe, rt: Runtime, resume: dict[str, Any] | None, on_event: OnEvent,
         should_stop: Callable[[], bool]) -> str:
    images = _open_data(recipe, rt)
    if rt.is_main:
        run.update_info({"status": "running", "world_size": rt.world_size, "device": str(rt.device),
                         "data": str(Path(recipe.data.path).resolve()),
                         "data_manifest_sha256": images.manifest_sha256, "error": None})
    started = time.perf_counter()
    status = "failed"
    try:
        status = train(recipe, run, images, rt, resume=resume, on_event=on_event, should_stop=should_stop)
    except BaseException as err:
        if rt.is_main:
            run.update_info({"status": "failed" if not isinstance(err, KeyboardInterrupt) else "interrupted",
                             "error": f"{type(err).__name__}: {err}"})
        raise
    finally:
        if rt.is_main and status != "failed":
            info = run.info()
            seconds = time.perf_counter() - started
            images_now = info.get("images_seen", 0) - (resume or {}).get("images_seen", 0)
            run.update_info({"status": status, "peak_memory_bytes": peak_memory_bytes(rt.device),
                             "img_per_s": round(images_now / seconds, 2) if seconds > 0 else None,
                             "dreamctl_version": dreamctl.__version__})
    return status


def start_run(recipe: Recipe, run: RunDir, rt: Runtime, *, on_event: OnEvent = lambda k, p: None,
              should_stop: Callable[[], bool] = lambda: False) -> str:
    """Create the run folder and train from step 0."""
    with run.lock() if rt.is_main else nullcontext():
        if rt.is_main:
            run.create(recipe, {"name": run.root.name, "recipe": recipe.name,
                                "dreamctl_version": dreamctl.__version__, "torch": torch.__version__})
        if rt.distributed:
            torch.distributed.barrier()
        return _run(run, recipe, rt, None, on_event, should_stop)


def resumed_recipe(run: RunDir, overrides: list[str] | tuple[str, ...]) -> Recipe:
    """The run's recipe with the allowed overrides applied; others are refused with the reason."""
    for text in overrides:
        key = text.partition("=")[0].strip()
        if not key.startswith(RESUMABLE_KEYS):
            raise RunError(f"resume cannot change '{key}': it would change the steps already taken. "
                           f"Allowed: {', '.join(RESUMABLE_KEYS)}; start a new run with `dreamctl train` instead")
    recipe = run.recipe()
    if not overrides:
        return recipe
    raw = apply_overrides(recipe.model_dump(mode="json"), overrides)
    return validate_recipe(raw, f"{run.recipe_file} with --set {' '.join(overrides)}")


def resume_run(run: RunDir, rt: Runtime, overrides: list[str] | tuple[str, ...] = (), *,
               on_event: OnEvent = lambda k, p: None, should_stop: Callable[[], bool] = lambda: False) -> str:
    """Continue from the newest readable checkpoint (falling back past corrupt ones)."""
    recipe = resumed_recipe(run, overrides)
    with run.lock() if rt.is_main else nullcontext():
        path, ckpt = load_latest(run.checkpoints, map_location=rt.device)
        if rt.is_main:
            run.truncate_metrics(after_step=ckpt["step"])
            if overrides:
                tmp = run.recipe_file.with_name("recipe.yaml.tmp")
                tmp.write_text(recipe_to_yaml(recipe))
                tmp.replace(run.recipe_file)
        on_event("resume", {"step": ckpt["step"], "path": str(path)})
        return _run(run, recipe, rt, ckpt, on_event, should_stop)

