"""Checkpoint files: their names, writing and rotation, reading them back safely, and their checks.

A checkpoint is a dict of tensors and plain values only (`Checkpoint.to_dict`), so it loads with
`torch.load(weights_only=True)`: no pickled code runs. It is written to a temporary
file, flushed and renamed, so a process killed while writing leaves the previous one
intact; a truncated or corrupt newest file makes `load_latest` fall back to the one before.
"""

from __future__ import annotations

import errno
import hashlib
import lzma
import pickle
import re
import shutil
import warnings
import zipfile
import zlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn

import dreamctl
from dreamctl.atomic import atomic_path, unused_path
from dreamctl.errors import CheckpointError, CorruptCheckpoint, DreamctlWarning
from dreamctl.runtime import resume_command

CHECKPOINT = re.compile(r"^step-(\d{8})\.pt$")
REQUIRED = {"model", "ema", "optimizer", "step", "images_seen", "wall_time_s", "data_position", "recipe"}
_FIELD_TYPES = {"model": dict, "ema": dict, "optimizer": dict, "step": int, "images_seen": int,
                "wall_time_s": (int, float), "data_position": dict, "recipe": str}


@dataclass
class Checkpoint:
    """What a checkpoint holds: a TrainState, where the data order stands, and what the run needs to go on
    from it. The last four fields are absent (None) from files of earlier dreamctl versions."""

    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    step: int
    images_seen: int
    wall_time_s: float
    data_position: dict[str, int]  # BatchOrder.state_dict()
    recipe_yaml: str  # the recipe the weights were trained with ("recipe" on disk)
    # the loss meter's running sums: the first log record after a resume averages the same steps as a straight run's
    meter: dict[str, Any] | None = None
    run_id: str | None = None  # the run it belongs to: resume, sample and evaluate refuse another run's
    processes: dict[str, int] | None = None  # what wrote it: a resume on others continues only to rounding
    dreamctl_version: str | None = dreamctl.__version__

    def to_dict(self) -> dict[str, Any]:
        """The dict torch.save writes, keys in this order; None fields are left out, as older files lack them."""
        saved = {"model": self.model, "ema": self.ema, "optimizer": self.optimizer, "step": self.step,
                 "images_seen": self.images_seen, "wall_time_s": self.wall_time_s, "data_position": self.data_position,
                 "meter": self.meter, "recipe": self.recipe_yaml, "run_id": self.run_id, "processes": self.processes,
                 "dreamctl_version": self.dreamctl_version}
        return {k: v for k, v in saved.items() if v is not None}

    @classmethod
    def from_dict(cls, ckpt: Any, path: Path) -> Checkpoint:
        """The record of what torch.load read from `path`, once it is seen to be a training checkpoint: every
        field there, each of the kind to_dict writes, and the step its file name says. Whole files that fail
        stop the command (CheckpointError, not CorruptCheckpoint), and nothing moves."""
        missing = sorted(REQUIRED - set(ckpt)) if isinstance(ckpt, dict) else "everything"
        if missing:
            raise CheckpointError(f"checkpoint {path} lacks {missing}: not a dreamctl training checkpoint, or one "
                                  "written by another dreamctl; nothing was changed: move it out of checkpoints/")
        _check_fields(ckpt, path)
        return cls(**{k: ckpt[k] for k in REQUIRED - {"recipe"}}, recipe_yaml=ckpt["recipe"], meter=ckpt.get("meter"),
                   run_id=ckpt.get("run_id"), processes=ckpt.get("processes"),
                   dreamctl_version=ckpt.get("dreamctl_version"))


def _check_fields(ckpt: dict[str, Any], path: Path) -> None:
    """Each field of the kind to_dict writes, and the step its file name says (a checkpoint of another run
    copied in under a newer name would otherwise be taken for this run's newest)."""
    wrong = [k for k, kind in _FIELD_TYPES.items() if not isinstance(ckpt[k], kind) or isinstance(ckpt[k], bool)]
    wrong += [k for k in ("model", "ema") if k not in wrong and not all(
        isinstance(v, torch.Tensor) for v in ckpt[k].values())]
    if wrong:
        raise CheckpointError(f"checkpoint {path} holds {', '.join(wrong)} of the wrong kind: not a dreamctl training "
                              "checkpoint, or one edited by hand; nothing was changed: move it out of checkpoints/")
    if CHECKPOINT.match(path.name) and ckpt["step"] != step_of(path):
        raise CheckpointError(f"checkpoint {path} holds step {ckpt['step']}, not the step its name says: another "
                              "run's checkpoint, renamed? nothing was changed: move it out of checkpoints/")


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step-{step:08d}.pt"


