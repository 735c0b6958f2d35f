"""Which checkpoint and model to sample with, under which settings.

The user's options over the run recipe's `sample` section (SampleOptions, sample_config), the
checkpoint to draw from (choose_checkpoint), and its network loaded for drawing: weights chosen,
eval mode, optionally compiled, under the runtime's autocast (load_for_inference).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn

from dreamctl.config import Recipe, SampleConfig, recipe_from_yaml, validate_recipe
from dreamctl.config.load import option_args
from dreamctl.config.schema import DDPM_SETTINGS
from dreamctl.diffusion import NoiseSchedule, schedule_for
from dreamctl.diffusion.start import check_sampler_start
from dreamctl.errors import CheckpointError, CorruptCheckpoint, DreamctlWarning
from dreamctl.models import build_model
from dreamctl.runtime import Autocast, Runtime, from_main, main_first, on_every_rank
from dreamctl.training.checkpoints import (
    Checkpoint,
    check_fits,
    checkpoint_path,
    list_checkpoints,
    no_checkpoint,
    read_checkpoint,
    step_of,
    weights_sha256,
)
from dreamctl.training.rundir import RunDir


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
    net = sampling_net(model, rt, cfg.compile_mode if cfg.compile else None)
    return InferenceModel(net, schedule_for(recipe.diffusion), cfg, ckpt.step, path, recipe.data.resolution,
                          run.run_id(), weights_sha256(weights), rt.precision)


def sampling_net(model: nn.Module, rt: Runtime, compile_mode: str | None) -> nn.Module:
    """`model` as `sample` draws with it: on rt's device, eval mode, no autograd, compiled in `compile_mode`
    (None: eager), under rt's autocast. The benchmark and `--time` time this same network."""
    model = model.to(rt.device).eval().requires_grad_(False)
    net = model if compile_mode is None else compile_for_sampling(model, compile_mode, rt.device.type)
    return Autocast(net, rt).eval()


def compile_mode_for(mode: str, device_type: str) -> str:
    """The torch.compile mode `mode` comes to on this device: only CUDA records graphs, so elsewhere
    'reduce-overhead' is 'default' (torch would skip the graphs itself, after compiling for them)."""
    return mode if device_type == "cuda" else "default"


def compile_for_sampling(model: nn.Module, mode: str, device_type: str) -> nn.Module:
    """torch.compile for drawing images. 'reduce-overhead' records each batch shape's network as a CUDA
    graph and replays it at every step (samplers.sample uses up each output before the next call)."""
    return torch.compile(model, mode=compile_mode_for(mode, device_type))
