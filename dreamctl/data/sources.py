"""Where images come from: list a source into named items per split.

A listing is plain data (names and references), cheap to build and to send to worker
processes; decoding happens later, in `dreamctl.data.decode`. Three sources:

- `celeba`: ROOT/img_align_celeba/ (or ROOT/img_align_celeba.zip) with
  ROOT/list_eval_partition.txt (`000001.jpg 0`, 0/1/2 = train/valid/test).
- `folder`: any tree of JPEG/PNG/WebP files, split by a hash of the relative path.
- `synthetic`: drawn faces `0..count-1`, split into contiguous ranges.

`limit` keeps the first N items of each split in name order (the study trained on
the first 50,000 CelebA files).
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from dreamctl.errors import DataError, DreamctlWarning

SPLITS = ("train", "valid", "test")
# Face names have 7 digits: past them name order (what --limit and the shards follow) is no longer
# index order. Also what keeps the listing, built whole in memory, under about 1.7 GB.
MAX_SYNTHETIC_COUNT = 10**7
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
CELEBA_PARTITION = "list_eval_partition.txt"
CELEBA_FOLDER = "img_align_celeba"
CELEBA_ZIP = "img_align_celeba.zip"
CELEBA_HELP = (
    f"put CelebA's aligned images in ROOT/{CELEBA_FOLDER}/ (000001.jpg ...) or ROOT/{CELEBA_ZIP}, and "
    f"the partition file in ROOT/{CELEBA_PARTITION} (both from the CelebA site: 'Align&Cropped Images' "
    "and 'Eval'); dreamctl never downloads"
)


@dataclass(frozen=True)
class Skip:
    """An item left out, and why (listed in the manifest)."""

    split: str
    name: str
    reason: str


# An item is (name, ref): ref is a path relative to the root, a zip member name or a face index.
Item = tuple[str, "str | int"]


@dataclass(frozen=True)
class Listing:
    """What a source holds: items per split, plus what must be skipped before decoding."""

    kind: str  # celeba | folder | synthetic
    root: str | None  # absolute folder, or None for synthetic
    zip_path: str | None  # CelebA read from its zip
    seed: int  # synthetic faces' seed (0 otherwise)
    splits: dict[str, list[Item]]
    skipped: list[Skip] = field(default_factory=list)
    params: dict = field(default_factory=dict)  # limit, fractions, count: recorded as given

    def describe(self) -> dict:
        """The source as recorded in the manifest; the listing hash pins the exact item set."""
        h = hashlib.sha256()
        for split in SPLITS:
            for name, _ in self.splits[split]:
                h.update(f"{split}/{name}\n".encode())
        return {
            "kind": self.kind,
            "root": self.root,
            "container": "zip" if self.zip_path else ("folder" if self.root else None),
            "seed": self.seed if self.kind == "synthetic" else None,
            **self.params,
            "listing_sha256": h.hexdigest(),
        }


def _take(items: list[Item], limit: int | None) -> list[Item]:
    items = sorted(items)
    return items if limit is None else items[:limit]


def read_partition(path: Path) -> dict[str, str]:
    """`000001.jpg 0` lines -> {file name: split}."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (a Windows editor's) is not a name
    except UnicodeDecodeError as err:  # a download cut short, or another file saved under its name
        raise DataError(f"{path} is not a text file ({err.reason} at byte {err.start}); {CELEBA_HELP}") from err
    out: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            # cut: the line may be a whole file's worth of bytes
            raise DataError(f"{path}:{lineno}: expected '<file name> 0|1|2', got {line.strip()[:60]!r}")
        if parts[0] in first_line:  # which split would it be in? Train and test must not share an image.
            raise DataError(f"{path}:{lineno}: {parts[0]} is listed again (first on line {first_line[parts[0]]}); "
                            f"{CELEBA_HELP}")
        first_line[parts[0]] = lineno
        out[parts[0]] = SPLITS[int(parts[1])]
    if not out:
        raise DataError(f"{path} lists no images; {CELEBA_HELP}")
    empty = [split for split in SPLITS if split not in out.values()]
    if empty:  # CelebA's own lists all three; one cut short lists train only, a smaller dataset without a word
        warnings.warn(f"{path} lists no {' and no '.join(empty)} images ({len(out):,} in all; CelebA's lists "
                      "202,599, train then valid then test): cut short? prepared as listed", DreamctlWarning,
                      stacklevel=2)
    return out


