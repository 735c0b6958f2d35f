"""dreamctl bench: structure, forward-call counts and the fairness of the naive baseline.

Nothing here asserts a speed: timings from tests are not performance claims.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from dreamctl import bench
from dreamctl.config import load_recipe
from dreamctl.runtime import Runtime

# A 16 px, 8-channel UNet: every code path of the benchmark in well under a second per step.
SMALL = ["model.channels=8", "model.channel_mult=[1,2]", "model.attention_resolutions=[8]", "model.num_heads=2",
         "model.groups=4", "model.time_features=16", "model.num_res_blocks=1", "data.resolution=16",
         "train.batch_size=4"]
CPU = Runtime(torch.device("cpu"), "fp32")


@pytest.fixture(scope="module")
def train_result():
    return bench.run_bench("train", load_recipe("tiny", SMALL), CPU, rounds=2, warmup=1)


def test_train_rows_count_forward_calls(train_result):
    rows = train_result["train"]["rows"]
    assert list(rows) == [*bench.KINDS, bench.NAIVE]
    calls = {name: row["forward_calls"] for name, row in rows.items()}
    assert calls == {"standard": 1, "dream": 2, "dream_conservative": 2, "input_perturbation": 1, bench.NAIVE: 3}
    for row in rows.values():
        assert row["rounds"] == 2
        assert row["step_time_ratio"] > 0 and row["img_per_s"] > 0
        assert row["step_ms_min"] <= row["step_ms_median"] <= row["step_ms_max"]
        assert row["peak_memory_bytes"] is None and row["peak_memory_ratio"] is None  # CPU: not measured
    assert rows["standard"]["step_time_ratio"] == 1.0


def test_train_result_compares_naive_and_skips_gpu_sections(train_result):
    nv = train_result["train"]["naive_vs_ours"]
    assert nv["ours_over_naive_step_time"] > 0 and nv["ours_over_naive_peak_memory"] is None
    assert "skipped" in train_result["variants"]
    assert train_result["machine"]["device_type"] == "cpu"
    targets = train_result["targets"]
    assert len(targets) == 3 and all(t["value"] > 0 and t["pass"] in (True, False) for t in targets)
    assert all(t["conditions_met"] for t in targets)  # recipe tiny on the CPU
    json.dumps(train_result)  # JSON-ready as it is


def test_naive_baseline_computes_the_same_loss_and_gradients():
    from dreamctl.diffusion.losses import compute_loss
    from dreamctl.models import build_model

    recipe = load_recipe("tiny", SMALL)
    torch.manual_seed(0)
    model = build_model(recipe.model, 16)
    for p in model.parameters():  # leave the zero init, so the rectified input differs from x_t
        torch.nn.init.normal_(p, std=0.05)
    schedule = bench._schedule(recipe)
    x0, noise = torch.rand(4, 3, 16, 16) * 2 - 1, torch.randn(4, 3, 16, 16)
    t = torch.tensor([10, 400, 800, 999])
    kw = bench.loss_params(recipe, "dream_conservative")
    ours, _ = compute_loss("dream_conservative", model, schedule, x0, t, noise, **kw)
    ours.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    naive = bench.naive_conservative_loss(model, schedule, x0, t, noise, **kw)
    naive.backward()
    torch.testing.assert_close(naive, ours)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g)


def test_loss_params_activate_the_conservative_term():
    recipe = load_recipe("tiny")
    kw = bench.loss_params(recipe, "dream_conservative")
    assert kw["epoch"] >= kw["start_epoch"] and kw["alpha"] == recipe.loss.alpha
    assert bench.loss_params(recipe, "input_perturbation")["gamma"] == recipe.loss.gamma


def test_interleaved_rotates_the_order_and_counts_calls():
    order: list[str] = []
    net = torch.nn.Identity()

    def step(name):
        def run(i):
            order.append(name)
            for _ in range(2 if name == "b" else 1):
                net(torch.zeros(1))
        return run

    with bench.counting_forwards(net) as counter:
        raw = bench.interleaved({n: step(n) for n in "abc"}, torch.device("cpu"), warmup=1, rounds=3, counter=counter)
    assert order == list("abc") + list("abc") + list("bca") + list("cab")
    assert {n: r["forward_calls"] for n, r in raw.items()} == {"a": {1}, "b": {2}, "c": {1}}
    assert all(len(r["seconds"]) == 3 for r in raw.values())
    net(torch.zeros(1))
    assert counter[0] == 1  # the hook is gone after the block


def test_sample_and_inception_sections(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMCTL_WEIGHTS", str(tmp_path))  # an empty weights folder
    result = bench.run_bench("sample", load_recipe("tiny", SMALL + ["train.batch_size=2"]), CPU, rounds=1,
                             warmup=0, sample_batches=1)
    assert result["sample"]["img_per_s"] > 0 and result["sample"]["sampler"] == "ddim-50 (eta 0)"
    assert result["inception"]["skipped"].startswith("weights missing")
    assert "train" not in result and "data" not in result


def test_unknown_section_is_an_error():
    from dreamctl.errors import DreamctlError

    with pytest.raises(DreamctlError, match="unknown benchmark"):
        bench.run_bench("everything", load_recipe("tiny", SMALL), CPU, rounds=1, warmup=0)


def test_targets_compare_against_limits():
    result = {"recipe": "tiny", "machine": {"device_type": "cpu"},
              "train": {"rows": {"dream": {"step_time_ratio": 1.5}, "dream_conservative": {"step_time_ratio": 2.0}},
                        "naive_vs_ours": {"ours_over_naive_step_time": 0.85}}}
    verdicts = {t["target"]: t["pass"] for t in bench.evaluate_targets(result)}
    assert verdicts == {"dream_conservative step time / standard <= 2.15": True,
                        "dream_conservative step time / naive <= 0.9": True,
                        "dream step time / standard <= 1.45": False}
    result["recipe"] = "baseline"
    assert not any(t["conditions_met"] for t in bench.evaluate_targets(result))


def test_cli_bench_train_writes_json(tmp_path):
    from dreamctl.cli import main

    out = tmp_path / "b.json"
    args = ["bench", "train", "--device", "cpu", "--steps", "1", "--warmup", "0", "--out", str(out)]
    assert main(args + [a for s in SMALL for a in ("--set", s)]) == 0
    result = json.loads(out.read_text())
    assert result["recipe"] == "tiny" and result["batch_size"] == 4
    assert result["train"]["rows"]["dream"]["forward_calls"] == 2
    assert result["command"].startswith("dreamctl bench train")


def test_bench_core_does_not_import_metric_or_plot_packages():
    code = ("import sys, torch; from dreamctl import bench; from dreamctl.config import load_recipe; "
            "from dreamctl.runtime import Runtime; "
            f"bench.run_bench('train', load_recipe('tiny', {SMALL!r}), Runtime(torch.device('cpu'), 'fp32'), "
            "rounds=1, warmup=0); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'cleanfid', 'lpips', 'matplotlib'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
