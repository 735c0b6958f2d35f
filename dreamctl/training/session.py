"""Starting and resuming a run: the folder, the lock, the data, the status in run.json.

`start_run` and `resume_run` are what the CLI (and tests) call; both end in `train()`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

import dreamctl
from dreamctl import atomic
from dreamctl.config import Recipe, apply_overrides, recipe_from_yaml, recipe_to_yaml, validate_recipe
from dreamctl.config.keys import NOT_SETTINGS, RESUMABLE_KEYS, RESUMABLE_TEXT, flat_items
from dreamctl.config.load import check_to_train, override_keys
from dreamctl.data.loader import BatchOrder, ImageSet, open_split
from dreamctl.data.shards import read_manifest, split_size
from dreamctl.errors import CheckpointError, DataError, DreamctlWarning, RunError
from dreamctl.events import OnEvent, ignore
from dreamctl.models import build_model
from dreamctl.runtime import Runtime, barrier, main_first, on_every_rank, peak_memory_bytes, peer_lost, processes
from dreamctl.training.checkpoints import (
    Checkpoint,
    check_fits,
    check_moments_fit,
    list_checkpoints,
    load_latest,
    set_aside_newer,
)
from dreamctl.training.loop import idle_rectification, total_steps, train
from dreamctl.training.rundir import RunDir


def _check_data(recipe: Recipe) -> int:
    """The number of images the recipe trains on, from the manifest alone (no shard is read)."""
    if recipe.data.path is None:
        raise RunError("no prepared data: pass --data DIR (a folder written by `dreamctl prepare-data`)")
    manifest = read_manifest(Path(recipe.data.path))
    resolution = manifest.resolution
    if resolution != recipe.data.resolution:
        raise RunError(f"data {recipe.data.path} holds {resolution}px images but data.resolution is "
                       f"{recipe.data.resolution}; prepare it with --resolution {recipe.data.resolution} "
                       f"or --set data.resolution={resolution}")
    return split_size(recipe.data.path, recipe.data.split, recipe.data.limit, manifest)


def _open_data(recipe: Recipe, rt: Runtime) -> ImageSet:
    """The split, on the device when it fits; the callers have run _check_batch on it."""
    images = open_split(recipe.data.path, recipe.data.split, recipe.data.limit)
    return images.to(rt.device) if images.images is not None else images


def _claim(run: RunDir, held: ExitStack) -> None:
    """Rank 0's hold on the run folder: locked, and every folder the run writes into checked before
    the first step (not found unwritable at the first checkpoint, nor after recipe.yaml is written)."""
    atomic.check_writable(run.root, "run folder")
    held.enter_context(run.lock())
    for folder, what in ((run.checkpoints, "checkpoint folder"), (run.samples, "sample folder")):
        atomic.check_writable(folder, what)


def _check_batch(recipe: Recipe, world_size: int) -> None:
    """The data checks, and a batch that splits over the ranks and fits the data."""
    BatchOrder(_check_data(recipe), recipe.train.batch_size, recipe.train.seed, 0, world_size)


def check_shards(recipe: Recipe) -> None:
    """Hash the shards the recipe trains on (about 1.5 s for CelebA): the --nproc-per-node shortcut's
    check, so that a damaged shard is one error before torchrun starts, not one per node after."""
    open_split(recipe.data.path, recipe.data.split, recipe.data.limit, memory_budget=0).close()


def check_start(recipe: Recipe, run: RunDir, world_size: int) -> None:
    """What start_run refuses, from the manifest alone: no data, data of another size, a data.limit
    beyond the split, a batch that does not split over the ranks or fit the data, a folder that holds
    a run. The --nproc-per-node shortcut calls it once, before any worker starts."""
    _check_batch(recipe, world_size)
    run.check_new()


def _run(run: RunDir, recipe: Recipe, rt: Runtime, images: ImageSet, resume: Checkpoint | None,
         on_event: OnEvent, should_stop: Callable[[], bool]) -> str:
    main_first(rt, lambda: run.update_info({
        "status": "running", "host": atomic.HOST, "device": str(rt.device),
        "data": str(Path(recipe.data.path).resolve()), "data_manifest_sha256": images.manifest_sha256, "error": None}))
    status = "failed"
    try:
        status = train(recipe, run, images, rt, resume=resume, on_event=on_event, should_stop=should_stop)
        barrier(rt)  # rank 0 may still be writing the last checkpoint and grid: leave together
    except BaseException as err:
        if rt.is_main:
            said = peer_lost(err, "the last checkpoint, if any, is kept: resume the run") or err  # not gloo's page
            try:
                run.update_info({"status": "failed" if not isinstance(err, KeyboardInterrupt) else "interrupted",
                                 "error": f"{type(said).__name__}: {said}" if str(said) else type(said).__name__})
            except OSError as unrecorded:  # the disk that failed the run may fail this too: report the run's error
                if hasattr(err, "add_note"):  # Python 3.11+
                    err.add_note(f"run.json could not record it: {unrecorded}")
        raise
    finally:
        if rt.is_main and status != "failed":
            info = run.info()  # totals over every session of the run, from the last checkpoint
            seconds, seen = info.get("wall_time_s") or 0.0, info.get("images_seen") or 0
            peak = max(peak_memory_bytes(rt.device), info.get("peak_memory_bytes") or 0)
            run.update_info({"status": status, "peak_memory_bytes": peak,
                             "img_per_s": round(seen / seconds, 2) if seconds > 0 else None,
                             "dreamctl_version": dreamctl.__version__})
    return status


def last_processes(info: dict[str, Any]) -> dict[str, int]:
    """processes() of a run's last session as run.json has it: its last resume's, else the first's; for a
    checkpoint that does not say what wrote it (before 2026-11-29)."""
    last = (info.get("resumes") or [info])[-1]
    return {k: last[k] for k in ("world_size", "threads") if isinstance(last.get(k), int)}


def start_run(recipe: Recipe, run: RunDir, rt: Runtime, *, on_event: OnEvent = ignore,
              should_stop: Callable[[], bool] = lambda: False) -> str:
    """Create the run folder and train from step 0 (the data is checked before anything is written)."""
    def open_data() -> ImageSet:
        _check_batch(recipe, rt.world_size)
        return _open_data(recipe, rt)

    # On every rank (shards hashed) before rank 0 claims the folder: a node without the data must not
    # leave a run folder that a plain retry of `train` refuses.
    images = on_every_rank(rt, open_data, f"opening the data {recipe.data.path}")
    if idle := idle_rectification(recipe, len(images)):
        warnings.warn(idle, DreamctlWarning, stacklevel=2)
    with ExitStack() as held:
        held.callback(images.close)  # the shard handles, when the split is read from disk
        def claim() -> None:
            run.check_new()  # before the lock and the writability checks put anything into the folder
            _claim(run, held)
            run.create(recipe, {"name": run.root.name, "recipe": recipe.name, "dreamctl_version": dreamctl.__version__,
                                "torch": torch.__version__, **processes(rt)})

        main_first(rt, claim)
        return _run(run, recipe, rt, images, None, on_event, should_stop)


def resumed_recipe(run: RunDir, overrides: list[str] | tuple[str, ...]) -> Recipe:
    """The run's recipe with the allowed overrides applied; others are refused with the reason."""
    recipe = run.recipe()
    run.run_id()  # refuses a run whose run.json is gone: resuming would write an anonymous one
    if not overrides:
        return recipe
    raw = apply_overrides(recipe.model_dump(mode="json"), overrides)
    source = f"{run.recipe_file} with --set {' '.join(overrides)}"
    resumed = check_to_train(validate_recipe(raw, source), source)  # unknown keys first
    for text in overrides:
        key = text.partition("=")[0].strip()
        if not key.startswith(RESUMABLE_KEYS):
            raise RunError(f"resume cannot change '{key}': it would change the steps already taken. "
                           f"Allowed: {RESUMABLE_TEXT}; start a new run with `dreamctl train` instead")
    return resumed


