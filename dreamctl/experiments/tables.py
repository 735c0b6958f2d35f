"""Text forms of a Comparison: cells for the terminal, markdown for reports, LaTeX for papers, CSV and JSON.

Every metric column names its protocol id; a metric without a value prints as `missing`, one never evaluated as `—`
(an empty cell in CSV, so its columns stay numeric; the reason is in the table and JSON).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from typing import Any

from dreamctl.experiments.compare import TOTAL_HEADERS, TOTALS, Comparison, Metric, Row
from dreamctl.metrics.registry import INCEPTION_METRICS
from dreamctl.metrics.spread import spread_legend


def format_number(value: float | None, kind: str) -> str:
    if value is None:
        return "—"
    if kind in ("step", "images_seen"):
        return f"{round(value):,}"
    if kind == "wall_time_s":
        return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min" if value < 7200 else f"{value / 3600:.2f} h"
    if kind == "peak_memory_bytes":
        return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.1f} MiB"
    return f"{value:.1f}"


def format_metric(metric: Metric, of_seeds: int = 1) -> str:
    if not metric.evaluated:
        return "—"  # the run has no evaluation under this protocol at all
    if metric.value is None:
        return "missing"  # evaluated, but this metric has no value (its weights were absent, say)
    if not math.isfinite(metric.value):
        return str(metric.value)
    text = f"{metric.value:.4g}" + (f" ± {metric.std:.2g}" if metric.std is not None else "")
    return text + (f" (n={metric.n})" if of_seeds > 1 and metric.n < of_seeds else "")


def _setting_text(value: Any, none: str = "—") -> str:
    """A setting's value as a cell; `none` for one the run's loss kind does not read."""
    if value is None:
        return none
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _shows_processes(comp: Comparison) -> bool:
    """Whether the tables need a processes column: some run trained on more than one."""
    return any(r.processes != (1,) for r in comp.rows)


def processes_text(row: Row) -> str:
    return ",".join(map(str, row.processes)) or "mixed"


def info_headers(comp: Comparison, aggregate: bool = False) -> list[str]:
    settings = [k for k in comp.settings if not (aggregate and k == "train.seed")]
    first = ["group", "seeds"] if aggregate else ["run"]
    procs = ["processes"] if _shows_processes(comp) else []
    return first + ["recipe", *settings, "status", *procs] + [TOTAL_HEADERS[k] for k in TOTALS]


def info_cells(comp: Comparison, row: Row, aggregate: bool = False) -> list[str]:
    first = [row.label, ",".join(map(str, row.seeds))] if aggregate else [row.label]
    out = first + [row.recipe] + [_setting_text(v) for v in row.settings.values()] + [row.status]
    out += [processes_text(row)] if _shows_processes(comp) else []
    return out + [format_number(row.totals[k], k) + _memory_kind(row, k) for k in TOTALS]


def _memory_kind(row: Row, kind: str) -> str:
    """On the CPU a run's peak memory is the process's resident set, not a device's allocations."""
    return " (CPU RSS)" if kind == "peak_memory_bytes" and row.device == "cpu" and row.totals[kind] is not None else ""


def protocol_headers(comp: Comparison, pid: str) -> list[str]:
    """The columns of one protocol group: the checkpoint step evaluated, then its metrics."""
    return ["ckpt"] + [m for p, m in comp.columns if p == pid]


def protocol_cells(comp: Comparison, row: Row, pid: str) -> list[str]:
    steps = "/".join(f"{s:,}" for s in row.eval_steps.get(pid, ())) or "—"
    return [steps] + [format_metric(row.metrics[(p, m)], len(row.seeds)) for p, m in comp.columns if p == pid]


def headers(comp: Comparison, aggregate: bool = False) -> list[str]:
    """One flat header; every metric column names its protocol id."""
    out = info_headers(comp, aggregate)
    for pid in protocol_ids(comp):
        out += [f"{h} @ {pid}" for h in protocol_headers(comp, pid)]
    return out


def cells(comp: Comparison, row: Row, aggregate: bool = False) -> list[str]:
    out = info_cells(comp, row, aggregate)
    for pid in protocol_ids(comp):
        out += protocol_cells(comp, row, pid)
    return out


def _has_value(comp: Comparison, column: tuple[str, str]) -> bool:
    return any(r.metrics[column].value is not None for r in comp.rows)


