"""The Makefile's reproduce targets, run with a stand-in dreamctl that logs what it is asked to do."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_a_reproduce_target_goes_on_with_a_run_it_already_started(tmp_path: Path) -> None:
    """A stop (a scheduler's time limit) left the run folder: running the target again was refused as
    'already holds a run' after hours of training; it now resumes it (research review #4)."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    log = tmp_path / "calls.log"
    fake = bin_dir / "dreamctl"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    fake.chmod(0o755)
    (bin_dir / ".installed").touch()
    os.utime(bin_dir / ".installed", (2**31, 2**31))  # newer than pyproject.toml: make installs nothing
    runs = tmp_path / "runs"

    def make() -> list[str]:
        log.unlink(missing_ok=True)
        subprocess.run(["make", "-s", "-C", str(ROOT), "reproduce-dream", f"VENV={tmp_path / 'venv'}",
                        f"RUNS={runs}", "DATA=data/x"], check=True, capture_output=True, text=True)
        return log.read_text().splitlines()

    evaluate = f"evaluate {runs}/dream --num 5000 --ref train --strict-weights"
    assert make() == ["weights --check", f"train --recipe dream --data data/x --run-dir {runs}/dream", evaluate]
    (runs / "dream").mkdir(parents=True)
    (runs / "dream" / "recipe.yaml").write_text("the run's\n")  # what train writes first
    assert make() == ["weights --check", f"resume {runs}/dream --data data/x", evaluate]
