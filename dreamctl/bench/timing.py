"""Timing side by side: round-robin rounds after warm-up, medians, same-round ratios."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

OnRound = Callable[[str, dict[str, float]], None]  # (round label, seconds per entry)


# --- measuring ------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def counting_forwards(module: nn.Module) -> Iterator[list[int]]:
    """Count calls of `module` (a forward pre-hook); yields a one-element list holding the count."""
    count = [0]
    handle = module.register_forward_pre_hook(lambda mod, args: count.__setitem__(0, count[0] + 1))
    try:
        yield count
    finally:
        handle.remove()


def interleaved(steps: dict[str, Callable[[int], None]], device: torch.device, *, warmup: int, rounds: int,
                budget_s: float | None = None, counter: list[int] | None = None,
                on_round: OnRound = lambda label, seconds: None) -> dict[str, dict[str, Any]]:
    """Time each callable round-robin: `warmup` untimed rounds, then up to `rounds` timed ones.

    Each round starts at a different entry. `budget_s` stops after the round that exceeds it
    (at least one timed round). Per entry: seconds per round, forward calls, and on CUDA the
    peak memory and the step's own share of it ('extra': the peak less what was resident before).
    `on_round(label, {name: seconds})` hears of each round as it ends, so that a run cut short by
    its time limit has said how far it got.
    """
    names = list(steps)
    cuda = device.type == "cuda"
    out: dict[str, dict[str, Any]] = {n: {"seconds": [], "forward_calls": set(), "peak": 0, "reserved": 0,
                                          "extra": 0} for n in names}
    i = 0
    for w in range(warmup):
        took = {}
        for name in names:
            t0 = time.perf_counter()
            steps[name](i)
            sync(device)
            took[name] = time.perf_counter() - t0
            i += 1
        on_round(f"warm-up {w + 1}/{warmup}", took)
    start = time.perf_counter()
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
                resident = torch.cuda.memory_allocated(device)
            if counter is not None:
                counter[0] = 0
            sync(device)
            t0 = time.perf_counter()
            steps[name](i)
            sync(device)
            rec = out[name]
            rec["seconds"].append(time.perf_counter() - t0)
            if counter is not None:
                rec["forward_calls"].add(counter[0])
            if cuda:
                rec["peak"] = max(rec["peak"], torch.cuda.max_memory_allocated(device))
                rec["extra"] = max(rec["extra"], torch.cuda.max_memory_allocated(device) - resident)
                rec["reserved"] = max(rec["reserved"], torch.cuda.max_memory_reserved(device))
            i += 1
        on_round(f"round {r + 1}/{rounds}", {name: out[name]["seconds"][-1] for name in names})
        if budget_s is not None and time.perf_counter() - start > budget_s:
            break
    return out


def _calls(found: set[int]) -> int | list[int] | None:
    """The forward-call count; a sorted list if it varied between steps (it should not)."""
    return None if not found else (next(iter(found)) if len(found) == 1 else sorted(found))


def summarize(raw: dict[str, dict[str, Any]], batch: int, cuda: bool, reference: str) -> dict[str, dict[str, Any]]:
    """Median step time, img/s, memory, and same-round ratios of each entry to `reference`."""
    ref = raw[reference]["seconds"]
    rows = {}
    for name, rec in raw.items():
        secs = rec["seconds"]
        med = statistics.median(secs)
        paired = [s / r for s, r in zip(secs, ref)]
        rows[name] = {
            "forward_calls": _calls(rec["forward_calls"]),
            "rounds": len(secs),
            "step_ms_median": round(med * 1e3, 2),
            "step_ms_min": round(min(secs) * 1e3, 2),
            "step_ms_max": round(max(secs) * 1e3, 2),
            "img_per_s": round(batch / med, 1),
            "step_time_ratio": round(statistics.median(paired), 3),
            "peak_memory_bytes": rec["peak"] if cuda else None,
            "peak_reserved_bytes": rec["reserved"] if cuda else None,
            "peak_memory_ratio": round(rec["peak"] / raw[reference]["peak"], 3) if cuda else None,
            "step_extra_bytes": rec["extra"] if cuda else None,
            "step_extra_ratio": round(rec["extra"] / raw[reference]["extra"], 3) if cuda else None,
        }
    return rows
