"""Experiments over run folders: `compare` (tables, plots) and `ablate` (grids of runs).

Everything here reads only what a run folder holds (docs/run-folder.md) and drives
training and evaluation through the CLI as subprocesses, so it works on runs made on
another machine and never reaches into the trainer's internals (ablate's plan borrows only
the trainer's step count and per-step cost, so it prices a run as training will run it).
"""

from dreamctl.experiments.compare import Comparison, compare_runs
from dreamctl.experiments.runs import EvalRecord, Run, read_run

__all__ = ["Comparison", "EvalRecord", "Run", "compare_runs", "read_run"]
