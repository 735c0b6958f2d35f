"""The logged loss terms: per-term means, and a partial interval carried through a checkpoint."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dreamctl.runtime import Runtime
from dreamctl.training.meter import LossMeter

T = 1000
STEPS, CUT = 40, 23  # a log interval of 40 steps, a checkpoint after step 22


def _loss(step: int, rank: int) -> float:
    """Differs by step and rank, in all 24 bits: a float32 sum taken in another order differs."""
    return 1.0 + step + 10 * rank + torch.rand((), generator=torch.Generator().manual_seed(100 * step + rank)).item()


def _stats(step: int, rank: int, rect: bool) -> tuple[dict, torch.Tensor]:
    """A step's stats: values that differ by step and rank, a rectified term only when `rect`."""
    loss = torch.tensor(_loss(step, rank))
    stats = {"loss": loss, "loss_std": loss / 2, "per_sample": torch.tensor([step, rank + 0.5, 3.0, 4.0])}
    if rect:
        stats.update(loss_rect=torch.tensor(float(step)), lambda_mean=torch.tensor(0.5))
    return stats, torch.tensor([0, 300, 600, 999])


def test_a_term_that_starts_mid_interval_is_averaged_over_its_own_steps() -> None:
    rt = Runtime(torch.device("cpu"), "fp32")
    meter = LossMeter(T, rt.device)
    for step in range(5):
        meter.add(*_stats(step, 0, rect=step >= 3))
    means = meter.means(rt)
    assert means["loss"] == pytest.approx(sum(_loss(s, 0) for s in range(5)) / 5)
    assert (means["loss_rect"], means["lambda_mean"]) == ((3 + 4) / 2, 0.5)  # not diluted by steps 0-2
    assert means["loss_q0"] == sum(range(5)) / 5 and means["loss_q3"] == 4.0


def _ddp_worker(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    rt = Runtime(torch.device("cpu"), "fp32", rank=rank, world_size=world)
    straight, first = LossMeter(T, rt.device), LossMeter(T, rt.device)
    for step in range(STEPS):
        straight.add(*_stats(step, rank, rect=step >= 1))
        if step < CUT:
            first.add(*_stats(step, rank, rect=step >= 1))
    saved = first.state_dict(rt)  # a checkpoint after step 2, between two log steps
    resumed = LossMeter(T, rt.device)
    resumed.load_state_dict(saved, rt)
    for step in range(CUT, STEPS):
        resumed.add(*_stats(step, rank, rect=True))
    result = (straight.means(rt), resumed.means(rt), saved)
    if rank == 0:
        torch.save(result, out)
    dist.destroy_process_group()


def test_a_partial_interval_survives_a_checkpoint_under_ddp(tmp_path) -> None:
    out = tmp_path / "means.pt"
    mp.spawn(_ddp_worker, args=(2, f"file://{tmp_path / 'store'}", str(out)), nprocs=2)
    straight, resumed, saved = torch.load(out, weights_only=True)
    assert resumed == straight  # bit for bit: each rank resumes its own partial sums
    assert straight["loss"] == pytest.approx(sum(_loss(s, r) for s in range(STEPS) for r in range(2)) / (2 * STEPS))
    assert straight["loss_rect"] == sum(range(1, STEPS)) / (STEPS - 1)
    # Resumed on one process: it computes each step's loss over the whole batch (the ranks' mean).
    one = Runtime(torch.device("cpu"), "fp32")
    alone = LossMeter(T, one.device)
    alone.load_state_dict(saved, one)
    for step in range(CUT, STEPS):
        stats, t = _stats(step, 0, rect=True)
        alone.add({**stats, "loss": torch.tensor((_loss(step, 0) + _loss(step, 1)) / 2)}, t)  # the whole batch
    assert alone.means(one)["loss"] == pytest.approx(straight["loss"])


def test_a_checkpoint_from_before_per_rank_rows_still_resumes() -> None:
    """Those kept term sums as means over ranks, the quartiles as totals."""
    rt = Runtime(torch.device("cpu"), "fp32")
    old = {"keys": ["loss"], "counts": [2], "sums": torch.tensor([3.0]), "q_sum": torch.tensor([3.0, 0, 0, 0]),
           "q_count": torch.tensor([2.0, 0, 0, 0])}
    meter = LossMeter(T, rt.device)
    meter.load_state_dict(old, rt)
    meter.add({"loss": torch.tensor(3.0), "per_sample": torch.tensor([6.0])}, torch.tensor([0]))
    assert meter.means(rt) == {"loss": 2.0, "loss_q0": 3.0}


def test_a_one_process_partial_interval_resumed_on_two_ranks_is_counted_once() -> None:
    """Resuming on more processes must not log the saved steps' losses once per rank."""
    one = Runtime(torch.device("cpu"), "fp32")
    first = LossMeter(T, one.device)
    for step in range(3):  # a one-process run checkpointed after 3 of a log interval's steps
        first.add({"loss": torch.tensor(float(step + 1)), "per_sample": torch.tensor([2.0])}, torch.tensor([0]))
    saved = first.state_dict(one)
    ranks = []
    for rank in range(2):  # each rank loads on its own: loading needs no process group
        meter = LossMeter(T, one.device)
        meter.load_state_dict(saved, Runtime(torch.device("cpu"), "fp32", rank=rank, world_size=2))
        ranks.append(meter)
    assert ranks[0].counts == ranks[1].counts == {"loss": 3}  # every rank knows how many steps the interval had
    # means() all-reduces (adds) the ranks' sums and divides by steps * ranks: the mean of 1, 2, 3 is 2.
    total = sum(m.sums["loss"] for m in ranks)
    assert total.item() / (3 * 2) == pytest.approx(2.0)
    assert sum(m.q_count for m in ranks).tolist() == [3.0, 0.0, 0.0, 0.0]  # each saved sample counted once
    assert sum(m.q_sum for m in ranks).tolist() == [6.0, 0.0, 0.0, 0.0]
