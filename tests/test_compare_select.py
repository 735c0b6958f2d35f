"""compare --metrics / --protocol (a paper's table holds a few columns of one protocol) and --format latex."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dreamctl.errors import ConfigError
from dreamctl.experiments.compare import compare_runs
from dreamctl.experiments.runs import read_run
from dreamctl.experiments.tables import latex_escape, to_json, to_latex
from dreamctl.metrics.registry import METRICS
from run_folders import P10, P50, write_eval, write_run


def two_protocols(tmp_path: Path) -> list[Path]:
    """Runs a and b with fid, kid and swd under P50, and swd under P10; a's P50 reference is training data."""
    dirs = []
    for name, fid in (("a", 10.0), ("b", 20.0)):
        d = write_run(tmp_path, name, (f"loss.lambda_max={fid / 100}",))
        write_eval(d, P50, 50, 200, {"fid": {"value": fid}, "kid": {"value": fid / 1000}, "swd": {"value": 1.0}},
                   ref_trained_on=500)
        write_eval(d, P10, 10, 200, {"swd": {"value": fid / 5}}, ref_split="test")
        dirs.append(d)
    return dirs


def test_metrics_and_protocols_limit_the_columns_and_everything_said_of_them(tmp_path: Path) -> None:
    runs = [read_run(d) for d in two_protocols(tmp_path)]
    full = compare_runs(runs)
    assert METRICS["kid"].scale_note in full.notes and set(full.protocols) == {P10, P50}
    comp = compare_runs(runs, metrics=["FID", "swd"])
    assert comp.columns == ((P10, "swd"), (P50, "fid"), (P50, "swd"))
    assert METRICS["kid"].scale_note not in comp.notes  # no kid column, no note on kid's scale
    assert set(to_json(comp)["runs"][0]["metrics"][P50]) == {"checkpoint_steps", "fid", "swd"}
    comp = compare_runs(runs, protocols=[P10])
    assert comp.columns == ((P10, "swd"),) and set(comp.protocols) == {P10}
    assert not any("trained on" in note for note in comp.notes)  # the note was about P50's reference
    assert [r.metrics[(P10, "swd")].value for r in comp.rows] == [2.0, 4.0]
    comp = compare_runs(runs, metrics=["kid"], protocols=[P50])
    assert comp.columns == ((P50, "kid"),) and comp.settings == ("loss.lambda_max",)


def test_a_protocol_id_takes_the_columns_its_reference_labels_split_it_into(tmp_path: Path) -> None:
    a, b = write_run(tmp_path, "a"), write_run(tmp_path, "b")
    write_eval(a, P50, 50, 200, {"fid": {"value": 1.0}}, image_size=32)
    write_eval(b, P50, 50, 200, {"fid": {"value": 2.0}}, image_size=64)
    write_eval(b, P10, 10, 200, {"fid": {"value": 3.0}}, image_size=64)
    runs = [read_run(a), read_run(b)]
    assert [c for c, _ in compare_runs(runs, protocols=[P50]).columns] == [f"{P50} (32px)", f"{P50} (64px)"]
    assert [c for c, _ in compare_runs(runs, protocols=[f"{P50} (64px)"]).columns] == [f"{P50} (64px)"]


def test_asking_for_what_no_run_has_is_an_error_naming_what_there_is(tmp_path: Path) -> None:
    """A table left empty by a typo would read as "no data"."""
    runs = [read_run(d) for d in two_protocols(tmp_path)]
    with pytest.raises(ConfigError, match=r"unknown metric\(s\) fdi in --metrics; choose from fid, kid"):
        compare_runs(runs, metrics=["fdi"])
    with pytest.raises(ConfigError, match=r"no run has an evaluation with lpips \(--metrics\); evaluated: fid, kid, swd"):
        compare_runs(runs, metrics=["fid", "lpips"])
    with pytest.raises(ConfigError, match=rf"no protocol ddim50-eta0 \(--protocol\); did you mean {P50}\? "
                                          rf"\(protocols here: {P10}, {P50}\)"):
        compare_runs(runs, protocols=["ddim50-eta0"])
    # A protocol that is there, without the metric: said so, not "no protocol ...; did you mean" another (review M1)
    with pytest.raises(ConfigError, match=rf"no run has an evaluation with fid under {P10} \(--metrics\); "
                                          r"evaluated there: swd$"):
        compare_runs(runs, metrics=["fid"], protocols=[P10])


