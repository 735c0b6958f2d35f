"""A stand-in for the CLI that ablate runs (it writes run folders itself), and a spec to run it on."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from dreamctl.config import load_recipe, recipe_from_yaml, recipe_to_yaml
from dreamctl.data.shards import FORMAT
from dreamctl.experiments.execute import CommandResult
from dreamctl.inference import SampleOptions, sample_config
from dreamctl.protocol import SEED_RULE


class FakeCLI:
    """Stands in for `python -m dreamctl ...`: writes what train/resume/evaluate would write."""

    def __init__(self, fail: tuple[str, ...] = (), unfinished: tuple[str, ...] = ()) -> None:
        self.calls: list[list[str]] = []
        self.fail, self.unfinished = fail, unfinished

    def __call__(self, cmd: list[str]) -> CommandResult:
        assert cmd[:3] == [sys.executable, "-m", "dreamctl"]
        args = cmd[3:]
        self.calls.append(args)
        return getattr(self, args[0])(args[1:])

    def train(self, args: list[str]) -> CommandResult:
        opts = dict(zip(args[::2], args[1::2]))
        sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
        run_dir = Path(opts["--run-dir"])
        run_dir.mkdir(parents=True, exist_ok=True)
        recipe = load_recipe(opts["--recipe"], sets)
        (run_dir / "recipe.yaml").write_text(recipe_to_yaml(recipe))
        if run_dir.name in self.fail:
            return CommandResult(3, "step 1\nTraceback (most recent call last):\nRuntimeError: boom\n")
        status = "interrupted" if run_dir.name in self.unfinished else "finished"
        self._write(run_dir, status, recipe.loss.lambda_max)
        return CommandResult(0)

    def resume(self, args: list[str]) -> CommandResult:
        run_dir = Path(args[0])
        info = json.loads((run_dir / "run.json").read_text())
        self._write(run_dir, "finished", 0.0, start=info["step"])
        return CommandResult(0)

    def evaluate(self, args: list[str]) -> CommandResult:
        run_dir = Path(args[0])
        opts = dict(zip(args[1::2], args[2::2]))
        recipe = recipe_from_yaml((run_dir / "recipe.yaml").read_text(), "fake")
        asked = SampleOptions(sampler=opts.get("--sampler"), eta=float(opts["--eta"]) if "--eta" in opts else None,
                              steps=int(opts["--steps"]) if "--steps" in opts else None,
                              t_start=int(opts["--t-start"]) if "--t-start" in opts else None)
        sample = sample_config(recipe, asked, "fake")  # evaluate's own resolution of its flags
        steps = sample.steps
        protocol = {"checkpoint_step": json.loads((run_dir / "run.json").read_text())["step"], "ema": True,
                    "sampler": sample.sampler, "steps": steps, "eta": sample.eta, "t_start": sample.t_start,
                    "precision": "fp32", "num_generated": int(opts["--num"]),  # evaluate's on the CPU
                    "ref_split": "train", "ref_num": int(opts["--num"]), "seed": recipe.eval.seed,
                    "image_seeds": SEED_RULE, "clip_x0": sample.clip_x0,
                    "resize": "none", "feature_network": None}
        pid = f"{sample.sampler}{steps}-n{opts['--num']}"
        metrics = {m: {"value": 1.0 + steps / 100} for m in opts["--metrics"].split(",")}
        (run_dir / "eval").mkdir(exist_ok=True)
        (run_dir / "eval" / f"{pid}.json").write_text(json.dumps({"protocol_id": pid, "protocol": protocol, "metrics": metrics}))
        return CommandResult(0)

    @staticmethod
    def _write(run_dir: Path, status: str, lam: float, start: int = 0) -> None:
        step = 20 if status == "interrupted" else 40
        rows = [{"step": s, "loss": 1 / s, "loss_std": 1 / s, "loss_rect": 1.2 / s, "lambda_mean": lam * s / 40}
                for s in range(start + 5, step + 1, 5)]
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        (run_dir / "checkpoints" / f"step-{step:08d}.pt").write_bytes(b"fake")
        (run_dir / "run.json").write_text(json.dumps({"name": run_dir.name, "status": status, "step": step,
                                                      "images_seen": step * 64, "wall_time_s": 3.0}))


def write_spec(tmp_path: Path, **changes) -> Path:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    shard = {"file": "train-00000.h5", "count": 640, "sha256": "0" * 64}  # only the manifest is read
    (data / "manifest.json").write_text(json.dumps({"format": FORMAT, "preprocessing": {}, "image_shape": [32, 32, 3],
                                                    "counts": {"train": 640}, "skipped": [],
                                                    "splits": {"train": {"count": 640, "skipped": 0, "shards": [shard]}}}))
    spec = {"name": "lam", "base": "tiny-conservative", "data": str(data), "out": str(tmp_path / "out"),
            "set": ["train.epochs=4"], "grid": {"loss.lambda_max": [0.3, 0.5, 0.7]}, "seeds": [0],
            "evaluate": {"metrics": ["swd"], "num": 50}}
    spec.update(changes)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path
