"""The loss terms logged to metrics.jsonl: summed on the device between log steps, adding no host sync to a
step (the step's own finiteness check, training.loop.update, has one).

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

    def _packed(self) -> tuple[list[str], Tensor]:
        """(keys, this rank's [term sums..., quartile sums, quartile counts]) in one vector."""
        keys = sorted(self.sums)
        terms = torch.stack([self.sums[k] for k in keys]) if keys else self.q_sum[:0]
        return keys, torch.cat([terms, self.q_sum, self.q_count])

    def _unpack(self, keys: list[str], packed: Tensor) -> None:
        n = len(keys)
        self.sums = {k: packed[i] for i, k in enumerate(keys)}
        self.q_sum, self.q_count = packed[n:n + QUARTILES].clone(), packed[n + QUARTILES:].clone()

    def means(self, rt: Runtime) -> dict[str, float]:
        """Means over the interval and over ranks (one all-reduce); the caller resets after logging them."""
        keys, packed = self._packed()
        if rt.distributed:
            packed = packed.to(rt.device if rt.device.type == "cuda" else "cpu")
            torch.distributed.all_reduce(packed)
        n = len(keys)
        out = {k: (packed[i] / (self.counts[k] * rt.world_size)).item() for i, k in enumerate(keys)}
        q_sum, q_count = packed[n:n + QUARTILES], packed[n + QUARTILES:]
        q = (q_sum / q_count.clamp(min=1)).tolist()
        out.update({f"loss_q{i}": q[i] for i in range(QUARTILES) if q_count[i] > 0})
        return out

    def state_dict(self, rt: Runtime) -> dict[str, Any]:
        """The partial interval: every rank's sums, one row per rank (every rank must call this: it may
        all-gather), so a resume on as many processes continues each rank's sums bit for bit."""
        keys, packed = self._packed()
        if self.empty or not rt.distributed:  # every row zero (a checkpoint on a log step, the usual case), or one row
            rows = packed[None].expand(rt.world_size, -1)
        else:
            gathered = [torch.empty_like(packed) for _ in range(rt.world_size)]
            torch.distributed.all_gather(gathered, packed.to(rt.device if rt.device.type == "cuda" else "cpu"))
            rows = torch.stack(gathered)
        return {"keys": keys, "counts": [self.counts[k] for k in keys], "per_rank": rows.cpu().clone()}

    def load_state_dict(self, state: dict[str, Any], rt: Runtime) -> None:
        """On as many processes as saved it, each rank takes its own row. On another number, rank 0
        takes the whole interval and the others start from zero, so the next all-reduce adds it once;
        term sums are rescaled to this world size (means divide by it). Every rank takes the step counts."""
        self.reset()
        keys = list(state["keys"])
        self.counts = dict(zip(keys, state["counts"]))
        if "per_rank" in state:
            rows = state["per_rank"]
        else:  # checkpoints from before per-rank rows kept term sums as means over ranks: one 1-process row
            rows = torch.cat([state["sums"], state["q_sum"], state["q_count"]])[None]
        if rows.shape[0] == rt.world_size:
            mine = rows[rt.rank].clone()
        else:
            mine = rows.sum(0)
            mine[:len(keys)] *= rt.world_size / rows.shape[0]
            mine = mine if rt.rank == 0 else torch.zeros_like(mine)
        self._unpack(keys, mine.to(self.device))
