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
from dreamctl.bench import BenchOptions
from dreamctl.config import load_recipe, set_args
from dreamctl.runtime import Runtime

# A 16 px, 8-channel UNet: every code path of the benchmark in well under a second per step.
SMALL = ["model.channels=8", "model.channel_mult=[1,2]", "model.attention_resolutions=[8]", "model.num_heads=2",
         "model.groups=4", "model.time_features=16", "model.num_res_blocks=1", "data.resolution=16",
         "train.batch_size=4"]
CPU = Runtime(torch.device("cpu"), "fp32")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a loaded 2-core machine, OpenMP barriers between two threads can
    make these tiny steps 100x slower; these tests check structure, not speed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


HEARD: list[tuple[str, dict]] = []  # what train_result's run_bench told its on_event


@pytest.fixture(scope="module")
def train_result():
    return bench.run_bench("train", load_recipe("tiny", SMALL), CPU, BenchOptions(rounds=2, warmup=1),
                           on_event=lambda kind, payload: HEARD.append((kind, payload)))


def test_run_bench_reports_each_round_of_its_sections(train_result):
    assert [(kind, p["section"], p["round"]) for kind, p in HEARD] == [
        ("bench_round", "train", label) for label in ("warm-up 1/1", "round 1/2", "round 2/2")]
    assert set(HEARD[-1][1]["seconds"]) == set(train_result["train"]["rows"])


def test_train_rows_count_forward_calls(train_result):
    rows = train_result["train"]["rows"]
    assert list(rows) == [*bench.KINDS, bench.NAIVE]
    calls = {name: row["forward_calls"] for name, row in rows.items()}
    assert calls == {"standard": 1, "dream": 2, "dream_conservative": 2, "input_perturbation": 1, bench.NAIVE: 3}
    assert all(row["forward_calls"] == row["design_forward_calls"] for row in rows.values())  # the dry run's count
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
    assert not any(t["conditions_met"] for t in targets)  # tiny's name, but its network changed with --set
    json.dumps(train_result)  # JSON-ready as it is


def test_naive_baseline_computes_the_same_loss_and_gradients():
    from dreamctl.diffusion import schedule_for
    from dreamctl.diffusion.losses import compute_loss
    from dreamctl.models import build_model

    recipe = load_recipe("tiny", SMALL)
    torch.manual_seed(0)
    model = build_model(recipe.model, 16)
    for p in model.parameters():  # leave the zero init, so the rectified input differs from x_t
        torch.nn.init.normal_(p, std=0.05)
    schedule = schedule_for(recipe.diffusion)
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

    heard = []
    with bench.counting_forwards(net) as counter:
        raw = bench.interleaved({n: step(n) for n in "abc"}, torch.device("cpu"), warmup=1, rounds=3, counter=counter,
                                on_round=lambda label, seconds: heard.append((label, seconds)))
    assert order == list("abc") + list("abc") + list("bca") + list("cab")
    # each round as it ends (a run cut short by its time limit has said how far it got), timed ones as recorded
    assert [label for label, _ in heard] == ["warm-up 1/1", "round 1/3", "round 2/3", "round 3/3"]
    assert all(seconds[n] == raw[n]["seconds"][k] for k, (_, seconds) in enumerate(heard[1:]) for n in "abc")
    assert {n: r["forward_calls"] for n, r in raw.items()} == {"a": {1}, "b": {2}, "c": {1}}
    assert all(len(r["seconds"]) == 3 for r in raw.values())
    last = counter[0]
    net(torch.zeros(1))
    assert counter[0] == last  # the hook is gone after the block