def is_unsafe_member(name: str) -> bool:
    """A zip member whose path is absolute or climbs out ('..'): never read, never extracted."""
    posix = name.replace("\\", "/")
    return posix.startswith("/") or (len(posix) > 1 and posix[1] == ":") or ".." in PurePosixPath(posix).parts


def _celeba_zip_members(zip_path: Path) -> tuple[dict[str, str], list[Skip]]:
    """{file name: member} for the images in CelebA's zip, and its unsafe members."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{zip_path} is not a readable zip archive ({err}); re-download it or unpack it into {CELEBA_FOLDER}/") from err
    members: dict[str, str] = {}
    unsafe: list[Skip] = []
    for member in names:
        if is_unsafe_member(member):
            unsafe.append(Skip("-", member, "zip entry with an absolute or '..' path; not read"))
            continue
        parts = PurePosixPath(member).parts
        if (len(parts) == 2 and parts[0] == CELEBA_FOLDER) or len(parts) == 1:
            members[parts[-1]] = member
    return members, unsafe


def list_celeba(root: Path, limit: int | None = None) -> Listing:
    """CelebA's own layout: the image folder or its zip, and the partition file."""
    root = Path(root).resolve()
    folder, zip_path, partition = root / CELEBA_FOLDER, root / CELEBA_ZIP, root / CELEBA_PARTITION
    missing = [] if partition.is_file() else [str(partition)]
    if not folder.is_dir() and not zip_path.is_file():
        missing.append(f"{folder}/ (or {zip_path})")
    if missing:
        raise DataError(f"CelebA files missing: {', '.join(missing)}; {CELEBA_HELP}")
    split_of = read_partition(partition)
    skipped: list[Skip] = []
    if folder.is_dir():
        present = {p.name: f"{CELEBA_FOLDER}/{p.name}" for p in folder.iterdir() if p.is_file()}
        zip_used = None
    else:
        present, skipped = _celeba_zip_members(zip_path)
        zip_used = str(zip_path)
    splits: dict[str, list[Item]] = {s: [] for s in SPLITS}
    for name, split in split_of.items():
        splits[split].append((name, present.get(name, "")))
    for split in SPLITS:
        taken = _take(splits[split], limit)
        skipped += [Skip(split, name, "listed in the partition file but not found (an incomplete image folder?)")
                    for name, ref in taken if not ref]
        splits[split] = [(name, ref) for name, ref in taken if ref]
    return Listing("celeba", str(root), zip_used, 0, splits, skipped, {"limit": limit})


def hash_split(rel_path: str, valid_fraction: float, test_fraction: float) -> str:
    """A split from the relative path alone, so adding files never moves old ones."""
    u = int.from_bytes(hashlib.sha256(rel_path.encode()).digest()[:8], "big") / 2**64
    return "valid" if u < valid_fraction else "test" if u < valid_fraction + test_fraction else "train"


def _check_fractions(valid_fraction: float, test_fraction: float) -> None:
    # Written as what must hold: NaN fails every comparison, so it is refused rather than let through.
    if not (valid_fraction >= 0 and test_fraction >= 0 and valid_fraction + test_fraction < 1):
        raise DataError(
            f"--valid-fraction {valid_fraction} and --test-fraction {test_fraction} must be >= 0 and sum below 1"
        )


