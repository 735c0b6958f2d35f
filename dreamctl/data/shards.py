"""HDF5 shards and the manifest: the on-disk format of a prepared folder.

    DIR/<split>-NNNNN.h5   dataset `images` uint8 (N, H, W, 3), dataset `names` (source names)
    DIR/manifest.json      source, preprocessing, counts, sha256 of every shard, skipped files
    DIR/cache/             evaluate's reference statistics (refstats-*.npz), keyed by the content hash

Every file is written under a temporary name and renamed, so a file with its final name
is always complete. The manifest is written last: a folder without one is unfinished.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, ValidationError, field_validator

from dreamctl.atomic import atomic_path, file_sha256
from dreamctl.data.sources import IMAGE_SUFFIXES
from dreamctl.errors import DataError

MANIFEST = "manifest.json"
PROGRESS = "progress.json"  # written while a prepare runs, replaced by the manifest at its end
REFSTATS_DIR = "cache"
FORMAT = "dreamctl-shards/1"


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.h5"


def write_shard(path: Path, images: np.ndarray, names: list[str]) -> str:
    """Write a shard atomically and return its sha256 (same data -> same bytes)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or len(names) != len(images):
        raise ValueError(f"shard {path.name}: images {images.shape} {images.dtype} and {len(names)} names do not match")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            # Contiguous and uncompressed: the loader reads whole shards, and decompression
            # would cost more than the disk read of 12 KB per 64x64 image.
            f.create_dataset("images", data=images)
            f.create_dataset("names", data=np.array(names, dtype=object), dtype=h5py.string_dtype())
        digest = file_sha256(tmp)
    return digest


def manifest_path(data_dir: Path) -> Path:
    return Path(data_dir) / MANIFEST


def _no_manifest(data_dir: Path) -> str:
    """Why a folder has no manifest, and the fix that works for that case."""
    if data_dir.is_file():
        return f"{data_dir} is a file; give the prepared data folder (the one holding {MANIFEST})"
    if (data_dir / PROGRESS).is_file():
        return f"{data_dir} is an unfinished prepare (no {MANIFEST} yet); re-run the same prepare-data command"
    if (data_dir / "run.json").is_file():  # a run folder given for its data
        return (f"{data_dir} is a run folder, not prepared data: give the folder its recipe.yaml names as data.path "
                "(a folder made by prepare-data)")
    if data_dir.is_dir() and any(data_dir.glob("*.h5")):
        return (f"{data_dir} holds shards but no {MANIFEST}; prepare it again with the prepare-data command that "
                f"made it, adding --overwrite")
    if data_dir.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in data_dir.iterdir()):
        return (f"{data_dir} is a folder of images, not prepared data: prepare it with `dreamctl prepare-data "
                f"--source folder --root {data_dir} --out NEW_FOLDER` and give NEW_FOLDER instead")
    return (f"{manifest_path(data_dir)} not found: give a folder made by prepare-data, or make one with "
            f"`dreamctl prepare-data --source synthetic|celeba|folder ... --out {data_dir}` (see its --help)")


class _Model(BaseModel):
    # strict: "16" is not 16 nor true 1 (an edited file is refused, not coerced); extra: the
    # fields nothing reads (source, created, ...) may change between versions; frozen: it is a record.
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class ShardRecord(_Model):
    file: str
    count: NonNegativeInt
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class SplitRecord(_Model):
    count: NonNegativeInt
    skipped: NonNegativeInt
    shards: list[ShardRecord]


class SkippedItem(_Model):
    split: str
    name: str
    reason: str
    shard: str | None


