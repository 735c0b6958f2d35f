"""prepare-data: a listing -> decoded, cropped, resized images -> HDF5 shards + manifest.

Shard k of a split holds the items [k*shard_size, (k+1)*shard_size) of that split's listing
(fewer images when some are skipped), so a shard is a fixed unit of work: an interrupted run
is finished by redoing only the shards that are not yet in the progress record. The record
(`progress.json`) is rewritten after each shard; the manifest is written last, after which
the record is removed. Workers decode chunks of a shard in a process pool (data/pool.py); the parent
alone writes files.
"""

from __future__ import annotations

import os
import time
import warnings
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager, closing, nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from dreamctl import __version__, atomic
from dreamctl.config.schema import MAX_RESOLUTION
from dreamctl.data import synthetic
from dreamctl.data.decode import RESIZE, UNREADABLE, Chunk, ChunkResult, close_zips, crop_box, open_image, parse_crop
from dreamctl.data.pool import decoded
from dreamctl.data.reuse import check_ours, previous_shards
from dreamctl.data.shards import (
    FORMAT,
    MANIFEST,
    PROGRESS,
    ShardInfo,
    read_manifest,
    shard_name,
    shard_problem,
    write_shard,
)
from dreamctl.data.sources import SPLITS, Listing, Skip
from dreamctl.errors import DataError, DreamctlWarning

CHUNK = 256  # items per worker task: big enough to amortise the pickling, small for a smooth bar
SYNTHETIC_RESIZE = "drawn at the resolution (supersampled, LANCZOS)"


@dataclass(frozen=True)
class Progress:
    """Reported after each chunk: items done (written or skipped) out of total."""

    done: int
    total: int
    shard: str | None = None  # set when this step finished a shard file


@dataclass(frozen=True)
class PrepareResult:
    out_dir: Path
    written: int  # images written by this run
    reused: int  # images in shards kept from an earlier run
    skipped: int  # items skipped, over the whole folder
    shards_written: int
    shards_reused: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


def resolve_crop(kind: str, crop: str | None) -> str:
    """The default crop per source: the study's center:178 for CelebA, the largest centred square otherwise."""
    if kind == "synthetic":
        if crop not in (None, "none"):
            raise DataError(f"--crop {crop} does not apply to --source synthetic: faces are drawn at the resolution")
        return "none"
    return parse_crop(crop or ("center:178" if kind == "celeba" else "center"))


def _settings(listing: Listing, crop: str, resolution: int, shard_size: int) -> dict:
    resize = SYNTHETIC_RESIZE if listing.kind == "synthetic" else RESIZE
    return {
        "format": FORMAT,
        "source": listing.describe(),
        "preprocessing": {"crop": crop, "resolution": resolution, "resize": resize},
        "shard_size": shard_size,
    }


def _check_crop_fits(listing: Listing, crop: str) -> None:
    """Refuse a crop larger than CelebA's images before any is decoded (it would skip every one).

    CelebA's aligned images all have one size, so the first one's header (no decoding) speaks for
    all. A folder's images differ in size and a smaller one is skipped by design: no early check."""
    first = next((item for split in SPLITS for item in listing.splits[split]), None)
    if listing.kind != "celeba" or crop in ("none", "center") or first is None:
        return
    name, ref = first
    try:
        with open_image(listing.root, listing.zip_path, str(ref)) as image:
            size = image.size
    except UNREADABLE:  # the decode skips it and says why
        return
    try:
        crop_box(crop, *size)
    except ValueError as err:
        raise DataError(f"--crop {crop} does not fit CelebA's images ({name}: {err}); "
                        "pass --crop center:178 (the default), center, ddim or none") from err


def _plan(listing: Listing, shard_size: int) -> list[tuple[str, int, list]]:
    """(split, shard index, items) of every shard: shard k takes items [k*size, (k+1)*size)."""
    plan = []
    for split in SPLITS:
        items = listing.splits[split]
        plan += [(split, k, items[i : i + shard_size]) for k, i in enumerate(range(0, len(items), shard_size))]
    return plan