def test_cuda_memory_accounting_with_a_fake_allocator(monkeypatch):
    """The CUDA branch of interleaved/summarize: peak, the step's own share, ratios to the reference."""
    mem = {"allocated": 100, "peak": 100}
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: mem.update(peak=mem["allocated"]))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: mem["allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: mem["peak"])
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: mem["peak"] + 10)

    def step(extra):
        return lambda i: mem.update(peak=max(mem["peak"], mem["allocated"] + extra))

    raw = bench.interleaved({"std": step(50), "other": step(30)}, torch.device("cuda"), warmup=0, rounds=2)
    rows = bench.summarize(raw, batch=8, cuda=True, reference="std")
    assert rows["std"]["peak_memory_bytes"] == 150 and rows["std"]["step_extra_bytes"] == 50
    assert rows["other"]["peak_memory_bytes"] == 130 and rows["other"]["peak_reserved_bytes"] == 140
    assert rows["other"]["peak_memory_ratio"] == round(130 / 150, 3) and rows["other"]["step_extra_ratio"] == 0.6


def test_sample_and_inception_sections(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMCTL_WEIGHTS", str(tmp_path))  # an empty weights folder
    result = bench.run_bench("sample", load_recipe("tiny", SMALL + ["train.batch_size=2"]), CPU,
                             BenchOptions(rounds=1, warmup=0, sample_batches=1, variants=False))
    sample = result["sample"]
    assert sample["img_per_s"] > 0 and sample["sampler"] == "ddim-50 (eta 0)" and list(sample["rows"]) == ["eager"]
    assert result["inception"]["skipped"].startswith("weights missing")
    assert "train" not in result and "data" not in result


def test_sample_compares_eager_and_compiled_on_one_model(monkeypatch):
    """With variants, the other sample.compile setting runs too, interleaved; the recipe's own is the reference."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append(model) or model)  # no compile wait
    recipe = load_recipe("tiny", SMALL + ["train.batch_size=2", "sample.compile=true"])
    sample = bench.run_bench("sample", recipe, CPU, BenchOptions(rounds=1, warmup=0, sample_batches=2))["sample"]
    assert sample["compile"] and sample["reference"] == "compiled" and list(sample["rows"]) == ["compiled", "eager"]
    assert len(compiled) == 1 and sample["batches"] == 2
    assert sample["rows"]["compiled"]["time_ratio"] == 1.0 and sample["rows"]["eager"]["img_per_s"] > 0
    assert sample["img_per_s"] == sample["rows"]["compiled"]["img_per_s"]


def test_sample_settings_time_cuda_graphs_on_cuda_only():
    """The recipe's own setting first, then the others; only CUDA records graphs, so elsewhere
    'reduce-overhead' is the default compile's row rather than a second row timing the same thing."""
    from dreamctl.bench.sections import sample_settings

    graphs = "compiled, CUDA graphs"
    assert sample_settings(False, "default", "cuda", compare=True) == ["eager", "compiled", graphs]
    assert sample_settings(True, "reduce-overhead", "cuda", compare=True) == [graphs, "eager", "compiled"]
    assert sample_settings(True, "reduce-overhead", "cuda", compare=False) == [graphs]
    assert sample_settings(True, "reduce-overhead", "cpu", compare=True) == ["compiled", "eager"]
    assert sample_settings(False, "default", "cpu", compare=True) == ["eager", "compiled"]


def test_a_compared_sampling_setting_that_fails_is_recorded_and_the_others_timed(monkeypatch, capsys, tmp_path):
    """A compile that fails on the machine (a CUDA graph capture, say) costs only its own row: the
    error is on record and printed; the recipe's own setting failing fails the run."""
    from dreamctl.cli.bench import print_summary, render

    def no_compiler(model, mode=None):
        raise RuntimeError("no compiler here\nsecond line")

    monkeypatch.setattr(torch, "compile", no_compiler)
    recipe = load_recipe("tiny", SMALL + ["train.batch_size=2"])
    result = bench.run_bench("sample", recipe, CPU, BenchOptions(rounds=1, warmup=0, sample_batches=1))
    sample = result["sample"]
    assert list(sample["rows"]) == ["eager"] and sample["failed"] == {"compiled": "RuntimeError: no compiler here"}
    render(result)  # prints the failure beside the timed rows, and so does gpu.sh's summary
    assert "DDIM-50 sampling, compiled: failed, not timed: RuntimeError: no compiler here" in capsys.readouterr().out
    (tmp_path / "r.json").write_text(json.dumps(result))
    print_summary([str(tmp_path / "r.json")])
    assert "sample [tiny, batch 2, fp32, compiled]: failed: RuntimeError: no compiler here" in capsys.readouterr().out
    with pytest.raises(RuntimeError, match="no compiler here"):
        bench.run_bench("sample", load_recipe("tiny", SMALL + ["train.batch_size=2", "sample.compile=true"]), CPU,
                        BenchOptions(rounds=1, warmup=0, sample_batches=1))


def test_unknown_section_is_an_error():
    from dreamctl.errors import DreamctlError

    with pytest.raises(DreamctlError, match="unknown benchmark"):
        bench.run_bench("everything", load_recipe("tiny", SMALL), CPU, BenchOptions(rounds=1, warmup=0))


def test_targets_compare_against_limits():
    tiny = load_recipe("tiny")
    result = {"recipe": "tiny", "machine": {"device_type": "cpu"}, "resolution": 32, "warmup": 1,
              "model": tiny.model.model_dump(mode="json"),
              "train": {"rows": {"dream": {"step_time_ratio": 1.5, "rounds": 12},
                                 "dream_conservative": {"step_time_ratio": 2.0, "rounds": 12}},
                        "naive_vs_ours": {"ours_over_naive_step_time": 0.85}}}
    targets = bench.evaluate_targets(result)
    verdicts = {t["target"]: t["pass"] for t in targets}
    assert all(t["conditions_met"] for t in targets)
    assert verdicts == {"dream_conservative step time / standard <= 2.15": True,
                        "dream_conservative step time / naive <= 0.9": True,
                        "dream step time / standard <= 1.45": False}
    result["warmup"] = 0  # cold rounds (or a budget that stopped after one): a verdict, but only an indicative one
    assert {tuple(t["differs"]) for t in bench.evaluate_targets(result)} == {("12 round(s) after 0 warm-up",)}
    result["recipe"], result["warmup"] = "baseline", 1
    assert not any(t["conditions_met"] for t in bench.evaluate_targets(result))
    # Sampling targets count the batches actually timed (one here), not the training rounds asked for.
    gpu = {**result, "machine": {"device_type": "cuda"}, "sample": {"batches": 1, "rows": {"eager": {"img_per_s": 300}}}}
    ddim = [t for t in bench.evaluate_targets(gpu) if t["target"].startswith("DDIM-50 img/s, eager")]
    assert ddim[0]["pass"] is True and "1 timed batch(es)" in ddim[0]["differs"]


def test_bench_options_are_recorded_as_the_command_takes_them():
    """A result's command reruns the benchmark as it ran: every option that changes what is timed, in order."""
    opts = BenchOptions(rounds=5, warmup=1, sample_batches=3, budget_s=90.0, variants=False, only=("compile bf16",))
    assert " ".join(opts.as_args()) == ("--rounds 5 --warmup 1 --sample-batches 3 --no-variants --budget-s 90 "
                                        "--only 'compile bf16'")
    assert BenchOptions(rounds=20).as_args() == ["--rounds", "20", "--warmup", "3", "--sample-batches", "2"]


def test_every_bench_option_reaches_the_section_it_governs(monkeypatch):
    """BenchOptions is what `dreamctl bench` records it ran with (as_args): each option must be what its section
    was given, not a default in between. The sections are stood in for by recorders: only the wiring is timed."""
    from dreamctl.bench import data
    from dreamctl.bench.sections import VARIANTS

    given = {}

    def recorded(name):
        def section(*args, **kwargs):
            given[name] = kwargs
            return {}
        return section

    for name in ("train", "variants", "sample", "inception"):
        monkeypatch.setattr(bench, f"bench_{name}", recorded(name))
    monkeypatch.setattr(data, "run_data_bench", recorded("data"))
    monkeypatch.setattr(bench, "evaluate_targets", lambda result: [])
    variant = list(VARIANTS)[-1]
    opts = BenchOptions(rounds=3, warmup=2, sample_batches=5, budget_s=7.5, only=(variant,), data_images=12)
    result = bench.run_bench("all", load_recipe("tiny", SMALL), CPU, opts)
    timed = {"rounds": 3, "warmup": 2, "budget_s": 7.5}
    assert {k: given["train"][k] for k in timed} == timed
    assert {k: given["variants"][k] for k in (*timed, "only")} == {**timed, "only": (variant,)}
    assert (given["sample"]["batches"], given["sample"]["compare_compile"]) == (5, True)
    assert given["data"]["count"] == 12 and (result["rounds"], result["warmup"]) == (3, 2)


def test_cli_bench_train_writes_json(tmp_path, capsys):
    from dreamctl.cli import main

    out = tmp_path / "b.json"
    args = ["bench", "train", "--device", "cpu", "--rounds", "1", "--warmup", "0", "--out", str(out)]
    assert main(args + set_args(SMALL)) == 0
    result = json.loads(out.read_text())
    assert result["recipe"] == "tiny" and result["batch_size"] == 4
    assert result["train"]["rows"]["dream"]["forward_calls"] == 2
    assert result["command"] == " ".join(["dreamctl bench train --recipe tiny --device cpu --batch-size 4 --rounds 1 "
                                          "--warmup 0 --sample-batches 2", *(f"--set {s}" for s in SMALL)])
    assert result["rounds"] == 1
    assert "the CelebA study's variant" in result["train"]["notes"][0]  # beside `dream`: not the paper's method
    assert "note: `dream_conservative` is the CelebA study's variant" in " ".join(capsys.readouterr().out.split())
    old = ["--steps" if a == "--rounds" else a for a in args]  # --rounds' old name, in recorded commands
    assert main(old + set_args(SMALL)) == 0  # a rerun replaces its own result...
    assert " --rounds 1 " in json.loads(out.read_text())["command"]
    mine = tmp_path / "mine.json"
    mine.write_text('{"mine": 1}')
    capsys.readouterr()
    assert main(args[:-1] + [str(mine)] + set_args(SMALL)) == 2  # ...never another file of that name
    assert f"--out {mine} exists and is not an earlier output of this command" in capsys.readouterr().err
    assert mine.read_text() == '{"mine": 1}'
    assert main(["bench", "train", "--device", "cpu", "--rounds", "3", "--steps", "4", "--out", str(tmp_path / "zero.json")]) == 2
    assert "--steps is --rounds' old name; give one of them" in capsys.readouterr().err
    for option in ("--budget-s", "--rounds", "--steps", "--batch-size", "--sample-batches"):  # 0 would time nothing
        assert main(["bench", "train", "--device", "cpu", option, "0", "--out", str(tmp_path / "zero.json")]) == 2
        assert option in capsys.readouterr().err
    assert not (tmp_path / "zero.json").exists()


def test_bench_refuses_to_run_under_torchrun(tmp_path, capsys, monkeypatch):
    """Its steps time one process's whole batch; under torchrun each rank would time a slice of the noise."""
    from dreamctl.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["bench", "train", "--device", "cpu", "--out", str(tmp_path / "b.json")]) == 2
    assert "bench measures one process" in capsys.readouterr().err and not (tmp_path / "b.json").exists()