class Manifest(_Model):
    """A prepared folder's manifest.json: every field dreamctl reads (training, evaluation, a re-run of
    prepare-data); the others (source, created, ...) are kept as extra attributes."""

    format: Literal["dreamctl-shards/1"]
    preprocessing: dict
    image_shape: tuple[PositiveInt, PositiveInt, Literal[3]]
    dtype: Literal["uint8"] = "uint8"  # what every shard holds (a manifest without the field says nothing else)
    counts: dict[str, NonNegativeInt]
    splits: dict[Literal["train", "valid", "test"], SplitRecord]
    skipped: list[SkippedItem]

    @property
    def resolution(self) -> int:
        return self.image_shape[0]

    @field_validator("image_shape")
    @classmethod
    def _square(cls, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        # Training and sampling take the side from image_shape[0]: shards of another shape would pass
        # --verify (they match the manifest) and fail only inside the model.
        if shape[0] != shape[1]:
            raise ValueError(f"height {shape[0]} and width {shape[1]} differ, and prepared images are square")
        return shape


def parse_manifest(path: Path, text: str) -> Manifest:
    """The manifest in `text`; DataError naming the first field that is missing, of the wrong type or out of range."""
    try:
        return Manifest.model_validate_json(text)  # JSON mode: an array is a valid tuple
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(top level)"
        got = "" if first["type"] == "missing" else f" (got {json.dumps(first['input'])[:40]})"
        raise DataError(f"{path}: field {field}: {first['msg']}{got}; the manifest was "
                        "edited or damaged: restore manifest.json, or re-run prepare-data with --overwrite") from err


def read_manifest(data_dir: Path) -> Manifest:
    """The manifest of a finished folder; DataError when it is absent, unreadable or not well-formed."""
    data_dir = Path(data_dir)
    path = manifest_path(data_dir)
    if not path.is_file():
        raise DataError(_no_manifest(data_dir))
    try:
        text = path.read_text()
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not valid JSON ({err}); re-run prepare-data with --overwrite") from err
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise DataError(f"{path} is not a {FORMAT} manifest; re-run prepare-data with --overwrite")
    return parse_manifest(path, text)


def manifest_sha256(manifest: Manifest) -> str:
    """A stable hash of the content: preprocessing and every shard's hash and count.

    Leaves out where the source lived and when the folder was written, so the same data
    prepared twice (or moved) hashes the same; caches and run records key on it.
    """
    content = {
        "format": manifest.format,
        "preprocessing": manifest.preprocessing,
        "image_shape": list(manifest.image_shape),
        "splits": {s: [[sh.file, sh.count, sh.sha256] for sh in v.shards] for s, v in manifest.splits.items()},
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    count: int
    sha256: str


def split_count(data_dir: Path, split: str, manifest: Manifest | None = None) -> int:
    """Images in a prepared split, from the manifest alone (read here unless given; no shard is opened)."""
    manifest = read_manifest(data_dir) if manifest is None else manifest
    return sum(s.count for s in split_shards(data_dir, manifest, split))


def limited(total: int, limit: int | None, split: str, data_dir: Path | str) -> int:
    """The images training takes from a split of `total` under data.limit; DataError for an empty split
    or a limit outside 1..total."""
    if total == 0:
        raise DataError(f"split {split} of {data_dir} holds no images; prepare it with a non-zero fraction")
    if limit is not None and not 0 < limit <= total:
        raise DataError(f"data.limit {limit} is outside 1..{total}, the size of split {split} of {data_dir}; "
                        "lower it with --set data.limit=N")
    return limit or total


def split_size(data_dir: Path | str, split: str = "train", limit: int | None = None,
               manifest: Manifest | None = None) -> int:
    """How many images a split gives under `limit` (what training opens), from the manifest alone."""
    data_dir = Path(data_dir)
    return limited(split_count(data_dir, split, manifest), limit, split, data_dir)


def split_shards(data_dir: Path, manifest: Manifest, split: str) -> list[ShardInfo]:
    if split not in manifest.splits:
        raise DataError(f"{manifest_path(data_dir)} has no split {split!r}; it has {', '.join(manifest.splits)}")
    shards = manifest.splits[split].shards  # type: ignore[index]  # a split name checked just above
    for s in shards:  # a manifest names files inside its own folder, never a path that leads out of it
        if Path(s.file).name != s.file:
            raise DataError(f"{data_dir}/manifest.json names shard {s.file!r} outside the folder; "
                            "the manifest is corrupt: prepare the data again")
    return [ShardInfo(Path(data_dir) / s.file, s.count, s.sha256) for s in shards]


def shard_error(shard: Path, what: str) -> DataError:
    return DataError(
        f"shard {shard} {what}; check the folder with `dreamctl prepare-data --verify {shard.parent}`, "
        "then re-run the same prepare-data command: it rebuilds only the shards that fail"
    )


def shard_problem(shard: ShardInfo, image_shape: tuple[int, int, int]) -> str | None:
    """What is wrong with a shard against the manifest (its datasets, then its sha256), or None.

    Hashing costs about 1.5 s of one core for all of CelebA's training split at 64 px: training
    and evaluation pay it so they never run on images other than the ones prepared."""
    if not shard.path.is_file():
        return "is missing"
    try:
        with h5py.File(shard.path, "r") as f:
            images, names = f.get("images"), f.get("names")
            if images is None or names is None:
                return "lacks its `images` or `names` dataset"
            expected = (shard.count, *image_shape)
            if images.shape != expected or images.dtype != np.uint8 or names.shape != (shard.count,):
                return f"holds {images.shape} {images.dtype}, the manifest says {expected} uint8"
    except OSError as err:  # h5py's error for a truncated or damaged file
        return f"cannot be read ({err})"
    if (digest := file_sha256(shard.path)) != shard.sha256:
        return (f"does not hash to the sha256 in the manifest ({digest[:16]}... is not {shard.sha256[:16]}...: "
                "changed or damaged since it was prepared)")
    return None


def check_shard(shard: ShardInfo, image_shape: tuple[int, int, int]) -> None:
    if (problem := shard_problem(shard, image_shape)) is not None:
        raise shard_error(shard.path, problem)


def read_names(path: Path) -> list[str]:
    with h5py.File(path, "r") as f:
        return [n.decode() if isinstance(n, bytes) else n for n in f["names"][()]]


def verify(data_dir: Path) -> list[str]:
    """Check every shard listed in the manifest, hash included; one line per problem (empty when sound)."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    shards = [shard for split in manifest.splits for shard in split_shards(data_dir, manifest, split)]
    return [f"{shard.path} {problem}" for shard in shards
            if (problem := shard_problem(shard, manifest.image_shape)) is not None]
