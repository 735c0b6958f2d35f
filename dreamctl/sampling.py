"""Load a run's model for inference and draw numbered samples into a folder, resumably.

Image i of a folder is `DIR/<i:06d>.png`, drawn from seed `seed * 2**20 + i` (generate.image_seeds), so a folder
can be filled in any order, by any number of processes, and stopped and rerun: a PNG that is
already there and readable is kept, and only the missing indices are drawn. `sample.json`
records the settings; a folder is never topped up with images drawn under other settings.
"""

from __future__ import annotations

import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

import dreamctl
from dreamctl import atomic
from dreamctl.config import Recipe, SampleConfig, recipe_from_yaml, validate_recipe
from dreamctl.config.schema import DDPM_SETTINGS
from dreamctl.config.load import option_args
from dreamctl.diffusion import NoiseSchedule, schedule_for
from dreamctl.diffusion.start import check_sampler_start
from dreamctl.errors import CheckpointError, CorruptCheckpoint, DreamctlWarning
from dreamctl.generate import check_base_seed, check_count, generate, image_seeds, save_grid
from dreamctl.models import build_model
from dreamctl.protocol import Sampling
from dreamctl.events import OnEvent, ignore
from dreamctl.runtime import Autocast, Runtime, barrier, from_main, main_first, on_every_rank, sum_over_ranks
from dreamctl.sample_files import check_folder, png_path, read_png, read_samples, write_png
from dreamctl.records import read_json
from dreamctl.training.rundir import RunDir
from dreamctl.training.checkpoints import (Checkpoint, check_fits, checkpoint_path, list_checkpoints, no_checkpoint,
                                           read_checkpoint, step_of, weights_sha256)

GRID_MAX = 64


@dataclass(frozen=True)
class SampleOptions:
    """What the user asked for; None means the run recipe's `sample` section decides."""

    sampler: str | None = None
    steps: int | None = None
    eta: float | None = None
    t_start: int | None = None
    clip_x0: bool | None = None
    use_ema: bool | None = None
    batch_size: int | None = None
    compile: bool | None = None
    compile_mode: str | None = None  # given alone, it asks for compile too
    checkpoint: int | None = None  # step; None: the newest (refused when damaged: choose_checkpoint)
    seed: int | None = None  # base seed (generate.image_seeds); None: 0 for `sample`, eval.seed for `evaluate`


@dataclass(frozen=True)
class InferenceModel:
    net: nn.Module  # eval mode, no grad, under the runtime's autocast (bf16 on CUDA)
    schedule: NoiseSchedule
    cfg: SampleConfig
    step: int
    checkpoint: Path
    image_size: int
    run_id: str
    weights_sha256: str  # of the weights loaded (checkpoints.weights_sha256): a step alone does not fix them
    precision: str = "fp32"  # the network's autocast: bf16 draws other images than fp32 from the same seeds


def sample_config(recipe: Recipe, opts: SampleOptions, source: str) -> SampleConfig:
    """The recipe's sample section with the options applied, validated as the recipe schema would.
    Always validated whole: `recipe` may join one recipe's sample section to another's schedule."""
    changes = {f.name: getattr(opts, f.name) for f in fields(opts)
               if f.name in SampleConfig.model_fields and getattr(opts, f.name) is not None}
    if "compile_mode" in changes:
        changes.setdefault("compile", True)
    elif changes.get("compile") is False:  # --no-compile over a recipe's reduce-overhead: no mode to keep
        changes["compile_mode"] = "default"
    raw = recipe.model_dump(mode="json")
    if changes.get("sampler") == "ddpm":  # the recipe's DDIM settings were not asked for: the schema gives DDPM's
        for key in DDPM_SETTINGS:
            if key not in changes:
                del raw["sample"][key]
    raw["sample"].update(changes)
    told = " ".join(a for k, v in changes.items() for a in option_args(k, v))  # as typed: --steps, not sample.steps
    source = f"{source} with {told}" if told else source
    cfg = validate_recipe(raw, source).sample
    check_sampler_start(recipe.diffusion, cfg, source)
    return cfg


def choose_checkpoint(run: RunDir, step: int | None) -> tuple[Path, Checkpoint]:
    """The checkpoint of `step`, or the newest, if this run wrote it. Unlike resume, which goes on from the newest
    readable one, a damaged one is refused: the images and scores would be of another model than the one asked."""
    listed = list_checkpoints(run.checkpoints)
    run.check_reached(bool(listed))
    if not listed:
        raise no_checkpoint(run.checkpoints)
    path = listed[-1] if step is None else checkpoint_path(run.checkpoints, step)
    if not path.is_file():
        have = ", ".join(str(step_of(p)) for p in listed)
        raise CheckpointError(f"no checkpoint for step {step} in {run.checkpoints} (steps there: {have}); "
                              "choose one of them with --checkpoint or leave it out for the newest")
    try:
        ckpt = read_checkpoint(path)
    except CorruptCheckpoint as err:
        others = ", ".join(str(step_of(p)) for p in listed if p != path) or "none"
        newest = (f"it is the newest; `dreamctl resume {run.root}` sets it aside and trains its steps again, or "
                  if step is None else "")
        raise CheckpointError(f"{err}: {newest}--checkpoint STEP draws from another one (steps there: {others})"
                              ) from None
    run.check_own(path, ckpt.run_id)
    return path, ckpt


