"""What a run holds while it trains: the network, its EMA copy, the optimizer and the counters.

Checkpoint files (names, writing, reading back, their checks) are checkpoints.py; the names that
lived here before the split are still importable from this module.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import dreamctl
from dreamctl.config import Recipe
from dreamctl.models import build_model
from dreamctl.runtime import Runtime
# Before the split these lived here, and callers outside the package may still import them from here.
from dreamctl.training.checkpoints import (CHECKPOINT, REQUIRED, check_fits, check_moments_fit, checkpoint_path,
                                           list_checkpoints, load_checkpoint, load_latest, no_checkpoint,
                                           save_checkpoint, set_aside_newer, step_of, weights_sha256, zip_damage)

__all__ = ["TrainState", "init_state", "CHECKPOINT", "REQUIRED", "check_fits", "check_moments_fit", "checkpoint_path",
           "list_checkpoints", "load_checkpoint", "load_latest", "no_checkpoint", "save_checkpoint",
           "set_aside_newer", "step_of", "weights_sha256", "zip_damage"]


@dataclass
class TrainState:
    """The mutable state of a run; `step` counts optimizer steps taken."""

    model: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    step: int = 0
    images_seen: int = 0
    wall_time_s: float = 0.0

    def state_dict(self, recipe_yaml: str, data_position: dict[str, int], meter: dict[str, Any],
                   run_id: str, processes: dict[str, int]) -> dict[str, Any]:
        """The checkpoint: this state, where the data order stands, the loss meter's running sums
        (so the first log record after a resume averages the same steps as in a straight run), the
        run it belongs to (resume refuses another run's) and what wrote it (runtime.processes: a resume
        on others continues only to rounding, and says so)."""
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "images_seen": self.images_seen,
            "wall_time_s": self.wall_time_s,
            "data_position": data_position,
            "meter": meter,
            "recipe": recipe_yaml,
            "run_id": run_id,
            "processes": processes,
            "dreamctl_version": dreamctl.__version__,
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step, self.images_seen = ckpt["step"], ckpt["images_seen"]
        self.wall_time_s = ckpt["wall_time_s"]



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
