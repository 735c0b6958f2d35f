"""The loss terms logged to metrics.jsonl: summed on the device between log steps, no host sync per step.

A record's loss terms are means over the steps since the previous record and over all ranks;
a term that starts mid-interval (the rectified loss from `start_epoch`) is averaged over the
steps that had it. A checkpoint between two log steps keeps the partial sums, so a resumed
run logs the same numbers as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dreamctl.runtime import Runtime

TERMS = ("loss", "loss_std", "loss_rect", "loss_dream", "lambda_mean")
QUARTILES = 4  # loss by timestep quartile: t in [0, T/4), [T/4, T/2), ...


class LossMeter:
    def __init__(self, T: int, device: torch.device):
        self.T, self.device = T, device
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}  # steps that had the term (the same on every rank)
        self.q_sum = torch.zeros(QUARTILES, device=self.device)
        self.q_count = torch.zeros(QUARTILES, device=self.device)

    @property
    def empty(self) -> bool:
        return not self.counts

    def add(self, stats: dict[str, Any], t: Tensor) -> None:
        for key in TERMS:
            if key in stats:
                self.sums[key] = self.sums.get(key, 0) + stats[key].float()
                self.counts[key] = self.counts.get(key, 0) + 1
        q = (t * QUARTILES // self.T).clamp(max=QUARTILES - 1)
        self.q_sum.index_add_(0, q, stats["per_sample"].float())
        self.q_count.index_add_(0, q, torch.ones_like(q, dtype=torch.float32))

    def _summed(self, rt: Runtime) -> tuple[list[str], Tensor, Tensor, Tensor]:
        """(keys, their sums, quartile sums, quartile counts), each summed over ranks (one all-reduce)."""
        keys = sorted(self.sums)
        packed = torch.cat([torch.stack([self.sums[k] for k in keys]) if keys else self.q_sum[:0],
                            self.q_sum, self.q_count])
        if rt.distributed:
            packed = packed.to(rt.device if rt.device.type == "cuda" else "cpu")
            torch.distributed.all_reduce(packed)
        n = len(keys)
        return keys, packed[:n], packed[n:n + QUARTILES], packed[n + QUARTILES:]

    def means(self, rt: Runtime) -> dict[str, float]:
        """Means over the interval and over ranks; the caller resets after logging them."""
        keys, sums, q_sum, q_count = self._summed(rt)
        out = {k: (sums[i] / (self.counts[k] * rt.world_size)).item() for i, k in enumerate(keys)}
        q = (q_sum / q_count.clamp(min=1)).tolist()
        out.update({f"loss_q{i}": q[i] for i in range(QUARTILES) if q_count[i] > 0})
        return out

    def state_dict(self, rt: Runtime) -> dict[str, Any]:
        """The partial interval over all ranks (every rank must call this: it may all-reduce). Term sums
        are kept as means over ranks, so a run may resume on another number of processes."""
        if self.empty:  # the usual case, a checkpoint on a log step: nothing to keep, no collective
            return {"keys": [], "counts": [], "sums": torch.zeros(0), "q_sum": torch.zeros(QUARTILES),
                    "q_count": torch.zeros(QUARTILES)}
        keys, sums, q_sum, q_count = self._summed(rt)
        return {"keys": keys, "counts": [self.counts[k] for k in keys], "sums": (sums / rt.world_size).cpu(),
                "q_sum": q_sum.cpu(), "q_count": q_count.cpu()}

    def load_state_dict(self, state: dict[str, Any], rt: Runtime) -> None:
        """Rank 0 takes the saved interval, the others start from zero, so the next all-reduce adds it
        exactly once: term sums scaled back up by this run's world size (means divide by it), quartile
        sums and counts as saved. Every rank takes the step counts."""
        self.reset()
        share = 1.0 if rt.rank == 0 else 0.0
        self.counts = dict(zip(state["keys"], state["counts"]))
        self.sums = {k: state["sums"][i].to(self.device) * share * rt.world_size for i, k in enumerate(state["keys"])}
        self.q_sum = state["q_sum"].to(self.device) * share
        self.q_count = state["q_count"].to(self.device) * share
