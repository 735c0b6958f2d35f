"""compare's figures: written, non-empty, named by protocol, runs told apart; --plot errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamctl.experiments import plots
from dreamctl.experiments.compare import compare_runs
from dreamctl.experiments.plots import plot_lambda, plot_losses, plot_metrics_vs_step, write_figures
from dreamctl.experiments.runs import read_run
from run_folders import P50, write_eval, write_run


def _png_ok(path: Path) -> None:
    assert path.stat().st_size > 10_000
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("L"), dtype=np.float32)
    assert pixels.shape[0] > 200 and pixels.std() > 5  # not a blank canvas


def test_plots_written_non_empty_and_named_by_protocol(seeded: list[Path], tmp_path: Path) -> None:
    write_eval(seeded[0], P50, 50, 100, {"fid": {"value": 30.0}}, file="history/step-100.json")
    runs = [read_run(d) for d in seeded]
    written = write_figures(runs, tmp_path / "figs")
    names = {p.name for p in written}
    assert names == {"loss.png", "lambda.png", f"metrics-vs-step_{P50}.png", f"final-metrics_{P50}.png"}
    for path in written:
        _png_ok(path)


def test_a_figure_cut_short_leaves_the_previous_one(seeded: list[Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """compare --plot into a folder of earlier figures, stopped mid-write: the earlier figure stays whole."""
    from matplotlib.figure import Figure

    runs = [read_run(d) for d in seeded]
    path = plot_losses(runs, tmp_path / "figs" / "loss.png")
    before = path.read_bytes()

    def cut_short(self, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG")  # the first bytes, then the process is stopped
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", cut_short)
    with pytest.raises(KeyboardInterrupt):
        plot_losses(runs, path)
    assert path.read_bytes() == before and [p.name for p in path.parent.iterdir()] == ["loss.png"]


def test_no_figure_when_there_is_nothing_to_draw(tmp_path: Path) -> None:
    d = write_run(tmp_path, "plain", recipe="tiny")  # standard loss: no lambda_mean logged
    assert plot_lambda([read_run(d)], tmp_path / "lambda.png") is None
    assert not (tmp_path / "lambda.png").exists()


def test_cli_compare_json_and_plot(seeded: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from dreamctl.cli import main

    rc = main(["compare", *map(str, seeded), "--format", "json", "--plot", str(tmp_path / "plots")])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["runs"]) == 4 and len(data["seed_aggregates"]) == 2
    assert (tmp_path / "plots" / "loss.png").is_file()
    assert main(["compare", str(seeded[0]), "--format", "markdown"]) == 0
    assert P50 in capsys.readouterr().out
    assert main(["compare", str(seeded[0])]) == 0
    assert main(["compare", str(tmp_path / "nope")]) == 2
    # `compare runs/*` also picks up folders that are not runs: skipped with a note, not fatal.
    (tmp_path / "logs").mkdir()
    capsys.readouterr()
    assert main(["compare", str(seeded[0]), str(tmp_path / "logs"), "--format", "csv"]) == 0
    assert f"skipping {tmp_path / 'logs'}: not a run folder" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "logs")]) == 2




def _drawn(monkeypatch: pytest.MonkeyPatch) -> list:
    """The figures plots would save, kept to look at their lines."""
    figures: list = []
    monkeypatch.setattr(plots, "_save", lambda fig, path, notes=(): figures.append(fig) or path)
    return figures


def test_plots_tell_two_runs_of_one_name_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = write_run(tmp_path, "a")
    write_eval(a, P50, 50, 200, {"fid": {"value": 20.0}})
    copy = write_run(tmp_path / "elsewhere", "a", ("train.seed=1",))
    write_eval(copy, P50, 50, 200, {"fid": {"value": 30.0}})
    runs = [read_run(a), read_run(copy)]
    labels = [r.label for r in compare_runs(runs).rows]
    figures = _drawn(monkeypatch)
    plot_metrics_vs_step(runs, P50, "", tmp_path / "m.png")
    plot_losses(runs, tmp_path / "loss.png")
    curves, losses = (fig.axes[0].get_lines() for fig in figures)
    assert [line.get_label() for line in curves] == labels and [line.get_ydata()[0] for line in curves] == [20, 30]
    assert [line.get_label() for line in losses] == labels


def test_loss_kinds_are_labelled_and_a_run_keeps_its_colour_in_every_panel(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    plain = write_run(tmp_path, "plain", recipe="tiny")  # logs loss only; the conservative one loss_std too
    study = write_run(tmp_path, "study")
    figures = _drawn(monkeypatch)
    plot_losses([read_run(plain), read_run(study)], tmp_path / "loss.png")  # plain lacks two of the panels
    (fig,) = figures
    titles = {ax.get_ylabel(): ax.get_title() for ax in fig.axes if ax.get_visible()}
    assert titles["loss"] == "loss: each run's own objective, not comparable across loss kinds"
    colours = {(line.get_label(), line.get_color()) for ax in fig.axes for line in ax.get_lines()}
    assert colours == {("plain (standard)", "C0"), ("study (dream_conservative)", "C1")}


def test_a_loss_logged_once_is_drawn_as_a_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = write_run(tmp_path, "short", step=25)  # one metrics.jsonl line
    figures = _drawn(monkeypatch)
    assert plot_losses([read_run(d)], tmp_path / "loss.png") is not None
    assert plot_lambda([read_run(d)], tmp_path / "lambda.png") is not None
    for fig in figures:
        (line,) = fig.axes[0].get_lines()
        assert len(line.get_xdata()) == 1 and line.get_marker() not in (None, "None", "", " ")


def test_cli_plot_into_a_file_is_a_one_line_error(seeded: list[Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    from dreamctl.cli import main

    target = tmp_path / "figs.png"
    target.write_text("keep me")
    for plot in (target, target / "sub"):
        capsys.readouterr()
        assert main(["compare", str(seeded[0]), "--plot", str(plot)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --plot") and "folder" in err and len(err.strip().splitlines()) == 1
    assert target.read_text() == "keep me"


def test_figures_replace_their_own_earlier_ones_never_a_file_of_the_same_name(seeded: list[Path], tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    """A rerun of compare --plot redraws its figures; a user's own loss.png in that folder is kept, and the
    refusal comes before any figure is drawn."""
    from dreamctl.cli import main

    figs = tmp_path / "figs"
    assert main(["compare", *map(str, seeded), "--plot", str(figs)]) == 0
    drawn = sorted(p.name for p in figs.iterdir())
    assert "loss.png" in drawn and "lambda.png" in drawn
    assert main(["compare", *map(str, seeded), "--plot", str(figs)]) == 0  # a rerun replaces its own
    assert sorted(p.name for p in figs.iterdir()) == drawn
    mine = tmp_path / "mine"
    mine.mkdir()
    Image.new("RGB", (8, 8)).save(mine / "lambda.png")  # a PNG, but not one of ours
    (mine / "notes.txt").write_text("keep me")
    before = (mine / "lambda.png").read_bytes()
    capsys.readouterr()
    assert main(["compare", *map(str, seeded), "--plot", str(mine)]) == 2
    out, err = capsys.readouterr()
    assert f"figure {mine / 'lambda.png'} exists and is not an earlier output of this command" in err \
        and len(err.splitlines()) == 1
    assert out == ""  # refused before the table: `compare ... > table.csv` left a whole-looking table
    assert (mine / "lambda.png").read_bytes() == before and sorted(p.name for p in mine.iterdir()) == [
        "lambda.png", "notes.txt"]  # loss.png, drawn first, was not written either


def test_final_metric_bars_name_the_checkpoint_step_they_measure(tmp_path: Path, monkeypatch) -> None:
    """Runs stopped at other steps are bars of other models: each bar's label says its step."""
    from dreamctl.experiments.plots import plot_final_metrics

    dirs = []
    for name, step in (("a", 200), ("b", 100)):
        d = write_run(tmp_path, name, (f"loss.lambda_max={step / 1000}",), step=step)
        write_eval(d, P50, 50, step, {"fid": {"value": step / 10}})
        dirs.append(d)
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path, notes=(): figures.append(fig) or path)
    comp = compare_runs([read_run(d) for d in dirs])
    plot_final_metrics(comp, P50, "", tmp_path / "f.png")
    (ax,) = [a for a in figures[0].axes if a.get_visible()]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a\n@ step 200", "b\n@ step 100"]


