"""Experiments over run folders: `compare` (tables, plots) and `ablate` (grids of runs).

Everything here reads only what a run folder holds (docs/run-folder.md) and drives
training and evaluation through the CLI as subprocesses, so it works on runs made on
another machine. ablate's plan calls the commands' own public functions where it must agree
with them: the trainer's step count and per-step cost (to price a run as training will run
it), and evaluate's resolution of sampling settings, metric names and reference check (to
skip or refuse an evaluation before any training, as evaluate would).
"""

from dreamctl.experiments.compare import Comparison, compare_runs
from dreamctl.experiments.runs import EvalRecord, Run, read_run

__all__ = ["Comparison", "EvalRecord", "Run", "compare_runs", "read_run"]