def load_for_inference(run: RunDir, opts: SampleOptions, rt: Runtime, current: Recipe | None = None) -> InferenceModel:
    """The run's model (EMA weights unless told otherwise) from the chosen checkpoint, ready to sample.

    The network and the noise schedule are built from the recipe stored in the checkpoint, the one
    its weights were trained with; recipe.yaml (`current`, when the caller has read it on every rank) gives
    only the sampling settings (`sample`, `eval`).
    """
    if current is None:  # a node without the run: its error
        current = on_every_rank(rt, run.recipe, f"reading {run.recipe_file}")
    # Rank 0 picks the step, every rank loads it: a run still training may write a newer checkpoint (or
    # rotate one away) between two ranks' listings, and ranks on two steps would fill two folders by halves.
    chosen: list[tuple[Path, Checkpoint]] = []
    main_first(rt, lambda: chosen.append(choose_checkpoint(run, opts.checkpoint)))
    step = from_main(step_of(chosen[0][0]) if chosen else None, rt)
    path, ckpt = on_every_rank(rt, lambda: chosen[0] if chosen else choose_checkpoint(run, step),
                               f"loading checkpoint step {step}")
    trained = recipe_from_yaml(ckpt.recipe_yaml, f"{path} (its stored recipe)")
    if (trained.model, trained.diffusion, trained.data.resolution) != (
            current.model, current.diffusion, current.data.resolution):
        warnings.warn(f"{run.recipe_file} differs from the recipe {path.name} was trained with in its model, "
                      "diffusion or data.resolution section; sampling with the checkpoint's", DreamctlWarning,
                      stacklevel=2)
    # sample_config validates the joined recipe after the options apply: recipe.yaml's sampling settings are
    # checked against the trained schedule (sample.steps <= its T, say), and an option may fix one that is not.
    recipe = trained.model_copy(update={"sample": current.sample, "eval": current.eval})
    cfg = sample_config(recipe, opts, f"{run.recipe_file} (sample section, on the schedule of {path.name})")
    model = build_model(recipe.model, recipe.data.resolution)
    part = "ema" if cfg.use_ema else "model"
    check_fits(ckpt, path, model, parts=(part,))  # weights and stored recipe disagree: edited by hand
    weights = ckpt.ema if part == "ema" else ckpt.model
    model.load_state_dict(weights)
    model = model.to(rt.device).eval().requires_grad_(False)
    net = compile_for_sampling(model, cfg.compile_mode, rt.device.type) if cfg.compile else model
    schedule = schedule_for(recipe.diffusion)
    return InferenceModel(Autocast(net, rt).eval(), schedule, cfg, ckpt.step, path, recipe.data.resolution,
                          run.run_id(), weights_sha256(weights), rt.precision)


def compile_mode_for(mode: str, device_type: str) -> str:
    """The torch.compile mode `mode` comes to on this device: only CUDA records graphs, so elsewhere
    'reduce-overhead' is 'default' (torch would skip the graphs itself, after compiling for them)."""
    return mode if device_type == "cuda" else "default"


def compile_for_sampling(model: nn.Module, mode: str, device_type: str) -> nn.Module:
    """torch.compile for drawing images. 'reduce-overhead' records each batch shape's network as a CUDA
    graph and replays it at every step (samplers.sample uses up each output before the next call)."""
    return torch.compile(model, mode=compile_mode_for(mode, device_type))


def drawn_with(m: InferenceModel, seed: int) -> Sampling:
    """The settings that fix the images `m` draws from base seed `seed` (protocol.py)."""
    return Sampling.of(m.cfg, m.step, seed, m.precision)


def folder_name(m: InferenceModel, seed: int) -> str:
    """`ddim50-eta0-ema-step39000-seed0` (+ `-tstart950`, `-clip`, `-bf16`): one folder per image-fixing setting."""
    return drawn_with(m, seed).folder_name()


def folder_settings(m: InferenceModel, seed: int) -> dict[str, Any]:
    """What must match for a folder's existing images to be reused: they fix every pixel."""
    return {"run_id": m.run_id, **drawn_with(m, seed).to_json(), "image_size": m.image_size,
            "weights_sha256": m.weights_sha256}


