"""`dreamctl bench`: training, sampling and data speed side by side; a table and a JSON file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from dreamctl import atomic
from dreamctl.cli import options
from dreamctl.cli.common import console, err_console
from dreamctl.errors import RunError


def command(
    what: Annotated[str, typer.Argument(help="train | variants | sample | data | all")] = "all",
    recipe: Annotated[Optional[str], typer.Option("--recipe", "-r", help="Recipe [default: tiny on cpu, "
                                                  "conservative on cuda].")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Batch [default: the recipe's].")] = None,
    device: options.Device = None,
    rounds: Annotated[Optional[int], typer.Option("--rounds", min=1, help="Timed rounds (each runs every variant "
                                                  "once) [default: 12 on cpu, 20 on cuda].")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, hidden=True)] = None,  # --rounds' old name
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed rounds first.")] = 3,
    sample_batches: Annotated[int, typer.Option("--sample-batches", min=1, help="Timed DDIM-50 batches.")] = 2,
    variants: Annotated[bool, typer.Option("--variants/--no-variants", help="With train: also eager/compile, "
                                           "bf16/fp32, channels_last (CUDA); with sample: eager, compiled and, on CUDA, CUDA graphs.")] = True,
    only: Annotated[list[str], typer.Option("--only", help="Variants: run only this one (repeatable), e.g. "
                                            "--only 'compile bf16'; the reference 'eager bf16' always runs.")] = [],
    budget: Annotated[Optional[float], typer.Option("--budget-s", min=1, help="Stop timing a section after the round "
                                                    "that passes this many seconds.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="JSON file; replaces an earlier bench result, never another file [default: bench-WHAT-DEVICE.json].")] = None,
    set_: Annotated[list[str], typer.Option("--set", metavar="KEY=VALUE", help="Override a recipe key: section.key=value.")] = [],
) -> None:
    """Benchmark training steps per loss kind, sampling and the data loader; print a table, write JSON."""
    from dreamctl import bench, runtime
    from dreamctl.config import load_recipe

    if what not in bench.SECTIONS:
        raise RunError(f"unknown benchmark {what!r}: expected one of {', '.join(bench.SECTIONS)}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # its steps time one process's whole batch
        raise RunError("bench measures one process: run `dreamctl bench` without torchrun")
    if rounds and steps and rounds != steps:
        raise RunError(f"--rounds {rounds} and --steps {steps}: --steps is --rounds' old name; give one of them")
    dev = runtime.check_device(device)
    overrides = list(set_) + ([f"train.batch_size={batch_size}"] if batch_size else [])
    resolved = load_recipe(recipe or bench.default_recipe(dev), overrides)
    path = out or Path(f"bench-{what}-{dev}.json")
    atomic.check_output_file(path, "--out", replaces=_bench_result)  # before the benchmark, not after it
    rt = runtime.setup(resolved.train.precision, dev)
    opts = bench.BenchOptions(rounds=rounds or steps or (20 if rt.device.type == "cuda" else 12), warmup=warmup,
                              sample_batches=sample_batches, budget_s=budget, variants=variants, only=tuple(only))
    with console.status(f"benchmarking {what} on {rt.device} ({resolved.name}, batch {resolved.train.batch_size})"):
        result = bench.run_bench(what, resolved, rt, opts, on_event=_progress)
    # The command with every default resolved, so the run can be repeated as it was.
    result["command"] = " ".join(
        ["dreamctl bench", what, "--recipe", recipe or bench.default_recipe(dev), "--device", rt.device.type,
         "--batch-size", str(resolved.train.batch_size), *opts.as_args(), *(f"--set {s}" for s in set_)])
    atomic.write_json(path, result, indent=1)  # before printing: a closed pipe must not lose it
    render(result)
    console.print(f"wrote {path}", markup=False, highlight=False)


def _progress(kind: str, payload: dict[str, Any]) -> None:
    """Each first step and round as it ends, on stderr: a run stopped by its time limit (benchmarks/gpu.sh)
    has then said how far it got, and how long a compile took."""
    section = payload["section"]
    if kind == "bench_first":
        what = ("batch" if section == "sample" else "step") + (" (compile)" if "compil" in payload["name"] else "")
        err_console.print(f"{section}: {payload['name']}: first {what} {payload['seconds']:.1f} s",
                          markup=False, highlight=False)
    elif kind == "bench_failed":
        err_console.print(f"{section}: {payload['name']}: failed, left out: {payload['error']}",
                          markup=False, highlight=False)
    elif kind == "bench_round":
        took = ", ".join(f"{name} {s * 1e3:.1f} ms" for name, s in payload["seconds"].items())
        err_console.print(f"{section} {payload['round']}: {took}", markup=False, highlight=False)


def _bench_result(path: Path) -> bool:
    """An earlier benchmark's JSON, which --out replaces (a rerun); any other file is kept."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(earlier, dict) and str(earlier.get("command", "")).startswith("dreamctl bench")