def check_resume(run: RunDir, overrides: list[str] | tuple[str, ...], world_size: int) -> Recipe:
    """The resumed recipe, after what resume_run refuses from the manifests alone: overrides that change
    the past, a damaged log, checkpoints gone, other data than the run's, a batch that does not split over
    the ranks."""
    recipe = resumed_recipe(run, overrides)
    run.metrics()  # a damaged log, which resume rewrites, is refused before anything changes
    run.check_reached(bool(list_checkpoints(run.checkpoints)))
    if recipe.data.path is not None:
        data = Path(recipe.data.path)
        if not data.exists():  # most often moved (to faster disk, another machine): preparing it again is not the fix
            raise DataError(f"the run's data folder {data} (data.path in {run.recipe_file}) is not there: if it "
                            f"moved, `dreamctl resume {run.root} --data NEW_FOLDER` (its content is checked "
                            "against the run's); if it is lost, prepare it again from the same source")
        run.check_data(data, "resuming on it would not continue the same run; restore the "
                             "run's data, or start a new run with `dreamctl train`")
    _check_batch(recipe, world_size)
    return recipe


def _check_own(run: RunDir, recipe: Recipe, path: Path, ckpt: Checkpoint, num_images: int) -> None:
    """Refuse a checkpoint that is not this run's, or does not agree with its recipe.yaml, before resume
    changes anything: its run id (checkpoints before it lack one), the settings resume cannot change,
    tensors that fit the network (built on the meta device: shapes without memory), and an optimizer
    state and data position that load as training will load them."""
    run.check_own(path, ckpt.run_id)
    ours, its = _settings(recipe), _settings(recipe_from_yaml(ckpt.recipe_yaml, f"{path} (its stored recipe)"))
    differ = sorted(k for k in ours.keys() | its.keys() if ours.get(k) != its.get(k))
    if differ:
        shown = "; ".join(f"{k}: {ours.get(k)!r} there, {its.get(k)!r} in the checkpoint" for k in differ[:3])
        raise CheckpointError(f"{run.recipe_file} and checkpoint {path} disagree on what resume cannot change ({shown}"
                              f"{'; ...' if len(differ) > 3 else ''}): restore recipe.yaml (resume --set changes only "
                              f"{', '.join(RESUMABLE_KEYS[:3])}, ...), or, if the checkpoint is another run's, move it "
                              f"out of {run.checkpoints}")
    with torch.device("meta"):
        network = build_model(recipe.model, recipe.data.resolution)
    check_fits(ckpt, path, network)
    try:
        torch.optim.AdamW(network.parameters()).load_state_dict(ckpt.optimizer)
        BatchOrder(num_images, recipe.train.batch_size, recipe.train.seed).load_state_dict(ckpt.data_position)
    except (KeyError, TypeError, ValueError, AttributeError) as err:  # what a dict of another shape raises there
        raise CheckpointError(f"checkpoint {path} holds an optimizer state or data position that does not load "
                              f"({type(err).__name__}: {err}): not a dreamctl training checkpoint, or one edited by "
                              f"hand; nothing was changed: move it out of {run.checkpoints}") from None
    check_moments_fit(ckpt, path, network)