def with_values(comp: Comparison) -> Comparison:
    """`comp` without the metric columns no run has a value in (each `missing`): the terminal's and LaTeX's
    tables, where such columns squeezed the rest; markdown, CSV and JSON keep every column."""
    return dataclasses.replace(comp, columns=tuple(c for c in comp.columns if _has_value(comp, c)))


def left_out_line(comp: Comparison) -> str:
    """What with_values leaves out of `comp`, as a line to print beside the table ("" when nothing)."""
    dropped = [f"{name} @ {pid}" for pid, name in comp.columns if not _has_value(comp, (pid, name))]
    return f"left out of the tables, as no run has a value: {', '.join(dropped)}" if dropped else ""


def protocol_ids(comp: Comparison) -> list[str]:
    return list(dict.fromkeys(pid for pid, _ in comp.columns))


def describe_protocols(comp: Comparison) -> dict[str, str]:
    """protocol id -> one line saying what its numbers were measured with (the resize and feature
    network only where an Inception metric was computed: SWD and pixel FD use neither)."""
    out = {}
    for pid, desc in comp.protocols.items():
        uses_inception = any(m in INCEPTION_METRICS for p, m in comp.columns if p == pid)
        keys = ("sampler", "steps", "eta", "t_start", "ema", "precision", "seed", "num_generated", "ref_split", "ref_num") \
            + (("resize", "feature_network") if uses_inception else ())
        parts = [f"{k}={desc[k]}" for k in keys if k in desc]
        out[pid] = ", ".join(parts) or "no protocol recorded"
    return out


def spread_line(comp: Comparison) -> str:
    """What ± means in the run rows, per metric ("" when no run row has one); mean rows say it themselves."""
    return spread_legend((name, m.spread) for row in comp.rows for (_, name), m in row.metrics.items()
                         if m.spread is not None)


def to_markdown(comp: Comparison) -> str:
    def table(head: list[str], body: list[list[str]]) -> list[str]:
        esc = [[c.replace("|", "\\|") for c in r] for r in [head, *body]]
        return ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in esc[1:]]

    lines = table(headers(comp), [cells(comp, r) for r in comp.rows])
    lines += [line for note in comp.notes for line in ("", f"Note: {note}.")]
    legend = spread_line(comp)
    lines += ["", legend] if legend else []
    if comp.aggregate:
        lines += ["", "Mean ± std over seeds (sample std; n shown where a seed lacks the metric):", ""]
        lines += table(headers(comp, True), [cells(comp, r, True) for r in comp.aggregate])
    if comp.protocols:
        lines += ["", "Protocols (numbers are comparable only within one protocol):", ""]
        lines += [f"- `{pid}`: {text}" for pid, text in describe_protocols(comp).items()]
    lines += ["", *[f"> warning: {w}" for w in comp.warnings]] if comp.warnings else []
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """`text` as LaTeX typesets it literally; ± and — as math and an em dash, so no package beyond booktabs."""
    out = "".join(_LATEX_SPECIAL.get(c, c) for c in text)
    return out.replace("±", r"$\pm$").replace("—", "---")


