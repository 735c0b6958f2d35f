"""`dreamctl evaluate`: metrics of a run's samples against a reference split, into RUN_DIR/eval/."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from dreamctl.cli import options
from dreamctl.cli.common import console
from dreamctl.cli.drawing import drawing
from dreamctl.metrics.registry import INCEPTION_METRICS, METRICS
from dreamctl.metrics.spread import spread_legend, spread_of


def _trained_on(p: dict) -> str:
    """How many reference images the run trained on: a score against them rewards memorisation."""
    n = p.get("ref_trained_on")
    if n is None:
        return ""
    if n == 0:
        return " (none of them trained on)"
    which = "all" if n == p["ref_num"] else f"{n}"
    return f" ({which} of them trained on: a score against training images; --ref test for held-out ones)"


def format_value(entry: dict[str, Any]) -> str:
    text = f"{entry['value']:.4g}"
    if entry.get("std") is not None:
        text += f" ± {entry['std']:.2g}"
    if entry.get("real_value") is not None:
        text += f" (real images: {entry['real_value']:.4g})"
    return text


def describe(name: str, entry: dict[str, Any], protocol: dict[str, Any]) -> str:
    """What the metric measures, with the settings its evaluation file records (KID's subsets, IS's splits)."""
    if "missing" in entry:
        return "not computed: why, below the table"
    recorded: dict[str, Any] = protocol[name] if isinstance(protocol.get(name), dict) else {}
    template = METRICS[name].describe if name in METRICS else name
    what = template.format_map(collections.defaultdict(lambda: "?", recorded))  # "?": not recorded
    if protocol.get("feature_network_stand_in") and name in INCEPTION_METRICS:
        what = "STAND-IN feature network, not Inception; only comparable with itself. " + what
    return what


EXAMPLES = """\b
Examples:
  dreamctl evaluate runs/tiny --num 1000 --metrics swd,pixel_fd      # no weights needed
  dreamctl evaluate runs/cons --num 5000 --ref train --metrics fid,kid,is --strict-weights"""  # under --help; "\\b": not rewrapped

def command(
    ctx: typer.Context,
    run_dir: Path = typer.Argument(..., help="The run folder (written by `dreamctl train`)."),
    num: Optional[int] = typer.Option(None, "--num", "-n", help="Generated images [default: eval.num]."),
    ref: Optional[str] = typer.Option(None, "--ref", help="Reference split: train, valid or test [default: eval.ref]."),
    ref_num: Optional[int] = typer.Option(None, "--ref-num", help="First N images of the split [default: the recipe's eval.ref_num, else --num]."),
    data: Optional[Path] = typer.Option(None, "--data", help="Where the run's prepared data is now, if it moved "
                                        "(the same content is checked) [default: the run's data.path]."),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma list of fid,kid,is,lpips,swd,pixel_fd "
                                          "[default: eval.metrics]. Named metrics need their weights."),
    sampler: options.Sampler = None,
    steps: options.Steps = None,
    eta: options.Eta = None,
    t_start: options.TStart = None,
    clip_x0: options.ClipX0 = None,
    seed: Optional[int] = typer.Option(None, "--seed", help="Base seed of the samples [default: eval.seed]."),
    use_ema: options.Ema = None,
    checkpoint: options.Checkpoint = None,
    batch_size: options.BatchSize = None,
    compile: options.Compile = None,
    compile_mode: options.CompileMode = None,
    strict_weights: bool = typer.Option(False, "--strict-weights", help="Fail (exit 2) when any metric's weights "
                                        "are missing, even for metrics taken from the recipe."),
    device: options.Device = None,
) -> None:
    """Generate (or reuse) samples and write eval/<protocol>.json with FID, KID, IS, LPIPS, SWD, pixel FD."""
    opts = options.sample_options(ctx.params)
    from dreamctl.evaluation import EvalOptions, evaluate_run

    asked = EvalOptions(num=num, ref=ref, ref_num=ref_num, metrics=None if metrics is None else tuple(metrics.split(",")),
                        data=data, strict_weights=strict_weights)
    with drawing(device) as (rt, display):
        result = evaluate_run(run_dir, opts, asked, rt=rt, on_event=display.on_event)
    if result is None:
        return
    record, p = result.record, result.record["protocol"]
    table = Table(title=f"{record['protocol_id']}  (checkpoint step {p['checkpoint_step']})", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("what it measures")
    for name, entry in record["metrics"].items():
        table.add_row(name, "missing" if "missing" in entry else format_value(entry), describe(name, entry, p))
    console.print(table)
    say = lambda text: console.print(text, markup=False, highlight=False)  # noqa: E731
    say(f"{p['num_generated']} samples ({p['sampler']} {p['steps']} steps, eta {p['eta']:g}, "
        f"{'EMA' if p['ema'] else 'raw'}, base seed {p['seed']}: image i from seed {p['seed']}*2**20+i) "
        f"from {result.samples}")
    features = any(m in INCEPTION_METRICS and "value" in e for m, e in record["metrics"].items())
    say(f"against the first {p['ref_num']} {p['ref_split']} images{_trained_on(p)}"
        + (f"; features: {p['feature_network']}, {p['resize']}" if features else ""))
    if features:
        say("FID, KID and IS are comparable only within one protocol id (same sampler, steps, N, reference, resize).")
    why: dict[str, list[str]] = {}  # one line per reason: fid, kid and is miss the same Inception file
    for name, entry in record["metrics"].items():
        if "missing" in entry:
            why.setdefault(str(entry["missing"]), []).append(name)
    for reason, names in why.items():
        say(f"missing {', '.join(names)}: {reason}")
    legend = spread_legend((m, s) for m, e in record["metrics"].items() if (s := spread_of(m, e)) is not None)
    if legend:
        say(legend)
    for path in result.paths:
        say(f"wrote {path}")
