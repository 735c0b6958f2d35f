"""What training writes into its run folder: the metrics log, progress grids and checkpoints.

Rank 0 alone writes, each write through main_first, which tells the other ranks whether it worked:
a full disk is then rank 0's one-line error, not the others' failed collective. The loop owns the
state; a Recorder only reads it at the moments the loop chooses.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor

from dreamctl.config import Recipe, recipe_to_yaml
from dreamctl.data.loader import BatchOrder
from dreamctl.diffusion.schedule import NoiseSchedule
from dreamctl.events import OnEvent
from dreamctl.generate import generate, save_grid
from dreamctl.runtime import Autocast, Runtime, main_first, peak_memory_bytes, processes
from dreamctl.training.checkpoints import Checkpoint, save_checkpoint
from dreamctl.training.meter import LossMeter
from dreamctl.training.rundir import RunDir
from dreamctl.training.state import TrainState


class Throughput:
    """Training img/s since the last reset, leaving out the side work (checkpoints, grids)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start, self.images, self.side = time.perf_counter(), 0, 0.0

    def add(self, images: int) -> None:
        self.images += images

    @contextmanager
    def side_work(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.side += time.perf_counter() - started

    def img_per_s(self) -> float:
        return self.images / max(time.perf_counter() - self.start - self.side, 1e-9)


class Recorder:
    """The run folder's writer during train(): one per call, over the loop's state, data order and meter."""

    def __init__(self, run: RunDir, recipe: Recipe, state: TrainState, order: BatchOrder, meter: LossMeter,
                 rt: Runtime, on_event: OnEvent, last_step: int):
        self.run, self.recipe, self.state, self.order, self.meter = run, recipe, state, order, meter
        self.rt, self.on_event, self.last_step = rt, on_event, last_step
        self.recipe_yaml = recipe_to_yaml(recipe)  # what each checkpoint carries

    def log(self, epoch: int, grad_norm: Tensor, img_per_s: float) -> None:
        """Append one metrics.jsonl row: the loss means since the last row (then restarts the meter), the
        step's own grad norm and learning rate, and the loop's img/s over the interval."""
        s = self.state
        record = {"step": s.step, "epoch": epoch, "images_seen": s.images_seen, **self.meter.means(self.rt),
                  "lr": s.optimizer.param_groups[0]["lr"], "grad_norm": float(grad_norm),
                  "img_per_s": img_per_s, "peak_memory_bytes": peak_memory_bytes(self.rt.device),
                  "time": time.time()}
        main_first(self.rt, lambda: self.run.append_metrics(record))
        self.on_event("log", {**record, "total_steps": self.last_step})
        self.meter.reset()

    def grid(self, schedule: NoiseSchedule) -> None:
        """samples/step-NNNNNNNN.png: the EMA model's images under the recipe's sampler, fixed seeds."""
        def draw() -> None:
            net, r = Autocast(self.state.ema, self.rt), self.recipe
            images = generate(net, schedule, list(range(r.train.sample_grid)), image_size=r.data.resolution,
                              cfg=r.sample, device=self.rt.device)
            path = save_grid(images, self.run.samples / f"step-{self.state.step:08d}.png")
            self.on_event("grid", {"step": self.state.step, "path": str(path)})
        main_first(self.rt, draw)

    def checkpoint(self, stop: bool = False) -> None:
        """A checkpoint of this step, after the metrics log it follows is on disk; run.json's totals.
        A stop's checkpoint (off the schedule) is listed in run.json's stop_steps: rotation removes it first."""
        s, run = self.state, self.run
        meter_state = self.meter.state_dict(self.rt)  # on every rank: it may all-gather

        def save() -> None:
            ckpt = Checkpoint(**s.state_dict(), data_position=self.order.state_dict(), meter=meter_state,
                              recipe_yaml=self.recipe_yaml, run_id=run.run_id(), processes=processes(self.rt))
            run.sync_metrics()
            stops = set(run.info().get("stop_steps", []))
            path = save_checkpoint(ckpt, run.checkpoints, self.recipe.train.keep_checkpoints,
                                   first_to_go=stops)
            run.update_info({"step": s.step, "epoch": self.order.epoch, "images_seen": s.images_seen,
                             "wall_time_s": round(s.wall_time_s, 2),
                             **({"stop_steps": sorted(stops | {s.step})} if stop else {})})
            self.on_event("checkpoint", {"step": s.step, "path": str(path)})
        main_first(self.rt, save)