def list_folder(root: Path, valid_fraction: float = 0.05, test_fraction: float = 0.05, limit: int | None = None) -> Listing:
    """Every JPEG/PNG/WebP under root (hidden files and folders left out)."""
    _check_fractions(valid_fraction, test_fraction)
    root = Path(root).resolve()
    if not root.is_dir():
        state = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"image folder {root} {state}; pass --root with a folder of JPEG/PNG/WebP images")
    splits: dict[str, list[Item]] = {s: [] for s in SPLITS}
    skipped: list[Skip] = []
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not any(p.startswith(".") for p in rel.split("/")):
            if not _utf8(rel):  # the shards, the manifest and the split hash store names as UTF-8
                skipped.append(Skip("-", os.fsencode(rel).decode("utf-8", "backslashreplace"),  # its bytes, escaped
                                    "file name is not valid UTF-8; rename it"))
                continue
            splits[hash_split(rel, valid_fraction, test_fraction)].append((rel, rel))
    if not any(splits.values()):
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}")
    params = {"limit": limit, "valid_fraction": valid_fraction, "test_fraction": test_fraction}
    return Listing("folder", str(root), None, 0, {s: _take(v, limit) for s, v in splits.items()}, skipped, params)


def _utf8(name: str) -> bool:
    """False for a name the file system gave in another encoding (Python keeps such bytes as surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def synthetic_split_counts(count: int, valid_fraction: float, test_fraction: float) -> dict[str, int]:
    """Contiguous ranges: train first, then valid, then test."""
    _check_fractions(valid_fraction, test_fraction)
    if count <= 0:
        raise DataError(f"--count must be positive, got {count}")
    if count > MAX_SYNTHETIC_COUNT:
        raise DataError(f"--count {count} is above the {MAX_SYNTHETIC_COUNT:,} faces a synthetic source holds; "
                        f"pass --count {MAX_SYNTHETIC_COUNT} or less (CelebA has 202,599 images)")
    n_valid, n_test = round(count * valid_fraction), round(count * test_fraction)
    return {"train": count - n_valid - n_test, "valid": n_valid, "test": n_test}


def list_synthetic(
    count: int, seed: int = 0, valid_fraction: float = 0.05, test_fraction: float = 0.05, limit: int | None = None
) -> Listing:
    """Faces 0..count-1 of `seed`; face i depends only on (seed, i)."""
    splits: dict[str, list[Item]] = {}
    start = 0
    for split, n in synthetic_split_counts(count, valid_fraction, test_fraction).items():
        splits[split] = _take([(f"face-{i:07d}", i) for i in range(start, start + n)], limit)
        start += n
    params = {"limit": limit, "count": count, "valid_fraction": valid_fraction, "test_fraction": test_fraction}
    return Listing("synthetic", None, None, seed, splits, [], params)


def list_source(
    kind: str,
    root: Path | None = None,
    *,
    count: int | None = None,
    seed: int = 0,
    valid_fraction: float = 0.05,
    test_fraction: float = 0.05,
    limit: int | None = None,
) -> Listing:
    """The listing for `--source KIND` (celeba and folder need a root, synthetic a count)."""
    if limit is not None and limit <= 0:
        raise DataError(f"--limit must be positive, got {limit}")
    if kind == "synthetic":
        if count is None:
            raise DataError("--source synthetic needs --count N (how many faces to draw)")
        if root is not None:
            raise DataError("--source synthetic draws its faces and reads no --root; drop --root, or use "
                            "--source folder or celeba to read images")
        return list_synthetic(count, seed, valid_fraction, test_fraction, limit)
    if kind not in ("celeba", "folder"):
        raise DataError(f"--source {kind!r} is not one of celeba, folder, synthetic")
    if root is None:
        raise DataError(f"--source {kind} needs --root PATH (the folder holding the images)")
    if count is not None:
        raise DataError(f"--count is for --source synthetic; --source {kind} takes every image under --root "
                        "(--limit N keeps the first N of each split)")
    return list_celeba(root, limit) if kind == "celeba" else list_folder(root, valid_fraction, test_fraction, limit)