def step_of(path: Path) -> int:
    """The step a checkpoint file was written at, from its name (checkpoint_path's inverse)."""
    match = CHECKPOINT.match(path.name)
    if match is None:
        raise ValueError(f"{path.name} is not a checkpoint file name (step-NNNNNNNN.pt)")
    return int(match.group(1))


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints in `folder`, oldest first (temporary files are never listed)."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if CHECKPOINT.match(p.name)), key=step_of)


def save_checkpoint(ckpt: Checkpoint, folder: Path, keep: int, first_to_go: Collection[int] = ()) -> Path:
    """Write atomically, then keep the newest and the `keep` - 1 newest of the others (only after the new one
    is safe), those of the steps `first_to_go` (stops' checkpoints) going first: a stop at step 26 pushed out
    the scheduled checkpoints of steps 10 and 20, points of a metrics-against-step curve."""
    folder.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(folder, ckpt.step)
    try:  # durable: on disk, rename included, before any older checkpoint goes
        with atomic_path(path, durable=True) as tmp, open(tmp, "wb") as f:  # closed, and its space freed, on error
            torch.save(ckpt.to_dict(), f)
    except (RuntimeError, OSError) as err:  # a full disk: OSError from our file handle, RuntimeError from torch's writer
        raise CheckpointError(f"checkpoint {path} could not be written ({_one_line(err)}{_space(folder)}); the older "
                              f"checkpoints are kept: free space on that disk (or fix access to it), then continue "
                              f"with `{resume_command(folder.parent)}`") from err
    *older, newest = list_checkpoints(folder)
    kept = sorted(older, key=lambda p: (step_of(p) not in first_to_go, step_of(p)))[max(len(older) - keep + 1, 0):]
    for old in set(older) - set(kept):
        old.unlink()
    return path


def _space(folder: Path) -> str:
    """What the disk has left beside the newest checkpoint's size: torch's writer reports a full disk as
    "unexpected pos" (the partial file is gone by now, so the free space is what the write had)."""
    try:
        free = shutil.disk_usage(folder).free
        newest = list_checkpoints(folder)[-1:]
        size = f", the newest checkpoint takes {_bytes(newest[0].stat().st_size)}" if newest else ""
    except OSError:  # the disk that failed the write may fail this too: the write's error is the one to report
        return ""
    return f"; {_bytes(free)} free on that disk{size}"


