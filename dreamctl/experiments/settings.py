"""A run's settings as compare shows and groups them: what differs between runs, what a resume changed part-way,
which runs are seeds of one experiment, and the process counts it trained on."""

from __future__ import annotations

from typing import Any

from dreamctl.config import Recipe, flat_items
from dreamctl.config.keys import BOOKKEEPING_KEYS, NOT_SETTINGS, leaves_weights
from dreamctl.experiments.runs import Run


def effective_items(recipe: Recipe) -> dict[str, Any]:
    """flat_items with the loss parameters that this loss kind ignores set to None (shown as —)."""
    unused = {f"loss.{name}" for name in recipe.loss.unused()}
    return {k: None if k in unused else v for k, v in flat_items(recipe).items()}


RESUMED = "resumed with"  # a setting of its own: what `resume --set` changed part-way, and at which step
LENGTH_KEYS = ("train.epochs", "train.max_steps")  # where a run ends (its step says it), not how it trains


def resumed_with(run: Run) -> str | None:
    """`step 500: optim.lr=1e-4` for each resume that changed how the weights train; None if none did.
    recipe.yaml holds only the latest values: two seeds whose recipes agree now trained differently when
    one changed its learning rate half-way."""
    changes = []
    for resume in run.info.get("resumes") or []:
        sets = [s for s in resume.get("set") or []
                if not s.partition("=")[0].strip().startswith((*BOOKKEEPING_KEYS, *LENGTH_KEYS))]
        if sets:
            changes.append(f"step {resume.get('step')}: {' '.join(sets)}")
    return "; ".join(changes) or None


def run_items(run: Run) -> dict[str, Any]:
    """The run's settings as compare shows and groups them: effective_items and RESUMED."""
    return {**effective_items(run.recipe), RESUMED: resumed_with(run)}


def differing_settings(runs: list[Run]) -> tuple[str, ...]:
    """Dotted recipe keys (and RESUMED) whose value is not the same in every run, in recipe order; none of
    the BOOKKEEPING_KEYS (log, checkpoint and grid intervals, sample.*, eval.*: they leave the weights as
    they are, and an evaluation's protocol records how it sampled) but data.path, which may name other data."""
    flats = [run_items(run) for run in runs]
    keys = list(dict.fromkeys(k for flat in flats for k in flat))
    return tuple(k for k in keys if k not in NOT_SETTINGS and not leaves_weights(k)
                 and len({repr(f.get(k)) for f in flats}) > 1)


def group_key(run: Run) -> str:
    """Every recipe setting but `train.seed` and BOOKKEEPING_KEYS, what resumes changed (RESUMED), and the
    training data by content: runs trained on other data are another experiment, whatever their recipes
    say (run.json data_manifest_sha256)."""
    flat = run_items(run)
    settings = sorted((k, repr(v)) for k, v in flat.items()
                      if k not in ("train.seed", *NOT_SETTINGS) and not k.startswith(BOOKKEEPING_KEYS))
    data = run.info.get("data_manifest_sha256") or f"path {flat['data.path']}"  # a run from before the hash
    return repr((settings, data))


def repeated_seeds(runs: list[Run]) -> dict[int, int]:
    """Index of a run -> index of the earlier run with its settings, data and seed (a copied folder, a rerun):
    the same seed twice is no second sample, so it is never averaged in as one."""
    first: dict[tuple[str, int], int] = {}
    out = {}
    for i, run in enumerate(runs):
        j = first.setdefault((group_key(run), run.seed), i)
        if j != i:
            out[i] = j
    return out


def seed_groups(runs: list[Run]) -> list[list[int]]:
    """Indices of runs that differ only by `train.seed`, in first-seen order; a repeated seed stays alone."""
    repeats = repeated_seeds(runs)
    groups: dict[tuple[str, Any], list[int]] = {}
    for i, run in enumerate(runs):
        groups.setdefault(("alone", i) if i in repeats else ("group", group_key(run)), []).append(i)
    return list(groups.values())


def processes(run: Run) -> tuple[int, ...]:
    """The process counts (world sizes) of the sessions that trained steps, the first and each resume up to the
    next: img/s is over all of them, peak memory rank 0's share of the batch. A resume of a finished run, or one
    stopped while it loaded, trained on none."""
    info = run.info
    sessions = [(0, info.get("world_size")), *((r.get("step"), r.get("world_size")) for r in info.get("resumes") or [])]
    ends = [start for start, _ in sessions[1:]] + [info.get("step")]
    trained = {size for (start, size), end in zip(sessions, ends) if isinstance(size, int)
               and not (isinstance(start, int) and isinstance(end, int) and end <= start)}
    return tuple(sorted(trained)) or (1,)
