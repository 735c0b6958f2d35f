"""The metric weight files: where they live, what they hash to, which metrics need them.

One folder, `$DREAMCTL_WEIGHTS` (default `~/.cache/dreamctl/weights`). `require()` only looks; fetching is
metrics/download.py, which `dreamctl weights --download` alone calls. torch.hub and clean-fid trust any file
already in their caches and clean-fid downloads into /tmp without a hash check, so neither is used for fetching.
"""

from __future__ import annotations

import json
import os
import time
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dreamctl import atomic
from dreamctl.errors import DreamctlWarning, WeightsError

INCEPTION = "inception-2015-12-05.pt"
ALEXNET = "alexnet-owt-7be5be79.pth"
LPIPS_LINEAR = "lpips-v0.1-alex.pth"


@dataclass(frozen=True)
class WeightFile:
    """One file a metric needs. `sha256` is the full digest, `sha256_prefix` what is known
    when only a prefix is published; with neither, the digest is recorded on first use."""

    name: str
    url: str
    used_by: tuple[str, ...]  # the metrics that need it: said here alone (metrics/registry.py reads it)
    sha256: str | None = None
    sha256_prefix: str | None = None
    bundled: str | None = None  # "package/relative/path": shipped inside an installed package


REGISTRY: dict[str, WeightFile] = {
    w.name: w
    for w in (
        WeightFile(
            INCEPTION,
            "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
            ("fid", "kid", "is"),
        ),
        # torchvision names its files <name>-<first 8 hex of sha256>.pth and checks that prefix.
        WeightFile(
            ALEXNET,
            "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
            ("lpips",),
            sha256_prefix="7be5be79",
        ),
        # The calibrated linear layers ship inside lpips 0.1.4; digest taken from that wheel.
        WeightFile(
            LPIPS_LINEAR,
            "bundled with the lpips package (pip install lpips==0.1.4)",
            ("lpips",),
            sha256="df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
            bundled="lpips/weights/v0.1/alex.pth",
        ),
    )
}


@dataclass(frozen=True)
class WeightStatus:
    name: str
    path: Path
    url: str
    used_by: tuple[str, ...]
    expected: str  # full digest, "prefix <hex>", or the first-use record / "recorded on first use"
    actual: str | None  # sha256 of the file present, None when absent
    present: bool
    intact: bool  # hashes as expected; a file with no digest yet: at least a well-formed TorchScript archive
    verified: bool  # intact by its digest, not only by its layout


def weights_dir(root: Path | None = None) -> Path:
    """The weights folder: `root` if given, else $DREAMCTL_WEIGHTS, else ~/.cache/dreamctl/weights."""
    if root is not None:
        return Path(root)
    env = os.environ.get("DREAMCTL_WEIGHTS")
    if env and Path(env).is_file():
        raise WeightsError(f"DREAMCTL_WEIGHTS={env} is a file; point it at the folder that holds the weight files")
    return Path(env) if env else Path.home() / ".cache" / "dreamctl" / "weights"


