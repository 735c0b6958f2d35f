"""Fetching the metric weight files: the one place dreamctl downloads anything, called by `dreamctl weights
--download` alone (metrics/weights.py only looks). Each file is checked as weights.require would check it
before it takes the name: a truncated download or an HTML error page never becomes a weight file.
"""

from __future__ import annotations

import hashlib
import urllib.request
from collections.abc import Callable
from pathlib import Path

from dreamctl import atomic
from dreamctl.errors import WeightsError
from dreamctl.metrics import weights


def download(name: str, root: Path | None = None, *, opener: Callable | None = None,
             timeout: float = 60.0) -> Path:
    """Fetch `name` into the weights folder: temp file, hash check, atomic rename.

    A file without a published digest (Inception) must at least be a TorchScript archive, not an
    error page; its first-use record is dropped, so the new copy is recorded when it first loads."""
    dest = weights.path_of(name, root)  # an unknown name fails here
    entry = weights.REGISTRY[name]
    opener = opener or urllib.request.urlopen  # looked up at call time, so tests can forbid it
    if entry.bundled is not None:
        return weights.require(name, root)
    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    try:
        with atomic.atomic_path(dest) as tmp:  # renamed over dest only once the hash is right
            with opener(entry.url, timeout=timeout) as response, open(tmp, "wb") as f:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    h.update(chunk)
                    f.write(chunk)
            actual = h.hexdigest()
            if (want := weights.unexpected(name, tmp, actual)) is not None:
                raise WeightsError(f"download of {name} from {entry.url} is not the file (sha256 {actual}, "
                                   f"expected {want}); nothing was written to {dest}")
        weights.forget_first_use(name, dest)
    except OSError as err:
        raise WeightsError(f"could not download {name} from {entry.url} to {dest}: {err}; without internet access "
                           f"here, download it elsewhere and copy it to {dest} (`dreamctl weights` checks it)") from err
    return dest


def download_missing(root: Path | None = None, *, opener: Callable | None = None) -> list[Path]:
    """Download every file that is absent or corrupt; returns the paths written."""
    written = []
    for st in weights.status_all(root):
        if not st.intact and weights.REGISTRY[st.name].bundled is None:
            written.append(download(st.name, root, opener=opener))
    return written
