"""Atomic file writes: a file under its final name is always complete.

Every file the project writes whole goes through `atomic_path`: write to a temporary name beside
the target, rename over it only once the content is complete, remove the temporary file on failure.
A process killed mid-write leaves the previous file (or none), never a truncated one. The one
file appended to, metrics.jsonl, is not rewritten: its reader drops a last line cut short.

What such a kill does leave is its temporary file, named `.NAME.PID@HOST.tmp`. `sweep` removes those
whose writer is gone: each write of a file first clears its own; a writer of many files to one
folder (sample PNGs) clears the folder once instead.

`durable` also survives a power cut: the content is fsynced before the rename and the folder
after it. The small records (run.json, manifests, evaluations) are always written durably, as
they say what exists; bulk writers (shards, sample PNGs) are not, and checkpoints opt in.
`file_sha256` is how what was written is checked later (shards, weights).
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dreamctl.errors import DreamctlError

LOCK = ".lock"
HOST = socket.gethostname()  # in temporary file names, and in run.json: where a run trains
_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)@(?P<host>[^@]+)\.tmp$")


@contextmanager
def atomic_path(path: Path, *, durable: bool = False, sweep_stale: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path` (fsynced first if `durable`).
    `sweep_stale=False` is for a writer of many files that sweeps their folder itself."""
    path = Path(path)
    if sweep_stale:
        sweep(path.parent, path.name)
    tmp = path.with_name(f".{path.name}.{os.getpid()}@{HOST}.tmp")
    try:
        with naming(path):
            yield tmp
            if durable:
                fsync(tmp)
            os.replace(tmp, path)
            if durable:
                fsync(path.parent)  # the rename itself is on disk
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """An OSError within that names no file (a write to a full disk), or names the hidden temporary file of
    `path`, names `path`, for the CLI's message. Only one with an errno: str() of an OSError without one would
    become "[Errno None] None: path"."""
    try:
        yield
    except OSError as err:
        ours = err.filename is None or temp_target(Path(str(err.filename)).name) == Path(path).name
        if ours and err.errno is not None and not isinstance(err, (ConnectionError, TimeoutError)):
            err.filename = str(path)
        raise


def sweep(folder: Path, name: str | None = None) -> list[Path]:
    """Remove the temporary files of writes cut short (of the file `name` only, if given) in `folder`.
    Only those whose writer is gone: written on this machine, by a process that no longer runs. Another
    rank's write in progress, or another node's on a shared disk, is left alone. Returns what went."""
    if not Path(folder).is_dir():
        return []
    removed = []
    for tmp in Path(folder).glob(f".{glob.escape(name)}.*.tmp" if name else ".*.tmp"):
        m = _TMP.match(tmp.name)
        if m and m["host"] == HOST and (name is None or m["name"] == name) and not _running(int(m["pid"])):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def temp_target(name: str) -> str | None:
    """The name of the file that `name` is a temporary file of (one of atomic_path's), else None."""
    m = _TMP.match(name)
    return m["name"] if m else None


def _running(pid: int) -> bool:
    if os.name != "posix":  # Windows' os.kill(pid, 0) would end the process, not look for it
        return True
    try:
        os.kill(pid, 0)  # signal 0: no signal, only the check that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        pass
    return True


def fsync(path: Path) -> None:
    """Its bytes (a folder: its entries) on disk when this returns, past a power cut."""
    fd = os.open(path, os.O_RDONLY)  # a folder can be opened read-only and fsynced too
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: Path, text: str) -> None:
    """Replace `path` with `text`, durably (these are the small files that record what exists)."""
    with atomic_path(path, durable=True) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data: Any, *, indent: int = 2, sort_keys: bool = False) -> None:
    write_text(path, json.dumps(data, indent=indent, sort_keys=sort_keys, default=str) + "\n")


def unused_path(path: Path) -> Path:
    """`path` if nothing is there, else the first free `path.1`, `path.2`, ...: where to set a file or
    folder aside without replacing one set aside before."""
    candidate, n = Path(path), 1
    while candidate.exists():
        candidate, n = Path(f"{path}.{n}"), n + 1
    return candidate


def others_in(folder: Path, ours: Callable[[Path], bool]) -> str | None:
    """The entries of `folder` that `ours` does not claim, named for an error message ("a, b/, c and 4
    more"); None when there are none. A command that writes into a folder refuses one holding these."""
    others = sorted(p.name + "/" * p.is_dir() for p in folder.iterdir() if not ours(p))
    if not others:
        return None
    return ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")


def check_folder_path(folder: Path, what: str) -> None:
    """DreamctlError when `folder` cannot become a folder because it, or a path above it, is a file.
    Writes nothing (check_writable, which starts with it, also creates the folder and tries a file in it)."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.absolute().parents) if p.exists())  # the root always exists
    if not existing.is_dir():
        where = f"{folder}" if existing == folder else f"{folder}: {existing}"
        raise DreamctlError(f"{what} {where} is a file, not a folder; choose another path (a folder is made if missing)")


PROBE_PREFIX = ".write-check-"  # check_writable's file, left behind only by a kill between its two calls


def is_probe(path: Path) -> bool:
    return path.name.startswith(PROBE_PREFIX)


def check_writable(folder: Path, what: str) -> None:
    """DreamctlError now, before any work, when no file can be written in `folder` (it is a file, lies
    under one, or is not writable): a long command must not fail at its end. Creates the folder."""
    check_folder_path(folder, what)
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=PROBE_PREFIX)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise DreamctlError(f"{what} {folder}: cannot write there ({err.strerror or err}); "
                            "choose a folder you can write to") from None


def check_output_file(path: Path, what: str, *, replaces: Callable[[Path], bool] | None = None) -> None:
    """The checks of check_writable for the file's folder, and that `path` is no folder, nor an existing
    file other than one `replaces(path)` recognises as this command's own earlier output (a rerun's):
    nothing else already written is overwritten."""
    path = Path(path)
    if path.is_dir():
        raise DreamctlError(f"{what} {path} is a folder; give a file path")
    if path.exists():
        if replaces is None:
            raise DreamctlError(f"{what} {path} exists; delete it or choose another path")
        if not replaces(path):
            raise DreamctlError(f"{what} {path} exists and is not an earlier output of this command; move it away "
                                "or choose another path")
    check_writable(path.parent, f"the folder of {what}")


@contextmanager
def exclusive(folder: Path, busy: Callable[[str], Exception]) -> Iterator[None]:
    """Hold an exclusive lock on `folder` (flock of its .lock file) for the block. The kernel releases it
    when the process dies, so a killed holder never leaves the folder locked. When another process holds
    it, raises `busy(pid)`, the pid the holder wrote into the lock file ("unknown" if it wrote none)."""
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for wait in (0.1, 0.3, 0.6, None):  # an in_use probe holds it for microseconds: not a reason to refuse
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if wait is None:
                    raise busy(os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown") from None
                time.sleep(wait)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def in_use(folder: Path) -> bool:
    """Whether a process holds `folder`'s lock (exclusive's) now: probed with a shared lock, let go at once.
    True where it cannot tell (no permission, no lock support): the caller then believes what it was told.
    Never for the holder itself: on NFS, closing the probe would let go of the holder's own lock."""
    try:
        fd = os.open(folder / LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:  # BlockingIOError: held; anything else: cannot tell
        return True
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()