def to_latex(comp: Comparison) -> str:
    """A booktabs tabular for a paper: one row per run, or per seed group where there are some (mean ± std over
    seeds), the settings that differ, and per protocol the checkpoint step and metric columns (with_values) under
    a header naming it. What the numbers were measured with (protocols, notes, warnings) goes above as comments."""
    aggregate = bool(comp.aggregate)
    settings = [k for k in comp.settings if not (aggregate and k == "train.seed")]
    left_out, comp = left_out_line(comp), with_values(comp)
    comments = [f"dreamctl compare: {'mean ± std over seeds' if aggregate else 'one row per run'}; needs "
                r"\usepackage{booktabs}; steps, time and img/s: --format csv"]
    if comp.protocols:
        comments += ["Protocols (numbers are comparable only within one protocol):",
                     *[f"  {pid}: {text}" for pid, text in describe_protocols(comp).items()]]
    comments += [f"Note: {note}." for note in comp.notes]
    comments += [legend] if not aggregate and (legend := spread_line(comp)) else []  # what a run row's ± is over
    comments += [f"warning: {w}" for w in comp.warnings] + ([left_out] if left_out else [])
    first = (["group", "seeds"] if aggregate else ["run"]) + settings
    spans = [(pid, protocol_headers(comp, pid)) for pid in protocol_ids(comp)]
    lines = [f"% {line}" for line in comments]
    lines += [r"\begin{tabular}{" + "l" * len(first) + "r" * sum(len(h) for _, h in spans) + "}", r"\toprule"]
    if spans:
        tops, rules, start = [""] * len(first), [], len(first) + 1
        for pid, head in spans:
            tops.append(rf"\multicolumn{{{len(head)}}}{{c}}{{{latex_escape(pid)}}}")
            rules.append(rf"\cmidrule(lr){{{start}-{start + len(head) - 1}}}")
            start += len(head)
        lines += [" & ".join(tops) + r" \\", " ".join(rules)]
    lines += [" & ".join(latex_escape(h) for h in first + [h for _, head in spans for h in head]) + r" \\",
              r"\midrule"]
    for row in comp.aggregate if aggregate else comp.rows:
        body = [row.label, ",".join(map(str, row.seeds))] if aggregate else [row.label]
        body += [_setting_text(row.settings.get(k)) for k in settings]
        body += [c for pid, _ in spans for c in protocol_cells(comp, row, pid)]
        lines.append(" & ".join(latex_escape(c) for c in body) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_csv(comp: Comparison) -> str:
    """Raw numbers, one line per run then one per seed group (column `kind`)."""
    has_std = {c for c in comp.columns if any(r.metrics[c].std is not None for r in comp.rows + comp.aggregate)}
    has_n = bool(comp.aggregate)  # how many seeds are behind a mean: fewer than the group where one lacks it
    head = ["kind", "name", "seeds", "recipe", *comp.settings, "status", "device", "processes", *TOTALS]
    for pid in protocol_ids(comp):
        head.append(f"ckpt @ {pid}")
        for col in (c for c in comp.columns if c[0] == pid):
            # A run's std is its file's own spread (KID subsets, IS splits, LPIPS pairs), a mean's is over seeds:
            # the column beside it names which, so one column of stds is never read as one quantity.
            head += [f"{col[1]} @ {pid}"] + ([f"{col[1]} std @ {pid}", f"{col[1]} std over @ {pid}"]
                                             if col in has_std else [])
            head += [f"{col[1]} n @ {pid}"] if has_n else []
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(head)
    for kind, rows in (("run", comp.rows), ("seed-mean", comp.aggregate)):
        for row in rows:
            line = [kind, row.label, ",".join(map(str, row.seeds)), row.recipe]
            line += [_setting_text(row.settings[k], none="") if k in row.settings else "" for k in comp.settings]
            line += [row.status, row.device, processes_text(row)]
            line += ["" if row.totals[k] is None else row.totals[k] for k in TOTALS]
            for pid in protocol_ids(comp):
                line.append("/".join(map(str, row.eval_steps.get(pid, ()))))
                for col in (c for c in comp.columns if c[0] == pid):
                    m = row.metrics[col]
                    line.append("" if m.value is None else m.value)  # numeric columns stay numeric
                    if col in has_std:
                        line += ["", ""] if m.std is None else [m.std, m.spread or ""]
                    if has_n:
                        line.append("" if m.value is None else m.n)
            writer.writerow(line)
    return buf.getvalue()


def _row_json(row: Row) -> dict[str, Any]:
    metrics: dict[str, dict[str, Any]] = {}
    for (pid, name), m in row.metrics.items():
        group = metrics.setdefault(pid, {"checkpoint_steps": list(row.eval_steps.get(pid, ()))})
        group[name] = ({"missing": m.missing} if m.value is None
                       else {"value": m.value, "std": m.std, "spread": m.spread, "n": m.n})
    return {"name": row.label, "recipe": row.recipe, "status": row.status, "device": row.device,
            "processes": list(row.processes) or "mixed", "seeds": list(row.seeds),
            "paths": list(row.paths), "settings": row.settings, "totals": row.totals, "metrics": metrics}


def to_json(comp: Comparison) -> dict[str, Any]:
    return {"differing_settings": list(comp.settings), "protocols": comp.protocols,
            "runs": [_row_json(r) for r in comp.rows], "seed_aggregates": [_row_json(r) for r in comp.aggregate],
            "notes": list(comp.notes), "warnings": list(comp.warnings)}
