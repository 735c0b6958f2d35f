"""Options shared by several commands, each defined once (flag, type and help text), and the sampling
ones turned into SampleOptions in one place (sample_options).

A sampling option left out (None) means "the run recipe's `sample` section decides", so
`dreamctl sample` and `dreamctl evaluate` read the same defaults from the same place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

if TYPE_CHECKING:
    from dreamctl.inference import SampleOptions

Device = Annotated[Optional[str], typer.Option("--device", help="cpu or cuda [default: cuda if available].")]

Sampler = Annotated[Optional[str], typer.Option("--sampler", help="ddim or ddpm [default: sample.sampler].")]
Steps = Annotated[Optional[int], typer.Option("--steps", help="Sampling steps [default: the recipe's; ddpm: all T].")]
Eta = Annotated[Optional[float], typer.Option("--eta", help="DDIM eta (0 deterministic, 1 DDPM-like) "
                                                         "[default: sample.eta].")]
TStart = Annotated[Optional[int], typer.Option("--t-start", help="First (largest) timestep [default: sample.t_start, "
                                                                  "else (steps-1)*(T//steps)].")]
ClipX0 = Annotated[Optional[bool], typer.Option("--clip-x0/--no-clip-x0", help="Clip each step's x0 estimate to "
                                                "[-1, 1], as diffusers' DDPMScheduler does [default: sample.clip_x0].")]
Ema = Annotated[Optional[bool], typer.Option("--ema/--no-ema", help="EMA or raw weights [default: sample.use_ema].")]
Checkpoint = Annotated[Optional[int], typer.Option("--checkpoint", help="Checkpoint step [default: the newest].")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", help="Images per batch [default: sample.batch_size; "
                                                                      "halved on GPU out-of-memory].")]
Compile = Annotated[Optional[bool], typer.Option(
    "--compile/--no-compile", help="torch.compile the network: a minute or two of compiling that pays on a GPU for "
                                   "thousands of images [default: sample.compile].")]
CompileMode = Annotated[Optional[str], typer.Option(
    "--compile-mode", help="torch.compile mode, implies --compile: default, or reduce-overhead (each step replayed "
                           "as a CUDA graph) [default: sample.compile_mode].")]


def sample_options(params: Mapping[str, Any]) -> SampleOptions:
    """SampleOptions from a command's parameters by name (typer's `ctx.params`): `sample` and `evaluate` take
    each of its fields as a parameter of the field's name (use_ema: --ema/--no-ema)."""
    from dreamctl.inference import SampleOptions  # torch: not imported for --help

    return SampleOptions(**{f.name: params[f.name] for f in fields(SampleOptions)})
