"""The repository's shell and Python scripts (benchmarks/, scripts/) import dreamctl names that exist: they run on
a lent GPU or a new user's machine, where an ImportError after minutes of training is the costliest way to learn
that a name moved."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for folder in ("benchmarks", "scripts") for p in (ROOT / folder).glob("*") if p.suffix in (".sh", ".py"))
IMPORT = re.compile(r"^\s*(?:.*?;\s*)?from (dreamctl[\w.]*) import ([\w, ]+)", re.MULTILINE)


def test_there_are_scripts_to_check():
    assert {"gpu.sh", "gpu_e2e.sh", "demo.sh"} <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_dreamctl_name_a_script_imports_exists(script: Path):
    for module, names in IMPORT.findall(script.read_text()):
        mod = importlib.import_module(module)
        for name in (n.split(" as ")[0].strip() for n in names.split(",") if n.strip()):
            assert hasattr(mod, name) or importlib.util.find_spec(f"{module}.{name}"), (
                f"{script.name}: `from {module} import {name}`: no such name")