def prepare_data(
    listing: Listing,
    out: Path,
    *,
    crop: str | None = None,
    resolution: int = 64,
    shard_size: int = 5000,
    workers: int | None = None,
    strict: bool = False,
    overwrite: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
) -> PrepareResult:
    """Write `listing` into `out` as shards + manifest; resumes an unfinished run."""
    if resolution < 1 or shard_size < 1:
        raise DataError(f"--resolution ({resolution}) and --shard-size ({shard_size}) must be positive")
    if resolution > MAX_RESOLUTION:
        raise DataError(f"--resolution {resolution} is above the {MAX_RESOLUTION} px this tool trains at; "
                        f"pass --resolution {MAX_RESOLUTION} or less (64 is the study's)")
    if listing.kind == "synthetic":  # before anything is written: a folder never holds a prepare that cannot finish
        synthetic.check(resolution, listing.seed)
    if strict and listing.skipped:
        raise _strict_error(listing.skipped[0])
    crop = resolve_crop(listing.kind, crop)
    _check_crop_fits(listing, crop)
    workers = workers or os.cpu_count() or 1
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; pass a folder")
    out.mkdir(parents=True, exist_ok=True)
    settings = _settings(listing, crop, resolution, shard_size)
    check_ours(out)
    with _held(out):
        return _prepare_into(out, listing, settings, workers, strict, overwrite, on_progress)


def _held(out: Path) -> AbstractContextManager:
    """The folder's lock while this command writes it: a second prepare-data on the same --out would take the
    first's half-written shard for a killed run's and delete it. A folder this process cannot write needs
    none (a rerun that finds every shard done writes nothing; any write fails with its own error)."""
    if not os.access(out, os.W_OK):
        return nullcontext()
    return atomic.exclusive(out, lambda pid: DataError(
        f"--out {out} is being prepared by another prepare-data (pid {pid}); wait for it to finish or stop it first"))


def _prepare_into(out: Path, listing: Listing, settings: dict, workers: int, strict: bool, overwrite: bool,
                  on_progress: Callable[[Progress], None] | None) -> PrepareResult:
    """prepare_data's work once its arguments are checked, under the folder's lock: keep the intact shards of
    an earlier run, write the others, then the manifest."""
    finished = _kept_shards(out, settings, overwrite, strict)
    plan = _plan(listing, settings["shard_size"])
    todo = [p for p in plan if shard_name(p[0], p[1]) not in finished]
    reused = sum(r["count"] for r in finished.values())
    if not todo and (out / MANIFEST).is_file():  # finished before, every shard intact
        return PrepareResult(out, 0, reused, len(read_manifest(out).skipped), 0, len(finished), 0.0)
    record = {**settings, "shards": {f: finished[f] for f in sorted(finished)}}
    # The progress record first, then the manifest goes (the folder is unfinished until it is back):
    # a stop in between leaves one record or the other, never a folder of shards with neither.
    atomic.write_json(out / PROGRESS, record, indent=1, sort_keys=True)
    (out / MANIFEST).unlink(missing_ok=True)

    total = sum(len(items) for _, _, items in plan)
    kept = sum(len(items) for split, index, items in plan if shard_name(split, index) in finished)

    def progress(done: int, shard: str | None) -> None:
        if on_progress:
            on_progress(Progress(kept + done, total, shard))

    start = time.perf_counter()
    written = _write_shards(out, listing, record, todo, workers, strict, progress)
    seconds = time.perf_counter() - start

    manifest = _manifest(listing, settings, record["shards"])
    _check_readable(manifest, listing)
    if empty := [s for s in SPLITS if s != "train" and not manifest["counts"][s]]:  # found out at evaluate, else
        verb = "holds" if len(empty) == 1 else "hold"
        warnings.warn(f"{out}: split {' and '.join(empty)} {verb} no image: `evaluate --ref {empty[0]}` would find "
                      f"nothing there; prepare with a larger --{empty[0]}-fraction (or more images) if you need it",
                      DreamctlWarning, stacklevel=3)
    atomic.write_json(out / MANIFEST, manifest, indent=1, sort_keys=True)
    (out / PROGRESS).unlink(missing_ok=True)
    return PrepareResult(out, written, reused, len(manifest["skipped"]), len(todo), len(finished), seconds)


def _kept_shards(out: Path, settings: dict, overwrite: bool, strict: bool) -> dict[str, dict]:
    """The records of an earlier run's shards that pass what --verify checks (a rerun keeps them)."""
    resolution = settings["preprocessing"]["resolution"]
    previous = previous_shards(out, settings, overwrite)
    kept = {f: r for f, r in previous.items()
            if shard_problem(ShardInfo(out / f, r["count"], r["sha256"]), (resolution, resolution, 3)) is None}
    skips = [Skip(r["split"], name, why) for f, r in sorted(kept.items()) for name, why in r.get("skipped", [])]
    if strict and skips:  # --strict promises that no file was left out, also of the shards a rerun keeps
        raise _strict_error(skips[0], "remove or replace it and prepare again with --overwrite, or ")
    return kept