def _settings(recipe: Recipe) -> dict[str, Any]:
    """The settings resume cannot change (not the name and description, which train nothing)."""
    return {k: v for k, v in flat_items(recipe).items() if k not in NOT_SETTINGS and not k.startswith(RESUMABLE_KEYS)}


def unrecorded_changes(run: RunDir, ckpt: Checkpoint, overrides: list[str] | tuple[str, ...]) -> list[str]:
    """`key=value` for each setting recipe.yaml holds that the checkpoint trained without, and that run.json records
    no change of at its step: a `resume --set` killed between writing recipe.yaml and recording the change, or an
    edit by hand. The resume records them with its own, so that compare's `resumed with` tells the whole story."""
    step = ckpt.step
    now, then = flat_items(run.recipe()), flat_items(recipe_from_yaml(ckpt.recipe_yaml, f"checkpoint step {step}"))
    recorded = {key for entry in run.info().get("resumes") or [] if entry.get("step") == step
                for key in override_keys(entry.get("set") or [])}
    skip = recorded | set(override_keys(overrides)) | set(NOT_SETTINGS)
    return [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in now.items()
            if k not in skip and then.get(k) != v]


def resume_run(run: RunDir, rt: Runtime, overrides: list[str] | tuple[str, ...] = (), *,
               on_event: OnEvent = ignore, should_stop: Callable[[], bool] = lambda: False) -> str:
    """Continue from the newest readable checkpoint (falling back past corrupt ones).

    A run stopped before its first checkpoint starts again from step 0: nothing was lost.
    """
    def check() -> tuple[Recipe, ImageSet]:  # what a node may lack (the run's data): its error, not a lost peer
        recipe = check_resume(run, overrides, rt.world_size)
        return recipe, _open_data(recipe, rt)
    recipe, images = on_every_rank(rt, check, f"checking {run.root} and opening its data")
    with ExitStack() as held:
        held.callback(images.close)  # the shard handles, when the split is read from disk
        def claim() -> None:
            _claim(run, held)
            atomic.sweep(run.checkpoints)  # writes cut short, whose writer is gone; the previous checkpoint is intact

        main_first(rt, claim)
        if list_checkpoints(run.checkpoints):
            # read onto the CPU on every rank; load_state_dict moves the weights to each rank's device
            path, ckpt = load_latest(run.checkpoints, map_location="cpu")
            _check_own(run, recipe, path, ckpt, len(images))  # before anything below renames, truncates or rewrites
            on_event("resume", {"step": ckpt.step, "path": str(path), **processes(rt),
                                "before": ckpt.processes or last_processes(run.info())})
        else:
            ckpt = None
            on_event("resume", {"step": 0, "path": "no checkpoint yet: starting from step 0"})
        step = ckpt.step if ckpt else 0
        if drift := unrecorded_changes(run, ckpt, overrides) if ckpt else []:
            warnings.warn(f"{run.recipe_file} differs from checkpoint step {step}'s recipe in {', '.join(drift)}, a "
                          f"change {run.run_file} does not record (a resume --set stopped before recording it, or an "
                          "edit): recorded now, with this resume", DreamctlWarning, stacklevel=3)
        last = total_steps(recipe, len(images))
        if last < step:  # on every rank alike
            raise RunError(f"with {' '.join(overrides) or 'its recipe'} the run would end at step {last}, before step "
                           f"{step} it has reached: resume cannot shorten a run (its recipe.yaml is left as it was)")
        barrier(rt)  # every rank has read its checkpoint before rank 0 renames corrupt ones

        def record() -> None:  # rank 0's; through main_first, so a full disk stops every rank at once
            set_aside_newer(run.checkpoints, step)
            # Whatever was drawn after `step`, also when an earlier resume renamed the checkpoints and was
            # killed before it moved these: the steps are trained again, maybe with other settings.
            if drawn := run.set_aside_drawn_after(step):
                warnings.warn(f"{len(drawn)} sample folder(s) and evaluation file(s) of the checkpoints after "
                              f"step {step} moved to {drawn[0].parent.parent}: the steps are trained again, "
                              "and sample or evaluate draws them anew", DreamctlWarning, stacklevel=3)
            run.truncate_metrics(after_step=step)
            # The recipe before the record of the change: a stop between the two leaves a recipe.yaml that trains
            # with the new values, which the next resume records (unrecorded_changes), never a record of a change
            # not made.
            if overrides:
                atomic.write_text(run.recipe_file, recipe_to_yaml(recipe))
            entry = {"step": step, "set": [*drift, *overrides], **processes(rt)}
            resumes = run.info().get("resumes", [])
            # Not for a finished run resumed as it was (it trains nothing), nor again for the same resume after
            # one stopped before its first checkpoint (a kill -9 loop left one entry per kill).
            if (drift or overrides or step < last) and resumes[-1:] != [entry]:
                run.update_info({"resumes": [*resumes, entry]})
        main_first(rt, record)
        return _run(run, recipe, rt, images, ckpt, on_event, should_stop)