def _gb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e9:.2f}"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _step_table(title: str, section: dict[str, Any], mem: str = "peak_memory") -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("", no_wrap=True)
    for col in ("fwd", "ms", "img/s", "peak GB" if mem == "peak_memory" else "step GB", "time x", "mem x"):
        table.add_column(col, justify="right", no_wrap=True)
    for name, row in section["rows"].items():
        table.add_row(name, str(row["forward_calls"] or "-"), f"{row['step_ms_median']:.1f}", f"{row['img_per_s']:.1f}",
                      _gb(row[f"{mem}_bytes"]), _x(row["step_time_ratio"]), _x(row[f"{mem}_ratio"]))
    return table


def render(result: dict[str, Any]) -> None:
    """Print every section of a benchmark result."""
    m = result["machine"]
    console.print(f"{m['device']} | torch {m['torch']} | {m['torch_threads']} threads | load {m['load_average_1min']}"
                  f"->{result['load_average_1min_end']} | {result['recipe']} ({result['parameters'] / 1e6:.2f}M params),"
                  f" batch {result['batch_size']}, {result['resolution']}px, {result['precision']}",
                  markup=False, highlight=False)
    if "train" in result:
        console.print(_step_table(f"training step: median ms; x = vs {result['train']['reference']}, median of "
                                  "same-round ratios", result["train"]))
        nv = result["train"].get("naive_vs_ours")
        if nv:
            mem = "" if nv["ours_over_naive_peak_memory"] is None else \
                f", peak memory {nv['ours_over_naive_peak_memory']:.2f}x"
            saved = nv["ours_time_saved_percent"]  # negative when ours was slower (a noisy round, say)
            change = f"{saved:.1f}% less time" if saved >= 0 else f"{-saved:.1f}% more time"
            console.print(f"dream_conservative vs naive: step time {nv['ours_over_naive_step_time']:.2f}x "
                          f"({change}){mem}", markup=False, highlight=False)
        for note in result["train"].get("notes", []):
            console.print(f"note: {note}", markup=False, highlight=False)
    variants = result.get("variants")
    if variants:
        if "skipped" in variants:
            console.print(f"eager/compile, bf16/fp32, channels_last: skipped ({variants['skipped']})", markup=False)
        else:
            console.print(_step_table("standard step, one setting changed from eager bf16 (step GB: the peak less "
                                      "the resident models)", variants, mem="step_extra"))
            firsts = ", ".join(f"{n} {r['first_step_s']} s" for n, r in variants["rows"].items())
            console.print(f"first step (compile, autotuning): {firsts}", markup=False, highlight=False)
    if "sample" in result:
        sec = result["sample"]
        for name, row in sec["rows"].items():
            console.print(f"DDIM-50 sampling, {name}: {row['img_per_s']:.1f} img/s, time {_x(row['time_ratio'])} "
                          f"of {sec['reference']}, first batch {row['first_batch_s']} s (batch {sec['batch_size']}; "
                          f"{sec['includes']})", markup=False, highlight=False)
        for name, error in sec.get("failed", {}).items():
            console.print(f"DDIM-50 sampling, {name}: failed, not timed: {error}", markup=False, highlight=False)
    if "inception" in result:
        sec = result["inception"]
        text = f"skipped: {sec['skipped']}" if "skipped" in sec else f"{sec['img_per_s']:.1f} img/s " \
            f"(batch {sec['batch_size']}; {sec['includes']})"
        console.print(f"Inception features: {text}", markup=False, highlight=False)
    if "data" in result:
        d = result["data"]
        console.print(f"data (per core): shard loader {d['shard_loader_img_per_s_per_core']} img/s, ImageFolder "
                      f"{d['imagefolder_img_per_s_per_core']} img/s, {d['speedup_per_core']}x; prepare "
                      f"{d['prepare_img_per_s']} img/s on {d['prepare_workers']} workers", markup=False, highlight=False)
    measured = [t for t in result["targets"] if t["value"] is not None]
    if measured:
        table = Table(title="speed targets (docs/benchmarks.md)", title_justify="left")
        for col in ("target", "value", "result", "stated for"):
            table.add_column(col, no_wrap=col == "target")
        for t in measured:
            verdict = {True: "PASS", False: "FAIL", None: "n/a"}[t["pass"]]
            stated = ", ".join(f"{k} {v}" for k, v in t["conditions"].items())
            table.add_row(t["target"], "-" if t["value"] is None else f"{t['value']:g}", verdict,
                          stated + ("" if t["conditions_met"] else f" (indicative: {', '.join(t.get('differs') or ['this run differs'])})"))
        console.print(table)


