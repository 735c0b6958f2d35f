"""PNG figures for `compare --plot` and ablate's report (matplotlib, Agg, no pyplot state).

Each function draws from run folders only and returns the path it wrote, or None when
there is nothing to draw (a figure is never written empty). Titles of metric figures
name their protocol: numbers from two protocols never share axes. Lines carry the labels
of compare's rows, so two runs of one name stay two lines.
"""

from __future__ import annotations

import functools
import math
import re
import textwrap
from collections.abc import Collection, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

import dreamctl
from dreamctl import atomic
from dreamctl.experiments.columns import column_id, column_ids
from dreamctl.experiments.compare import Comparison, compare_runs, finite_number, run_labels
from dreamctl.experiments.runs import Run
from dreamctl.experiments.tables import describe_protocols

LOSS_TERM = re.compile(r"loss(_(?!q\d$)\w+)?$")  # loss, loss_std, loss_rect, loss_dream...; not the quartiles


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "unnamed"


def _figure(panels: int) -> tuple[Figure, list]:
    cols = min(panels, 3)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(5.0 * cols if cols > 1 else 7.5, 3.8 * rows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[:panels]


def _title(fig: Figure, title: str, description: str) -> None:
    """A title naming the protocol, its settings wrapped to the figure's width."""
    width = int(fig.get_figwidth() * 11)
    fig.suptitle("\n".join([title, *textwrap.wrap(description, width)]), fontsize="medium")


def _save(fig: Figure, path: Path, notes: Sequence[str] = ()) -> Path:
    """Written atomically: a stop mid-write leaves the previous figure, not a truncated one. `notes`
    (compare's: what dream_conservative is) go under the panels, so the figure keeps them when shared."""
    if notes:  # as the figure's bottom label: constrained layout makes room for it
        width = int(fig.get_figwidth() * 14)  # characters a line of small text holds: about 14 per inch
        fig.supxlabel("\n".join(line for n in notes for line in textwrap.wrap(f"Note: {n.replace('`', '')}.", width)),
                      fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png", metadata={"Software": f"dreamctl {dreamctl.__version__}"})
    return path


FIGURE_NAME = re.compile(r"^(loss|lambda|metrics-vs-step_.+|final-metrics_.+)\.png$")  # what write_figures writes


def foreign_figures(folder: Path) -> list[Path]:
    """Files in `folder` under a name a figure may take that write_figures did not write: a rerun would
    refuse them, so a long command checks this before its work (which protocols get a figure is known only
    after the evaluations, so every figure name counts)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if FIGURE_NAME.match(p.name) and not _ours(p))


def _ours(path: Path) -> bool:
    """A PNG that _save wrote (its Software text names dreamctl): one a new figure may replace."""
    try:
        with Image.open(path) as image:
            return str(image.info.get("Software", "")).startswith("dreamctl")
    except (OSError, SyntaxError, ValueError):  # what PIL raises for a folder, a non-image or a damaged file
        return False


def _x_axis(runs: list[Run]) -> tuple[str, str]:
    """(metrics.jsonl key, axis label) to plot against: the step, or the images seen when the runs' batch
    sizes differ (a step of 64 images against one of 16 compares nothing)."""
    if len({run.recipe.train.batch_size for run in runs}) > 1:
        return "images_seen", "images seen (the runs' batch sizes differ)"
    return "step", "training step"


def _series(run: Run, key: str, x: str = "step") -> tuple[list[float], list[float]]:
    points = [(r[x], r[key]) for r in run.history
              if isinstance(r.get(x), (int, float)) and isinstance(r.get(key), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]


def _line(ax, x: list[float], y: list[float], label: str, color: str | None = None) -> None:
    # A line through one point draws nothing: a run logged once still shows as a dot.
    ax.plot(x, y, label=label, color=color, linewidth=1.2, marker="o" if len(x) == 1 else None)


def _color(i: int) -> str:
    """Run i's colour in every panel of a figure, whichever runs a panel lacks."""
    return f"C{i % 10}"


def plot_losses(runs: list[Run], path: Path, notes: Sequence[str] = ()) -> Path | None:
    """Training loss against step, one panel per loss term logged (loss, loss_std, loss_rect, ...).

    `loss` is each run's own objective (DREAM's has another target), so with several loss kinds its
    panel says so; `loss_std`, the plain eps-MSE at x_t, is the panel that compares them."""
    logged = {k for run in runs for row in run.history for k in row if LOSS_TERM.match(k)}
    keys = [k for k in sorted(logged, key=lambda k: (k != "loss", k)) if any(_series(r, k)[0] for r in runs)]
    if not keys:
        return None
    kinds = {run.recipe.loss.kind for run in runs}
    mixed = len(kinds) > 1
    at = "at x_t (input_perturbation: at its perturbed input)" if "input_perturbation" in kinds else "at x_t"
    titles = {"loss": "loss: each run's own objective, not comparable across loss kinds",
              "loss_std": f"loss_std: eps-MSE {at}"} if mixed else {}
    labels = [f"{label} ({run.recipe.loss.kind})" if mixed else label for run, label in zip(runs, run_labels(runs))]
    fig, axes = _figure(len(keys))
    along, xlabel = _x_axis(runs)
    for ax, key in zip(axes, keys):
        for i, (run, label) in enumerate(zip(runs, labels)):
            x, y = _series(run, key, along)
            if x:
                _line(ax, x, y, label, _color(i))
        ax.set(xlabel=xlabel, ylabel=key)
        ax.set_title(titles.get(key, key), **({"fontsize": "small"} if key in titles else {}))
        if all(v > 0 for run in runs for v in _series(run, key)[1]):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("Training loss (metrics.jsonl)")
    return _save(fig, path, notes)


def plot_lambda(runs: list[Run], path: Path, notes: Sequence[str] = ()) -> Path | None:
    """The rectification weight actually applied (lambda_mean over each logged batch)."""
    along, xlabel = _x_axis(runs)
    drawn = [(i, run, label, *_series(run, "lambda_mean", along)) for i, (run, label) in enumerate(zip(runs, run_labels(runs)))]
    drawn = [d for d in drawn if d[3]]
    if not drawn:
        return None
    fig, (ax,) = _figure(1)
    for i, run, label, x, y in drawn:
        _line(ax, x, y, f"{label} ({run.recipe.loss.kind})", _color(i))
    ax.set(xlabel=xlabel, ylabel="lambda_mean", title="lambda applied: mean over each logged batch's timesteps (metrics.jsonl)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path, notes)


def plot_metrics_vs_step(runs: list[Run], protocol_id: str, description: str, path: Path,
                         notes: Sequence[str] = (), names: Collection[str] | None = None) -> Path | None:
    """Each metric of one protocol (a column id of compare; those in `names` if given) against the checkpoint
    step it was measured at."""
    ids = column_ids(runs)
    along, xlabel = _x_axis(runs)
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for run, label in zip(runs, run_labels(runs)):
        per_step = run.recipe.train.batch_size if along == "images_seen" else 1
        for record in run.evals:
            if column_id(record, ids) != protocol_id or record.checkpoint_step is None:
                continue
            for name, entry in record.metrics.items():
                if (names is None or name in names) and "missing" not in entry and finite_number(entry.get("value")):
                    curves.setdefault(name, {}).setdefault(label, []).append((record.checkpoint_step * per_step,
                                                                              entry["value"]))
    if not curves:
        return None
    fig, axes = _figure(len(curves))
    colors = {label: _color(i) for i, label in enumerate(run_labels(runs))}
    for ax, (name, by_run) in zip(axes, sorted(curves.items())):
        for label, points in by_run.items():
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label, color=colors[label])
        ax.set(xlabel=xlabel.replace("training step", "checkpoint step"), ylabel=name, title=name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    _title(fig, f"Metrics against {xlabel.split(' (')[0]} — protocol {protocol_id}", description)
    return _save(fig, path, notes)


def plot_final_metrics(comp: Comparison, protocol_id: str, description: str, path: Path) -> Path | None:
    """Bars of the final metrics of one protocol; error bars are the std over seeds."""
    rows = comp.aggregate or comp.rows
    names = [m for p, m in comp.columns if p == protocol_id]
    names = [m for m in names if any(r.metrics[(protocol_id, m)].value is not None for r in rows)]
    if not names:
        return None
    fig, axes = _figure(len(names))
    # Each bar's checkpoint: runs stopped at other steps are bars of other models, and the figure says so.
    labels = [f"{r.label}\n@ step {'/'.join(map(str, r.eval_steps[protocol_id]))}" if r.eval_steps.get(protocol_id)
              else r.label for r in rows]
    for ax, name in zip(axes, names):
        found = [r.metrics[(protocol_id, name)] for r in rows]
        heights = [m.value if m.value is not None else 0.0 for m in found]
        errors = [m.std if (m.std is not None and m.n > 1) else 0.0 for m in found]
        bars = ax.bar(range(len(rows)), heights, yerr=errors if any(errors) else None, capsize=4, color="tab:blue")
        for bar, m in zip(bars, found):
            if m.value is None:  # an honest gap, labelled, never a number
                bar.set_alpha(0.0)
                ax.text(bar.get_x() + bar.get_width() / 2, 0, "missing", ha="center", va="bottom", rotation=90)
        ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize="small")
        seeds = "mean ± std over seeds" if comp.aggregate else "one run each"
        ax.set(ylabel=name, title=f"{name} ({seeds})")
        ax.grid(alpha=0.3, axis="y")
    _title(fig, f"Final metrics — protocol {protocol_id}", description)
    return _save(fig, path, comp.notes)


def write_figures(runs: list[Run], out_dir: str | Path, comp: Comparison | None = None) -> list[Path]:
    """Every figure that has something to show, written under out_dir; returns their paths.

    A figure replaces an earlier one of ours (a rerun), never another file of the same name."""
    out = Path(out_dir)
    comp = comp or compare_runs(runs)
    described = describe_protocols(comp)
    drawings = [(out / "loss.png", functools.partial(plot_losses, runs, notes=comp.notes)),
                (out / "lambda.png", functools.partial(plot_lambda, runs, notes=comp.notes))]
    for pid in comp.protocols:
        drawings += [(out / f"metrics-vs-step_{_safe(pid)}.png",
                      functools.partial(plot_metrics_vs_step, runs, pid, described[pid], notes=comp.notes,
                                        names={m for p, m in comp.columns if p == pid})),
                     (out / f"final-metrics_{_safe(pid)}.png",
                      functools.partial(plot_final_metrics, comp, pid, described[pid]))]
    for path, _ in drawings:  # before any figure is drawn
        atomic.check_output_file(path, "figure", replaces=_ours)
    written = [draw(path=path) for path, draw in drawings]
    return [p for p in written if p is not None]
