"""What prepare-data may reuse of a folder it wrote before: the shards of an earlier run with the same
settings (an interrupted or finished one), or nothing with --overwrite; never a folder of other files."""

from __future__ import annotations

import json
import re
from pathlib import Path

from dreamctl import atomic
from dreamctl.data.shards import MANIFEST, PROGRESS, REFSTATS_DIR, parse_manifest
from dreamctl.errors import DataError

_OURS = re.compile(r"^((train|valid|test)-\d{5}\.h5|manifest\.json|progress\.json)$")  # our files


def _comparable(settings: dict) -> dict:
    # Where the source lives does not matter: its listing hash pins what it holds.
    return {**settings, "source": {k: v for k, v in settings["source"].items() if k != "root"}}


def _first_difference(old: object, new: object, key: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            if old.get(k) != new.get(k):
                return _first_difference(old.get(k), new.get(k), f"{key}.{k}" if key else k)
    return f"{key}: {old!r} there, {new!r} now"


def _ours(out: Path) -> list[Path]:
    """Our files in `out`, and the temporary files dreamctl.atomic writes them under."""
    return [p for p in out.iterdir() if _OURS.match(atomic.temp_target(p.name) or p.name)]


def check_ours(out: Path) -> None:
    """prepare-data writes into (or, with --overwrite, replaces) a prepared folder, an unfinished one, or
    one holding only our files, never a folder of other files (a run folder would get shards among its
    checkpoints). Writes nothing: it comes before the folder's lock."""
    if (out / MANIFEST).is_file() or (out / PROGRESS).is_file():
        return
    ours = _ours(out)
    if held := atomic.others_in(out, lambda p: p in ours or p.name == atomic.LOCK):
        raise DataError(f"--out {out} is not a prepared-data folder (it holds {held}); prepare-data writes only "
                        "into an empty folder or one it wrote: choose another --out")


def previous_shards(out: Path, settings: dict, overwrite: bool) -> dict[str, dict]:
    """Shard records of an earlier run into `out` with the same settings (a rerun keeps them); with
    --overwrite, none (our files removed); DataError for other settings. The caller has run check_ours."""
    ours = _ours(out)  # check_ours(out) has passed: the folder is ours
    # A killed run's, from any host: the folder's lock makes it this command's alone, so none is a write
    # in progress.
    for stale in [p for p in ours if atomic.temp_target(p.name)]:
        stale.unlink()
        ours.remove(stale)
    if overwrite:
        for p in sorted(ours, key=lambda p: p.name != MANIFEST):  # manifest first: never a stale "finished" folder
            p.unlink()
        # evaluate's reference statistics of the data replaced: keyed by its content hash they are never used
        # again, only kept (about 400 MB each at 50k images)
        for p in (out / REFSTATS_DIR).glob("refstats-*.npz"):
            p.unlink()
        return {}
    path = next((out / n for n in (MANIFEST, PROGRESS) if (out / n).is_file()), None)
    if path is None:
        if any(p.suffix == ".h5" for p in ours):
            raise DataError(f"{out} holds shards without a manifest or progress record; pass --overwrite or choose another --out")
        return {}
    try:
        record = json.loads(path.read_text())
        old = {k: record[k] for k in settings}
        old_settings = _comparable(old)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise DataError(f"{path} is not a dreamctl record ({err}); pass --overwrite or choose another --out") from err
    # A manifest's shard records are reused below: a field edited to null is refused here.
    manifest = parse_manifest(path, path.read_text()) if path.name == MANIFEST else None
    if old_settings != _comparable(settings):
        diff = _first_difference(old_settings, _comparable(settings))
        raise DataError(f"{out} was prepared with other settings ({diff}); pass --overwrite or choose another --out")
    if manifest is None:
        return record["shards"]
    return {
        sh.file: {"split": split, "count": sh.count, "sha256": sh.sha256,
                  "skipped": [[s.name, s.reason] for s in manifest.skipped if s.shard == sh.file]}
        for split, v in manifest.splits.items()
        for sh in v.shards
    }