def test_every_figure_of_a_dream_conservative_run_says_it_is_the_studys_variant(seeded: list[Path], tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The note travels with the figure (its bottom label), as figures are shared without the table."""
    write_eval(seeded[0], P50, 50, 100, {"fid": {"value": 30.0}}, file="history/step-100.json")
    figures: list = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path, notes=(): figures.append(fig) or save(fig, path, notes))
    runs = [read_run(d) for d in seeded]
    assert runs[0].recipe.loss.kind == "dream_conservative" and len(write_figures(runs, tmp_path / "figs")) == 4
    assert all("the CelebA study's variant" in " ".join(fig.get_supxlabel().split()) for fig in figures)
    plain = read_run(write_run(tmp_path, "plain", recipe="tiny"))
    figures.clear()
    write_figures([plain], tmp_path / "plain-figs")
    assert figures and all(fig.get_supxlabel() == "" for fig in figures)


def test_runs_of_other_batch_sizes_are_plotted_against_images_seen(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A step of 64 images beside one of 16 compares nothing: the study compares at equal images seen
    (research review #7). One batch size: the step, as before."""

    big, small = write_run(tmp_path, "big", recipe="tiny"), write_run(tmp_path, "small", ("train.batch_size=16",))
    for d in (big, small):
        write_eval(d, P50, 50, 200, {"swd": {"value": 2.0}})
    figures = _drawn(monkeypatch)
    runs = [read_run(big), read_run(small)]
    plot_losses(runs, tmp_path / "loss.png")
    plot_metrics_vs_step(runs, P50, "", tmp_path / "m.png")
    (loss, metric) = figures
    assert loss.axes[0].get_xlabel() == "images seen (the runs' batch sizes differ)"
    assert [line.get_xdata()[-1] for line in loss.axes[0].get_lines()] == [200 * 64, 200 * 16]
    assert metric.axes[0].get_xlabel().startswith("images seen")
    assert metric._suptitle.get_text().startswith(f"Metrics against images seen — protocol {P50}")
    assert [line.get_xdata()[0] for line in metric.axes[0].get_lines()] == [200 * 64, 200 * 16]
    plot_losses([read_run(big)], tmp_path / "one.png")
    assert figures[-1].axes[0].get_xlabel() == "training step"