def _entry(name: str) -> WeightFile:
    if name not in REGISTRY:
        raise WeightsError(f"unknown weight file {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def path_of(name: str, root: Path | None = None) -> Path:
    """Where `name` must be: inside the weights folder, or inside its package when bundled."""
    entry = _entry(name)
    if entry.bundled is not None:
        import importlib.util

        package, _, rel = entry.bundled.partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise WeightsError(f"{name} ships with the {package!r} package, which is not installed: {entry.url}")
        return Path(spec.origin).parent / rel
    return weights_dir(root) / name


_DIGESTS: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path) -> str:
    """sha256 of a file, memoised on (path, size, mtime) since the backbone is 233 MB."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = atomic.file_sha256(path)
    return _DIGESTS[key]


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def _recorded(path: Path) -> str | None:
    rec = _record_path(path)
    if not rec.exists():
        return None
    try:
        return str(json.loads(rec.read_text())["sha256"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise WeightsError(f"checksum record {rec} is unreadable ({err}); delete it (the next successful load of "
                           f"{path.name} records its sha256 again); check with `dreamctl weights`") from err


def _expected(entry: WeightFile, path: Path) -> str:
    if entry.sha256:
        return entry.sha256
    if entry.sha256_prefix:
        return f"prefix {entry.sha256_prefix}"
    recorded = _recorded(path)
    return recorded if recorded else "recorded on first use"


def _matches(entry: WeightFile, path: Path, actual: str) -> bool:
    if entry.sha256:
        return actual == entry.sha256
    if entry.sha256_prefix:
        return actual.startswith(entry.sha256_prefix)
    recorded = _recorded(path)
    # No digest known yet: check the layout at least (random bytes or an HTML error page fail);
    # the first successful load records the digest, and every later check compares against it.
    return _is_torchscript(path) if recorded is None else actual == recorded


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip holding <name>/constants.pkl and <name>/code/."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    # is_zipfile reads the end record alone: the central directory after it may still be damaged (BadZipFile),
    # claim a zip version torch never writes (NotImplementedError) or name an entry in bytes that are not UTF-8.
    except (zipfile.BadZipFile, NotImplementedError, UnicodeDecodeError):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _has_digest(entry: WeightFile, path: Path) -> bool:
    return entry.sha256 is not None or entry.sha256_prefix is not None or _recorded(path) is not None


def unexpected(name: str, path: Path, actual: str) -> str | None:
    """None when `actual`, the sha256 of the file at `path`, is what `name` must be; else what was expected
    (without a digest yet: the layout, as for a file found)."""
    entry = _entry(name)
    if _matches(entry, path, actual):
        return None
    return _expected(entry, path) if _has_digest(entry, path) else "a TorchScript archive"


def forget_first_use(name: str, path: Path) -> None:
    """Drop the first-use record of a file without a published digest: a new copy is recorded at its first load."""
    entry = _entry(name)
    if not entry.sha256 and not entry.sha256_prefix:
        _record_path(path).unlink(missing_ok=True)


def status(name: str, root: Path | None = None) -> WeightStatus:
    """Is `name` present, and does it hash to what it should?"""
    entry = _entry(name)
    path = path_of(name, root)
    present = path.is_file()
    actual = sha256_file(path) if present else None
    intact = present and actual is not None and _matches(entry, path, actual)
    verified = intact and _has_digest(entry, path)
    return WeightStatus(name, path, entry.url, entry.used_by, _expected(entry, path), actual, present, intact,
                        verified)


def status_all(root: Path | None = None) -> list[WeightStatus]:
    return [status(name, root) for name in REGISTRY]


def _how_to_fix(st: WeightStatus, bundled: bool) -> str:
    if bundled:
        return "reinstall it with `pip install --force-reinstall lpips==0.1.4`; check with `dreamctl weights`"
    return (
        f"download {st.url} and put it at {st.path} "
        f"(or run `dreamctl weights --download` where there is internet); check with `dreamctl weights`"
    )


def require(name: str, root: Path | None = None) -> Path:
    """The path of an intact `name`, or WeightsError saying which file, from where, to where."""
    st = status(name, root)
    bundled = _entry(name).bundled is not None
    if not st.present:
        check = ("no published sha256, recorded on first use" if st.expected == "recorded on first use"
                 else f"sha256 {st.expected}")
        raise WeightsError(f"weight file {name} is missing (needed by {', '.join(st.used_by)}; {check}): "
                           f"{_how_to_fix(st, bundled)}")
    if not st.intact:
        what = (f"sha256 {st.actual} does not match expected {st.expected}" if _has_digest(_entry(name), st.path)
                else "not a TorchScript archive (truncated, or another file under its name)")
        raise WeightsError(f"weight file {name} at {st.path} is corrupt: {what}; delete it, then "
                           f"{_how_to_fix(st, bundled)}")
    return st.path


def record_first_use(name: str, root: Path | None = None) -> str:
    """Store the digest of a file that has no published one, once it has loaded correctly.

    Later `require()` calls compare against this record, so a file that changes afterwards
    is reported corrupt. Returns the digest."""
    path = require(name, root)
    digest = sha256_file(path)
    rec = _record_path(path)
    if _recorded(path) is None:
        try:
            atomic.write_json(rec, {"file": name, "sha256": digest, "size": path.stat().st_size,
                                    "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1)
        except OSError as err:  # a shared, read-only weights folder: the metric is still right, only unguarded
            warnings.warn(f"cannot record the sha256 of {path} in {rec.name} ({err.strerror or err}); it is used "
                          f"now, but a later change to it will not be noticed until a load with write access to "
                          f"{path.parent} records it", DreamctlWarning, stacklevel=2)
    return digest


def weights_for(metrics: Sequence[str]) -> list[str]:
    """The weight files the given metrics need, each once, in registry order."""
    return [name for name, f in REGISTRY.items() if any(m in f.used_by for m in metrics)]


def check_weights(metrics: Sequence[str], root: Path | None = None) -> list[WeightsError]:
    """Every weight problem the metrics would hit, so a strict CLI can stop before sampling."""
    errors = []
    for name in weights_for(metrics):
        try:
            require(name, root)
        except WeightsError as err:
            errors.append(err)
    return errors
