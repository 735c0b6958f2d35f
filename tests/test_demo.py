"""The demo's steps end to end at a very small size (scripts/demo.sh, as `make demo` runs it)."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_demo_runs_end_to_end_small(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "DEMO_OUT": str(out), "DEMO_STEPS": "3", "DEMO_EVAL": "8", "DEMO_COUNT": "300",
           "DEMO_GRID": "4", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert "What this demo can and cannot show" in report and "pixel_fd" in report
    assert "rectification NEVER ran" in report  # 3 steps end long before loss.start_epoch: said, not hidden
    assert "Samples: DDIM, 50 steps from t = 950 (`tiny`'s sample.t_start)," in report  # as sample.json says
    assert "treat the differences in the table as noise" in report and "another seed would" not in report
    for name in ("tiny-samples.png", "tiny-conservative-samples.png"):
        assert (out / name).stat().st_size > 1000
    assert any((out / "figures").glob("loss*.png"))
    for run in ("tiny", "tiny-conservative"):
        assert list((out / "runs" / run / "eval").glob("*.json"))
    # Rerun with more steps: the runs go on to DEMO_STEPS and the report says what they did; fewer is refused.
    more = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], cwd=REPO, env={**env, "DEMO_STEPS": "4"},
                          capture_output=True, text=True, timeout=600)
    assert more.returncode == 0, more.stderr[-3000:]
    assert "4 steps each" in (out / "report.md").read_text()
    fewer = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], cwd=REPO, env={**env, "DEMO_STEPS": "2"},
                           capture_output=True, text=True, timeout=600)
    assert fewer.returncode == 2 and "more than DEMO_STEPS=2" in fewer.stderr