def _write_shards(out: Path, listing: Listing, record: dict, todo: list[tuple[str, int, list]], workers: int,
                  strict: bool, progress: Callable[[int, str | None], None]) -> int:
    """Decode the shards of `todo` in the worker pool and write each, recording it in `record` as it lands;
    `progress(items done, finished shard or None)` after each chunk. Returns the images written."""
    pre = record["preprocessing"]
    chunks = [Chunk(listing.kind, listing.root, listing.zip_path, listing.seed, pre["crop"], pre["resolution"],
                    split, items[i : i + CHUNK]) for split, _, items in todo for i in range(0, len(items), CHUNK)]
    results, done, written = decoded(chunks, min(workers, len(chunks))), 0, 0
    with closing(results):
        for split, index, items in todo:
            parts = []
            for i in range(0, len(items), CHUNK):  # a shard's chunks come in order, one after another
                parts.append(next(results))
                done += len(parts[-1].names) + len(parts[-1].skipped)
                if i + CHUNK < len(items):
                    progress(done, None)
            written += _write(out, record, split, index, parts, strict)
            progress(done, shard_name(split, index))
    close_zips()
    return written


def _strict_error(item: Skip, fix: str = "") -> DataError:
    """--strict's error for the first file skipped; `fix` for those whose reason does not say it."""
    return DataError(f"{item.name}: {item.reason} (--strict); {fix}leave out --strict to skip such files "
                     "(manifest.json lists each one skipped)")


def _write(out: Path, record: dict, split: str, index: int, parts: list[ChunkResult], strict: bool) -> int:
    """Shard `index` of `split` from its decoded chunks, then its line in the progress record (so a
    crash after this point keeps it); returns the number of images written."""
    skipped = [s for p in parts for s in p.skipped]
    if strict and skipped:
        raise _strict_error(skipped[0], "remove or replace it, or ")  # an image that would not decode
    name = shard_name(split, index)
    images = np.concatenate([p.images for p in parts])
    digest = write_shard(out / name, images, [n for p in parts for n in p.names])
    record["shards"][name] = {"split": split, "count": len(images), "sha256": digest,
                              "skipped": [[s.name, s.reason] for s in skipped]}
    atomic.write_json(out / PROGRESS, record, indent=1, sort_keys=True)
    return len(images)


def _check_readable(manifest: dict, listing: Listing) -> None:
    """A split that lost every image is a wrong source or crop, not bad luck: no manifest for it."""
    for split in SPLITS:
        if manifest["splits"][split]["skipped"] and manifest["splits"][split]["count"] == 0:
            lost = [s for s in manifest["skipped"] if s["split"] == split]
            # Grouped by kind ("ValueError", "listed in the partition file ..."): a decoder's message names
            # its own object, so whole reasons rarely repeat. The most common kind is the one to fix.
            kinds = Counter(s["reason"].partition(":")[0] for s in lost)
            kind, count = kinds.most_common(1)[0]
            example = next(s for s in lost if s["reason"].partition(":")[0] == kind)
            raise DataError(f"no image of split {split} could be read; most common ({count} of {len(lost)}): "
                            f"{example['name']}: {example['reason']}; check --root (and --crop) against these files")
    if not any(manifest["counts"].values()):
        raise DataError(f"the {listing.kind} source at {listing.root} holds no readable image")


def _manifest(listing: Listing, settings: dict, shards: dict[str, dict]) -> dict:
    resolution = settings["preprocessing"]["resolution"]
    splits: dict[str, dict] = {}
    skipped = [asdict(s) | {"shard": None} for s in listing.skipped]
    for split in SPLITS:
        files = sorted(f for f, r in shards.items() if r["split"] == split)
        splits[split] = {
            "count": sum(shards[f]["count"] for f in files),
            "skipped": sum(len(shards[f]["skipped"]) for f in files) + sum(s.split == split for s in listing.skipped),
            "shards": [{"file": f, "count": shards[f]["count"], "sha256": shards[f]["sha256"]} for f in files],
        }
        skipped += [{"split": split, "name": n, "reason": r, "shard": f} for f in files for n, r in shards[f]["skipped"]]
    return {
        **settings,
        "dreamctl_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "image_shape": [resolution, resolution, 3],
        "dtype": "uint8",
        "counts": {s: splits[s]["count"] for s in SPLITS},
        "splits": splits,
        "skipped": skipped,
    }
