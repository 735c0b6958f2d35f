"""`dreamctl weights`: list the metric weight files; `--download` fetches what is missing."""

from __future__ import annotations

from typing import Annotated

import typer

from dreamctl.cli.common import console
from dreamctl.metrics import download as fetch
from dreamctl.metrics import weights


def _say(text: str) -> None:
    # soft_wrap: paths and URLs stay on one line, so they can be copied.
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def command(
    download: Annotated[bool, typer.Option("--download", help="Fetch missing or corrupt files (needs internet).")] = False,
    check: Annotated[bool, typer.Option("--check", help="Exit with code 2 when any file is missing or corrupt "
                                        "(for scripts: check before a long run whose evaluation needs them).")] = False,
) -> None:
    """List each metric weight file: address, sha256 (expected/actual), present and intact."""
    if download:
        for path in fetch.download_missing():
            _say(f"downloaded {path}")
    _say(f"weights folder: {weights.weights_dir()}  (set DREAMCTL_WEIGHTS to change it)")
    statuses = weights.status_all()
    for st in statuses:
        state = "ok" if st.verified else "ok: its sha256 is recorded at its first successful load" if st.intact \
            else ("CORRUPT" if st.present else "missing")
        _say(f"\n{st.name}  [{state}]  used by: {', '.join(st.used_by)}")
        _say(f"  address:  {st.url}")
        _say(f"  path:     {st.path}")
        _say(f"  expected: sha256 {st.expected}")
        _say(f"  actual:   sha256 {st.actual or '-'}")
    bad = [st.name for st in statuses if not st.intact]
    if bad:
        _say(f"\n{len(bad)} file(s) missing or corrupt: {', '.join(bad)}. Put each at its path, "
             "or run `dreamctl weights --download` where there is internet.")
    if check and bad:
        raise typer.Exit(2)
