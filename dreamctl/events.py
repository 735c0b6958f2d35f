"""Progress events: how the core says what it is doing without printing (the CLI shows them).

A long-running function takes `on_event(kind, payload)` and calls it as it goes; the default
ignores everything. The kinds, who sends them, and their payloads:

  train (training/loop.py, session.py)
    "resume"      {"step", "path"}                       where the run starts from (path or a note); from a
                  checkpoint also session.processes() of this session and of the last one ("before")
    "start"       {"step", "total_steps", "steps_per_epoch"}
    "step"        {"step"}                               every step: moves a progress bar
    "log"         metrics.jsonl's record + "total_steps"  every train.log_every steps
    "checkpoint"  {"step", "path"}
    "grid"        {"step", "path"}                       a sample grid drawn during training
  sample and evaluate (sample_folder.py, evaluation.py)
    "sample_start"    {"folder", "num", "held", "kept", "missing"}
    "sample_progress" {"drawn", "missing", "batch_size"}
    "sample_done"     {"folder", "drawn"}
    "stage"           {"what"}                           a step of evaluate, in words
  bench (bench/sections.py)
    "bench_first"  {"section", "name", "seconds"}        a first step or batch (the compile), timed apart
    "bench_round"  {"section", "round", "seconds": {name: s}}   one round of interleaved timing
    "bench_failed" {"section", "name", "error"}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

OnEvent = Callable[[str, dict[str, Any]], None]


def ignore(kind: str, payload: dict[str, Any]) -> None:
    """The default listener: the core never prints."""