def _bytes(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def weights_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and bytes: which weights drew a sample folder's images.
    A step names no weights for sure: resume past a corrupt checkpoint writes that step again, maybe with
    other weights (an override), and `sample --out` folders are not set aside as the run's own are."""
    digest = hashlib.sha256()
    for name, tensor in state.items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{t.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy())
    return digest.hexdigest()


def zip_damage(path: Path) -> str | None:
    """What is wrong with a checkpoint's zip archive (torch.save's format): a member whose bytes fail
    its CRC, or no whole archive at all; None when every member is intact.

    A read that fails (EIO, a file server gone) says nothing about the bytes: it raises CheckpointError,
    since taken for damage it had resume set a good checkpoint aside and train its steps again."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except OSError as err:
        if err.errno not in (None, errno.EINVAL):  # EINVAL: the seek to a negative offset a damaged header names;
            # None: raised by a decompressor (bz2's "Invalid data stream"), not by the OS
            raise CheckpointError(f"checkpoint {path} could not be read from disk ({type(err).__name__}: "
                                  f"{err.strerror or err}); nothing was changed: retry, and if it fails again "
                                  "check the disk (or the file server) it is on") from err
        return f"not a whole zip archive: {_one_line(err)}"
    except (zipfile.BadZipFile, EOFError, ValueError, zlib.error, lzma.LZMAError) as err:
        return f"not a whole zip archive: {_one_line(err)}"
    except (NotImplementedError, RuntimeError) as err:  # a compression or encryption torch.save never uses
        return f"a damaged zip header: {_one_line(err)}"
    return f"{bad} fails its CRC check" if bad else None


def _one_line(err: BaseException) -> str:
    cause = " ".join(str(err).split()) or "empty or truncated file"
    return cause if len(cause) <= 200 else cause[:200] + "…"  # torch's messages run long


def read_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a training checkpoint. CorruptCheckpoint when its bytes are damaged (resume skips it);
    CheckpointError when they could not be read, or are whole but not a checkpoint of ours (it stops)."""
    return Checkpoint.from_dict(_load(path, map_location), path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """read_checkpoint's checkpoint as the dict on disk, every key kept (for tools that edit checkpoints)."""
    ckpt = _load(path, map_location)
    Checkpoint.from_dict(ckpt, path)
    return ckpt


def _load(path: Path, map_location: str | torch.device) -> Any:
    """What torch.load reads from a checkpoint file whose bytes are intact.

    The archive's CRCs are checked first (about 1 s per GB): torch.load checks none, so a changed
    byte inside a tensor would load without a word and a resume would carry it into every later
    checkpoint. Whole files that still cannot be used stop the command, and nothing moves.
    """
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as err:  # cannot be opened (permissions, I/O, a folder): says nothing about the contents
        raise CheckpointError(f"checkpoint {path} cannot be opened ({type(err).__name__}: {err.strerror or err}); "
                              "fix access to it and rerun") from err
    damage = zip_damage(path)
    if damage is not None:
        raise CorruptCheckpoint(f"checkpoint {path} cannot be read ({damage})")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # objects beyond tensors and plain types
        raise CheckpointError(f"checkpoint {path} holds objects that loading with weights_only=True refuses (not a "
                              "dreamctl checkpoint, or one written by another dreamctl or torch); nothing was changed: "
                              "resume it with the versions that wrote it") from err
    except (RuntimeError, MemoryError, OSError, EOFError) as err:  # an intact file that did not load: out of memory,
        # a read error, torch's own complaints; anything else is a bug of ours and keeps its traceback
        raise CheckpointError(f"checkpoint {path} is intact but did not load ({type(err).__name__}: {_one_line(err)}); "
                              "nothing was changed: fix the cause and rerun") from err
    return ckpt


def check_fits(ckpt: Checkpoint, path: Path, model: nn.Module, parts: tuple[str, ...] = ("model", "ema")) -> None:
    """Refuse weights that are not `model`'s (a checkpoint of another network) before any of them loads,
    naming the first tensor that differs. `model` may live on the meta device: only shapes are compared."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for part in parts:
        got = {k: tuple(v.shape) for k, v in getattr(ckpt, part).items()}
        if got != want:
            key = min(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
            _misfit(path, f"{part}.{key}", got.get(key), want.get(key))


def check_moments_fit(ckpt: Checkpoint, path: Path, model: nn.Module) -> None:
    """Refuse AdamW moments that are not shaped as `model`'s parameters, which load_state_dict would take
    without a word (one entry per parameter, in model.parameters() order; shapes only, as check_fits)."""
    shapes = [tuple(p.shape) for p in model.parameters()]
    for index, moments in ckpt.optimizer.get("state", {}).items():
        want = shapes[index] if isinstance(index, int) and 0 <= index < len(shapes) else None
        for name, value in moments.items():
            if isinstance(value, torch.Tensor) and value.ndim and tuple(value.shape) != want:
                _misfit(path, f"optimizer.state.{index}.{name}", tuple(value.shape), want)


def _misfit(path: Path, what: str, got: tuple[int, ...] | None, want: tuple[int, ...] | None) -> NoReturn:
    def shape(s: tuple[int, ...] | None) -> str:
        return "absent" if s is None else "x".join(map(str, s)) or "scalar"
    raise CheckpointError(f"checkpoint {path} does not fit the run's network ({what}: {shape(got)} in the checkpoint, "
                          f"{shape(want)} in the network): another run's checkpoint, or one edited by hand; nothing "
                          "was changed: move it out of checkpoints/")


def no_checkpoint(folder: Path) -> CheckpointError:
    """The error for a checkpoint folder that holds none (run.json's step says whether one was lost)."""
    if folder.exists() and not folder.is_dir():
        return CheckpointError(f"{folder} is a file, not the run's checkpoint folder: move it aside and "
                               "put the checkpoint files back in a folder of that name")
    return CheckpointError(f"no checkpoint in {folder}: the run has not written one yet (`dreamctl resume "
                           f"{folder.parent}` trains it on to its next)")


def load_latest(folder: Path, map_location: str | torch.device = "cpu") -> tuple[Path, Checkpoint]:
    """The newest checkpoint that loads; corrupt newer ones are skipped with a warning naming them (resume's way;
    sample and evaluate refuse a damaged newest: inference.choose_checkpoint)."""
    candidates = list_checkpoints(folder)
    if not candidates:
        raise no_checkpoint(folder)
    for path in reversed(candidates):
        try:
            return path, read_checkpoint(path, map_location)
        except CorruptCheckpoint as err:
            warnings.warn(f"{err}; skipping it for the next older checkpoint", DreamctlWarning, stacklevel=2)
    raise CheckpointError(f"every checkpoint in {folder} is unreadable ({', '.join(p.name for p in candidates)}): "
                          f"this run cannot continue; start a new one with `dreamctl train --run-dir NEW_FOLDER`")


def set_aside_newer(folder: Path, step: int) -> list[Path]:
    """Rename checkpoints newer than `step` (those load_latest skipped as corrupt) to `*.corrupt`.

    Kept for inspection, but out of the listing: rotation would otherwise count them among the
    newest and delete the good checkpoints written after the resume.
    """
    moved = []
    for path in list_checkpoints(folder):
        if step_of(path) > step:
            moved.append(path.rename(unused_path(path.with_name(path.name + ".corrupt"))))
    return moved