def test_the_cli_filters_and_refuses_with_exit_2(tmp_path: Path, capsys) -> None:
    from dreamctl.cli import main

    dirs = list(map(str, two_protocols(tmp_path)))
    assert main(["compare", *dirs, "--format", "csv", "--metrics", "fid,kid", "--protocol", P50]) == 0
    head = capsys.readouterr().out.splitlines()[0]
    assert f"fid @ {P50}" in head and f"kid @ {P50}" in head and "swd" not in head and P10 not in head
    assert main(["compare", *dirs, "--protocol", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no protocol nope (--protocol)" in err


def latex_rows(tex: str) -> list[list[str]]:
    """The cells of each table line (not the rules), split at the unescaped &."""
    lines = [line for line in tex.splitlines() if line.endswith(r"\\")]
    return [re.split(r"(?<!\\)&", line[:-2]) for line in lines]


def test_latex_has_one_cell_per_column_under_headers_spanning_each_protocol(tmp_path: Path) -> None:
    comp = compare_runs([read_run(d) for d in two_protocols(tmp_path)])
    tex = to_latex(comp)
    (spec,) = re.findall(r"\\begin\{tabular\}\{(\w+)\}", tex)
    rows = latex_rows(tex)
    assert spec == "ll" + "r" * 6  # run, loss.lambda_max; ckpt+swd under P10; ckpt+fid+kid+swd under P50
    assert all(len(cells) == len(spec) for cells in rows[1:])  # the header row, a and b
    spans = re.findall(r"\\multicolumn\{(\d)\}\{c\}\{([^}]*)\}", rows[0][2] + rows[0][3])
    assert spans == [("2", latex_escape(P10)), ("4", latex_escape(P50))]
    assert r"\cmidrule(lr){3-4} \cmidrule(lr){5-8}" in tex
    assert [c.strip() for c in rows[1]] == ["run", r"loss.lambda\_max", "ckpt", "swd", "ckpt", "fid", "kid", "swd"]
    assert [c.strip() for c in rows[2]] == ["a", "0.1", "200", "2", "200", "10", "0.01", "1"]
    # Everything said of the numbers is above the table, as comments.
    comments = [line for line in tex.splitlines() if line.startswith("%")]
    assert any(P50 in line and "sampler=ddim" in line for line in comments)
    assert any(METRICS["kid"].scale_note in line for line in comments)
    assert not any(line.startswith("%") for line in tex.splitlines()[len(comments):])


def test_latex_of_seed_groups_gives_mean_and_std_in_math_mode(tmp_path: Path) -> None:
    dirs = []
    for seed, fid in ((0, 10.0), (1, 12.0)):
        d = write_run(tmp_path, f"cons_seed-{seed}", (f"train.seed={seed}",))
        write_eval(d, P50, 50, 200, {"fid": {"value": fid}})
        dirs.append(d)
    tex = to_latex(compare_runs([read_run(d) for d in dirs]))
    assert "% dreamctl compare: mean ± std over seeds" in tex
    rows = latex_rows(tex)
    assert [c.strip() for c in rows[1]] == ["group", "seeds", "ckpt", "fid"]
    assert [c.strip() for c in rows[2]] == ["cons", "0,1", "200", r"11 $\pm$ 1.4"]
    assert len(rows) == 3  # the header rows and one group: the runs are in the CSV


def test_latex_escape_leaves_no_special_character_bare() -> None:
    text = latex_escape(r"a_b & 50% of $5 #1 {x} ~y ^z \w — 1 ± 2")
    assert text == (r"a\_b \& 50\% of \$5 \#1 \{x\} \textasciitilde{}y \textasciicircum{}z \textbackslash{}w --- "
                    r"1 $\pm$ 2")


def test_the_metrics_against_step_figure_draws_only_the_metrics_asked_for(tmp_path: Path) -> None:
    from dreamctl.experiments.plots import plot_metrics_vs_step

    runs = [read_run(d) for d in two_protocols(tmp_path)]
    assert plot_metrics_vs_step(runs, P10, "", tmp_path / "swd.png", names={"swd"}) == tmp_path / "swd.png"
    assert plot_metrics_vs_step(runs, P10, "", tmp_path / "fid.png", names={"fid"}) is None  # P10 has no fid


def test_latex_leaves_out_a_column_no_run_has_a_value_of_and_says_so(tmp_path: Path) -> None:
    """An all-`missing` column (no Inception file) has no place in a paper's table; markdown keeps it."""
    a = write_run(tmp_path, "a")
    write_eval(a, P50, 50, 200, {"fid": {"missing": "weight file inception-2015-12-05.pt is missing"},
                                 "swd": {"value": 1.5}})
    tex = to_latex(compare_runs([read_run(a)]))
    assert [c.strip() for c in latex_rows(tex)[1]] == ["run", "ckpt", "swd"]
    assert f"% left out of the tables, as no run has a value: fid @ {P50}" in tex