def print_summary(paths: list[str]) -> None:
    """The summary of several result files (benchmarks/gpu.sh): key figures and every target once."""
    from dreamctl.bench import merge_targets

    results = [json.loads(Path(p).read_text()) for p in paths if Path(p).is_file()]
    lines = []
    for res in results:
        base = f"{res['recipe']}, batch {res['batch_size']}, {res['precision']}"
        setting = base + (", compiled" if res["compile"] else "")  # the training step's setting
        # A variant names its own precision and compile setting, and every variant's model stays resident
        # while the others run: its memory figure is the step's own (the peak less the resident models).
        sections = (("train", setting, "peak_memory", "peak"),
                    ("variants", f"{res['recipe']}, batch {res['batch_size']}", "step_extra", "step extra"))
        for key, label, mem, mem_label in sections:
            sec = res.get(key, {})
            if "skipped" in sec:
                lines.append(f"{key}: skipped: {sec['skipped']}")
            for name, row in sec.get("rows", {}).items():
                size = row.get(f"{mem}_bytes")
                shown = "" if size is None else f", {mem_label} {_gb(size)} GB ({_x(row.get(f'{mem}_ratio'))})"
                calls = "" if row.get("forward_calls") is None else f", {row['forward_calls']} forward calls"
                lines.append(f"{key} [{label}] {name}: {row['img_per_s']:.0f} img/s, time "
                             f"{_x(row['step_time_ratio'])}{shown}{calls}")
        nv = res.get("train", {}).get("naive_vs_ours")
        if nv:
            lines.append(f"train [{setting}] dream_conservative vs naive: time {_x(nv['ours_over_naive_step_time'])}, "
                         f"peak memory {_x(nv['ours_over_naive_peak_memory'])}")
        sec = res.get("sample")
        for name, row in (sec or {}).get("rows", {}).items():
            lines.append(f"sample [{base}, {name}] {sec['sampler']}: {row['img_per_s']:.1f} img/s, "
                         f"time {_x(row['time_ratio'])} of {sec['reference']}")
        for name, error in (sec or {}).get("failed", {}).items():
            lines.append(f"sample [{base}, {name}]: failed: {error}")
        sec = res.get("inception")
        if sec:
            what = sec["skipped"] if "skipped" in sec else f"{sec['img_per_s']:.1f} img/s"
            lines.append(f"inception [{base}] {sec.get('network', '')}: {what}")
        if "data" in res:
            d = res["data"]
            lines.append(f"data: shard loader {d['shard_loader_img_per_s_per_core']} img/s per core, ImageFolder "
                         f"{d['imagefolder_img_per_s_per_core']} ({d['speedup_per_core']}x)")
    if results:
        m = results[0]["machine"]
        lines.insert(0, f"summary: {m['device']}, torch {m['torch']}, {m['date']}")
    for t in merge_targets(results):
        verdict = {True: "PASS", False: "FAIL", None: "not measured"}[t["pass"]]
        note = "" if t["conditions_met"] else " (this run differs from the stated setting)"
        lines.append(f"{verdict:12s} {t['target']}: {t['value']}{note}")
    lines += [f"missing: {p} (that section failed or ran out of time; see the log)" for p in paths
              if not Path(p).is_file()]
    for line in lines:
        console.print(line, markup=False, highlight=False)
