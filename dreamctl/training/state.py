"""What a run holds while it trains: the network, its EMA copy, the optimizer and the counters.

Checkpoint files (names, writing, reading back, their checks) are checkpoints.py.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dreamctl.config import Recipe
from dreamctl.models import build_model
from dreamctl.runtime import Runtime

if TYPE_CHECKING:
    from dreamctl.training.checkpoints import Checkpoint

__all__ = ["TrainState", "init_state"]


@dataclass
class TrainState:
    """The mutable state of a run; `step` counts optimizer steps taken."""

    model: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    step: int = 0
    images_seen: int = 0
    wall_time_s: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        """This state as a checkpoint holds it: the first six fields of a Checkpoint."""
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), "step": self.step, "images_seen": self.images_seen,
                "wall_time_s": self.wall_time_s}

    def restore(self, ckpt: Checkpoint) -> None:
        """Take a checkpoint's state; the weights move to this state's devices."""
        self.model.load_state_dict(ckpt.model)
        self.ema.load_state_dict(ckpt.ema)
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.step, self.images_seen, self.wall_time_s = ckpt.step, ckpt.images_seen, ckpt.wall_time_s


def init_state(recipe: Recipe, rt: Runtime) -> TrainState:
    """Model, EMA copy and AdamW, identical on every rank (same seed)."""
    torch.manual_seed(recipe.train.seed)
    model = build_model(recipe.model, recipe.data.resolution).to(rt.device)
    if recipe.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    o = recipe.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay,
                                  fused=rt.device.type == "cuda", foreach=None if rt.device.type == "cuda" else True)
    return TrainState(model, ema, optimizer)