def open_folder(m: InferenceModel, folder: Path, seed: int, rt: Runtime) -> dict[str, Any]:
    """Check the folder's settings (every rank, so all fail alike); rank 0 records them before any image
    and clears the temporary files of a killed earlier call."""
    wanted = folder_settings(m, seed)
    check_folder(folder, wanted)
    barrier(rt)  # every rank has looked before rank 0 writes: a new folder's sample.json is no stranger's file
    folder.mkdir(parents=True, exist_ok=True)

    def record() -> None:
        atomic.sweep(folder)
        if not (folder / "sample.json").is_file():
            atomic.write_json(folder / "sample.json", {**wanted, "complete": False})
    main_first(rt, record)  # a failed write stops every rank, not rank 0 alone
    return wanted


def _draw(m: InferenceModel, indices: list[int], folder: Path, seed: int, rt: Runtime, batch_size: int,
          on_event: OnEvent) -> None:
    """Draw and write `indices`, one batch at a time; halve the batch when the GPU runs out of memory.

    A batch's PNGs are encoded and written by threads while the next batch is drawn (zlib releases
    the GIL), so the GPU does not wait for the disk; stopping waits for the ones under way.
    """
    done = 0
    with ThreadPoolExecutor(max_workers=4) as pool:
        writing: list[Future] = []
        while done < len(indices):
            chunk = indices[done:done + batch_size]
            # once a full batch has compiled, a short last one is padded to its shape rather than compiled again
            pad_to = batch_size if m.cfg.compile and done > 0 else None
            try:
                images = generate(m.net, m.schedule, image_seeds(seed, chunk), image_size=m.image_size, cfg=m.cfg,
                                  device=rt.device, batch_size=batch_size, pad_to=pad_to)
            except torch.cuda.OutOfMemoryError:
                if batch_size == 1:
                    raise
                batch_size //= 2
                oom = True
            else:
                oom = False
                for future in writing:  # the previous batch's files: a failed write surfaces here
                    future.result()
                writing = [pool.submit(write_png, png_path(folder, i), image)
                           for i, image in zip(chunk, images.numpy())]
                done += len(chunk)
                on_event("sample_progress", {"drawn": done, "missing": len(indices), "batch_size": batch_size})
            if oom and rt.device.type == "cuda":
                torch.cuda.empty_cache()  # outside the except block, once the failed batch's tensors are freed
        for future in writing:
            future.result()


def sample_to_folder(m: InferenceModel, folder: Path, num: int, *, seed: int, rt: Runtime,
                     on_event: OnEvent = ignore) -> dict[str, Any]:
    """Make `folder` hold images 0..num-1; returns this call's sample.json record (on every rank): its
    `num` is how many images the folder holds, which an earlier, larger call may have made more. A call
    that draws nothing leaves the file's timing (created, wall_time_s, drawn_now) that of the drawing call.

    Under torchrun rank r draws the missing indices i with i % world_size == r; rank 0 writes
    sample.json and the grid once all ranks are done.
    """
    check_count(num)  # before the folder is touched
    check_base_seed(seed)
    started = time.perf_counter()
    wanted = open_folder(m, folder, seed, rt)
    barrier(rt)
    # An earlier, larger call may have finished more images: keep the folder whole up to that count.
    before = read_json(folder / "sample.json")
    held = max(num, before.get("num", 0) if before.get("complete") else 0)
    mine = range(rt.rank, held, rt.world_size)
    missing = [i for i in mine if read_png(png_path(folder, i), m.image_size) is None]
    kept = held - sum_over_ranks(len(missing), rt)  # over every rank: the line speaks of the folder
    on_event("sample_start", {"folder": str(folder), "num": num, "held": held, "kept": kept, "missing": len(missing)})
    _draw(m, missing, folder, seed, rt, m.cfg.batch_size, on_event)
    barrier(rt)
    drawn = sum_over_ranks(len(missing), rt)
    record = {**wanted, "complete": True, "num": held, "checkpoint": m.checkpoint.name, "device": str(rt.device),
              "world_size": rt.world_size, "drawn_now": drawn, "dreamctl_version": dreamctl.__version__,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "wall_time_s": round(time.perf_counter() - started, 2)}
    drawing = {} if drawn or not before.get("complete") else {  # what drawing the folder took, not this look at it
        k: before[k] for k in ("created", "wall_time_s", "drawn_now", "device", "world_size") if k in before}

    def finish() -> None:  # through main_first, as every write of rank 0: a full disk here stops every rank
        save_grid(read_samples(folder, min(held, GRID_MAX), m.image_size), folder / "grid.png")
        atomic.write_json(folder / "sample.json", {**record, **drawing})
    main_first(rt, finish)
    on_event("sample_done", {"folder": str(folder), "drawn": len(missing)})
    return record
