"""Run folders written by hand, as docs/run-folder.md describes them, for the compare and plot tests."""

from __future__ import annotations

import json
from pathlib import Path

from dreamctl.config import load_recipe, recipe_to_yaml

P50 = "ddim50-eta0-ema-n500-train500-clean"
P10 = "ddim10-eta0-ema-n500-train500-clean"


def protocol(steps: int, checkpoint: int) -> dict:
    return {"checkpoint_step": checkpoint, "ema": True, "sampler": "ddim", "steps": steps, "eta": 0.0,
            "t_start": None, "num_generated": 500, "seed": 0, "ref_split": "train", "ref_num": 500,
            "resize": "clean: PIL bicubic to 299", "feature_network": "inception-2015-12-05"}


def write_eval(run_dir: Path, pid: str, steps: int, checkpoint: int, metrics: dict, file: str | None = None,
               **extra: object) -> None:
    """`extra`: protocol fields outside the id (ref_manifest_sha256, image_size)."""
    path = run_dir / "eval" / (file or f"{pid}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"protocol_id": pid, "protocol": protocol(steps, checkpoint) | extra, "metrics": metrics}
    path.write_text(json.dumps(record))


def write_run(root: Path, name: str, overrides: tuple[str, ...] = (), recipe: str = "tiny-conservative",
              step: int = 200, status: str = "finished", info: dict | None = None) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    r = load_recipe(recipe, list(overrides))
    (run_dir / "recipe.yaml").write_text(recipe_to_yaml(r))
    (run_dir / "run.json").write_text(json.dumps({
        "name": name, "recipe": r.name, "status": status, "world_size": 1, "device": "cpu", "step": step,
        "epoch": 4, "images_seen": step * r.train.batch_size, "wall_time_s": 81.5, "img_per_s": 157.0, "peak_memory_bytes": 0,
        **(info or {})}))
    rows = []
    for s in range(25, step + 1, 25):
        row = {"step": s, "epoch": s // 50, "images_seen": s * r.train.batch_size, "loss": 1.0 / (1 + s / 50) + 0.01 * r.train.seed}
        if r.loss.kind == "dream_conservative":
            row.update(loss_std=row["loss"] * 0.9, loss_rect=row["loss"] * 1.1, lambda_mean=0.25 * min(s / step, 1.0))
        rows.append(json.dumps(row))
    (run_dir / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    return run_dir


def seeded_runs(tmp_path: Path) -> list[Path]:
    """lambda_max 0.3 over seeds 0, 1, 2 (FID 10, 12, 14) and lambda_max 0.5 with seed 0 (FID 20)."""
    dirs = []
    for seed, fid in zip((0, 1, 2), (10.0, 12.0, 14.0)):
        d = write_run(tmp_path, f"lambda_max-0.3_seed-{seed}", ("loss.lambda_max=0.3", f"train.seed={seed}"))
        write_eval(d, P50, 50, 200, {"fid": {"value": fid}, "swd": {"value": fid / 10}})
        dirs.append(d)
    d = write_run(tmp_path, "lambda_max-0.5_seed-0", ("loss.lambda_max=0.5", "train.seed=0"))
    write_eval(d, P50, 50, 200, {"fid": {"value": 20.0}, "swd": {"value": 2.0}})
    return dirs + [d]