def test_bench_core_does_not_import_metric_or_plot_packages():
    code = ("import sys, torch; torch.set_num_threads(1); from dreamctl import bench; from dreamctl.config import load_recipe; "
            "from dreamctl.runtime import Runtime; "
            f"bench.run_bench('train', load_recipe('tiny', {SMALL!r}), Runtime(torch.device('cpu'), 'fp32'), "
            "bench.BenchOptions(rounds=1, warmup=0)); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'cleanfid', 'lpips', 'matplotlib'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_render_and_summary_of_a_cuda_shaped_result(train_result, tmp_path, capsys):
    """The printing paths of a GPU run (memory columns, variants, sampling, data, targets)."""
    import copy

    from dreamctl.cli.bench import print_summary, render

    res = copy.deepcopy(train_result)
    res.update(recipe="conservative", precision="bf16", batch_size=128)
    res["machine"]["device_type"] = "cuda"
    for i, row in enumerate(res["train"]["rows"].values()):
        row.update(peak_memory_bytes=(10 + i) * 10**9, peak_memory_ratio=1 + i / 10)
    res["train"]["naive_vs_ours"]["ours_over_naive_peak_memory"] = 0.7
    variant = {**res["train"]["rows"]["standard"], "step_extra_bytes": 4 * 10**9, "step_extra_ratio": 1.0,
               "first_step_s": 61.2, "forward_calls": None}  # variants count no forward calls
    res["variants"] = {"reference": "eager bf16", "rows": {"eager bf16": variant, "compile bf16": variant}}
    row = {"img_per_s": 250.0, "batch_s_median": 0.512, "time_ratio": 1.0, "first_batch_s": 0.9,
           "peak_memory_bytes": 10**9}
    res["sample"] = {"sampler": "ddim-50 (eta 0)", "batch_size": 128, "img_per_s": 250.0, "includes": "x",
                     "compile": False, "reference": "eager",
                     "rows": {"eager": row, "compiled": {**row, "img_per_s": 180.0, "time_ratio": 1.389}}}
    res["inception"] = {"skipped": "weights missing: /w/inception-2015-12-05.pt"}
    res["targets"] = bench.evaluate_targets(res)
    render(res)
    shown = capsys.readouterr().out
    assert "compile bf16" in shown and "61.2 s" in shown and "250.0 img/s" in shown
    assert "DDIM-50 img/s, eager >= 200" in shown and "PASS" in shown and "compiled: 180.0 img/s, time 1.39x" in shown
    path = tmp_path / "bench-train-cuda.json"
    path.write_text(json.dumps(res))
    print_summary([str(path), str(tmp_path / "bench-sample-cuda.json")])
    summary = capsys.readouterr().out
    assert "peak 10.00 GB" in summary and "missing:" in summary
    # a variant: its own precision in its name, the step's own memory (all variants' models stay resident)
    assert "variants [conservative, batch 128] compile bf16: " in summary and "step extra 4.00 GB (1.00x)" in summary
    assert "None forward calls" not in summary
    assert "dream_conservative peak memory (GB) < 16.0" in summary
    assert "sample [conservative, batch 128, bf16, compiled] ddim-50 (eta 0): 180.0 img/s" in summary
    assert "FAIL         DDIM-50 img/s, compiled >= 200: 180.0" in summary


# --- pure arithmetic of the summaries and verdicts, on hand-made timings (no real steps) -------

def _raw(seconds: list[float]) -> dict:
    """What interleaved returns for one entry on the CPU: seconds per round, no memory figures."""
    return {"seconds": list(seconds), "forward_calls": set(), "peak": 0, "reserved": 0, "extra": 0}


def test_summarize_ratio_is_entry_over_reference_and_img_per_s_uses_the_median():
    """A step twice as slow as the reference must read 2.0 (else every '<=' target passes), and img/s
    is the batch over the median step, not the luckiest one."""
    # Round 3 is a burst of load that hits both alike: same-round ratios stay 2.0.
    raw = {"ref": _raw([0.5, 1.0, 4.0]), "slow": _raw([1.0, 2.0, 8.0])}
    rows = bench.summarize(raw, batch=8, cuda=False, reference="ref")
    assert rows["slow"]["step_time_ratio"] == 2.0 and rows["ref"]["step_time_ratio"] == 1.0
    assert rows["ref"]["img_per_s"] == 8.0  # 8 images / 1.0 s median (the fastest, 0.5 s, would say 16)
    assert rows["slow"]["img_per_s"] == 4.0  # 8 / 2.0 s
    assert rows["slow"]["step_ms_median"] == 2000.0 and rows["slow"]["rounds"] == 3


def test_bench_train_reports_ours_over_naive_below_one_when_ours_is_faster(monkeypatch):
    """'ours faster by' is the headline of the naive comparison: half the naive time is 0.5, 50% faster."""
    from dreamctl.bench import sections

    def fake_interleaved(steps, device, **kw):
        times = {"standard": [1.0, 1.0, 1.0], "dream_conservative": [1.0, 2.0, 3.0], bench.NAIVE: [2.0, 4.0, 6.0]}
        return {n: _raw(times[n]) for n in steps}

    monkeypatch.setattr(sections, "interleaved", fake_interleaved)
    out = sections.bench_train(load_recipe("tiny", SMALL), CPU, rounds=3, warmup=1,
                               kinds=("standard", "dream_conservative"))
    nv = out["naive_vs_ours"]
    assert nv["ours_over_naive_step_time"] == 0.5 and nv["ours_time_saved_percent"] == 50.0


def _cuda_result(**rows: dict) -> dict:
    """A result in the conservative GPU setting with 3 rounds after a warm-up and 2 DDIM batches."""
    stated = load_recipe("conservative")
    return {"recipe": "conservative", "precision": "bf16", "batch_size": 128, "warmup": 1,
            "machine": {"device_type": "cuda"}, "resolution": stated.data.resolution,
            "model": stated.model.model_dump(mode="json"),
            "train": {"rows": {name: {"rounds": 3, **row} for name, row in rows.items()}},
            "sample": {"batches": 2, "rows": {"eager": {"img_per_s": 250.0}}}}


def _by_name(targets: list[dict]) -> dict[str, dict]:
    return {t["target"]: t for t in targets}


def test_peak_memory_target_is_strictly_below_16_gb():
    """'< 16 GB' is strict: exactly 16.0 GB fails it, just under passes."""
    name = "dream_conservative peak memory (GB) < 16.0"
    at = _by_name(bench.evaluate_targets(_cuda_result(dream_conservative={"peak_memory_bytes": 16 * 10**9})))
    assert at[name]["value"] == 16.0 and at[name]["pass"] is False
    under = _by_name(bench.evaluate_targets(_cuda_result(dream_conservative={"peak_memory_bytes": 15_990_000_000})))
    assert under[name]["pass"] is True


def test_exactly_the_minimum_rounds_and_batches_carry_a_verdict():
    """3 timed rounds after a warm-up and 2 timed DDIM batches are enough (docs/benchmarks.md)."""
    targets = bench.evaluate_targets(_cuda_result(standard={"img_per_s": 1600.0}))
    assert all(t["conditions_met"] and t["differs"] == [] for t in targets)
    assert _by_name(targets)["DDIM-50 img/s, eager >= 200"]["pass"] is True


def test_one_short_row_makes_every_training_verdict_indicative():
    """The fewest rounds of any row decides: a row stopped early (budget) cannot borrow another's rounds."""
    result = _cuda_result(standard={"img_per_s": 1600.0, "rounds": 12}, dream={"step_time_ratio": 1.2, "rounds": 2})
    train = [t for t in bench.evaluate_targets(result) if not t["target"].startswith("DDIM")]
    assert train and all(not t["conditions_met"] and t["differs"] == ["2 round(s) after 1 warm-up"] for t in train)


def test_nan_value_is_unmeasured_not_a_fail():
    """A NaN timing is no measurement: its verdict is None, not FAIL, and its value null in the JSON
    (a bare NaN is not JSON: strict readers refuse the whole file)."""
    result = _cuda_result(dream={"step_time_ratio": float("nan")}, standard={"img_per_s": 1600.0})
    t = _by_name(bench.evaluate_targets(result))["dream step time / standard <= 1.35"]
    assert t["pass"] is None and t["value"] is None
    assert _by_name(bench.evaluate_targets(result))["standard img/s >= 1500"]["pass"] is True


def test_compiled_training_targets_are_named_apart_from_eager_ones():
    """gpu.sh times the loss kinds eager and with train.compile in two sections: the summary keeps both
    verdicts, each under its own name, rather than the first section's alone."""
    eager = _cuda_result(dream={"step_time_ratio": 1.37}, standard={"img_per_s": 1660.0})
    compiled = {**_cuda_result(dream={"step_time_ratio": 1.25}, standard={"img_per_s": 2250.0}), "compile": True}
    compiled["sample"]["rows"]["compiled, CUDA graphs"] = {"img_per_s": 210.0}
    for res in (eager, compiled):
        res["targets"] = bench.evaluate_targets(res)
    merged = _by_name(bench.merge_targets([eager, compiled]))
    assert merged["dream step time / standard <= 1.35"]["pass"] is False
    assert merged["dream step time / standard, train.compile <= 1.35"]["pass"] is True
    assert merged["standard img/s, train.compile >= 1500"]["value"] == 2250.0
    assert merged["DDIM-50 img/s, compiled, CUDA graphs >= 200"]["pass"] is True  # sampling has its own names
    assert "DDIM-50 img/s, eager, train.compile >= 200" not in merged


def test_merge_targets_takes_the_first_measured_value():
    """Sections run apart: a section that did not measure a target must not hide one that did."""
    def res(value):
        return {"targets": [{"target": "t", "value": value, "pass": None if value is None else True}]}

    assert bench.merge_targets([res(None), res(5.0)]) == [{"target": "t", "value": 5.0, "pass": True}]
    assert bench.merge_targets([res(4.0), res(None), res(5.0)])[0]["value"] == 4.0
    assert bench.merge_targets([res(None), res(None)])[0]["value"] is None


def test_an_inception_file_that_is_not_clean_fids_is_skipped_with_the_reason(tmp_path, monkeypatch):
    """A whole TorchScript file of another network (10 classes): the bench says why it skips, rather than
    timing it as Inception or failing the whole benchmark."""
    from dreamctl.bench.sections import bench_inception
    from feature_fakes import write_fake_inception

    monkeypatch.setenv("DREAMCTL_WEIGHTS", str(tmp_path))
    write_fake_inception(tmp_path, num_classes=10)
    skipped = bench_inception(CPU, batch_size=2, resolution=16)["skipped"]
    assert "not clean-fid's TorchScript Inception" in skipped and "(10, 2048)" in skipped


def test_progress_lines_say_how_far_a_section_got(capsys):
    """What a gpu.sh section stopped by its time limit leaves in the log: each first step and round."""
    from dreamctl.cli.bench import _progress

    _progress("bench_first", {"section": "variants", "name": "compile bf16", "seconds": 61.23})
    _progress("bench_first", {"section": "sample", "name": "eager", "seconds": 0.9})
    _progress("bench_round", {"section": "train", "round": "round 2/10", "seconds": {"standard": 0.0812, "dream": 0.1}})
    assert capsys.readouterr().err.splitlines() == [
        "variants: compile bf16: first step (compile) 61.2 s", "sample: eager: first batch 0.9 s",
        "train round 2/10: standard 81.2 ms, dream 100.0 ms"]


@pytest.mark.parametrize("args, said", [
    (["train", "--only", "bogus"], "unknown variant 'bogus': expected one of"),
    (["sample", "--only", "compile bf16"], "--only picks training variants, which `bench sample` does not run"),
    (["train", "--no-variants", "--only", "compile bf16"], "which `bench train` does not run"),
])
def test_an_only_that_would_be_ignored_or_names_no_variant_is_refused_before_timing(tmp_path, capsys, monkeypatch,
                                                                                   args, said):
    import dreamctl.bench
    from dreamctl.cli import main

    timed = []
    monkeypatch.setattr(dreamctl.bench, "bench_train", lambda *a, **k: timed.append(1))
    assert main(["bench", *args, "--device", "cpu", "--out", str(tmp_path / "b.json")]) == 2
    assert said in capsys.readouterr().err and timed == [] and not (tmp_path / "b.json").exists()


def test_render_says_more_time_when_ours_was_slower(train_result, capsys):
    """A noisy round can make ours slower than the naive step: '1391.3% more time', not '-1391.3% less time'."""
    import copy

    from dreamctl.cli.bench import render

    res = copy.deepcopy(train_result)
    res["train"]["naive_vs_ours"].update(ours_over_naive_step_time=14.913, ours_time_saved_percent=-1391.3)
    render(res)
    out = " ".join(capsys.readouterr().out.split())
    assert "dream_conservative vs naive: step time 14.91x (1391.3% more time)" in out and "less time" not in out
