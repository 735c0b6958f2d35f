"""compare on run folders written here, following docs/run-folder.md: settings, seeds, protocols."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from dreamctl.errors import CheckpointError
from dreamctl.experiments.compare import compare_runs
from dreamctl.experiments.plots import write_figures
from dreamctl.experiments.runs import read_run
from dreamctl.experiments.tables import cells, headers, to_csv, to_json, to_markdown
from dreamctl.protocol import SEED_RULE
from run_folders import P10, P50, write_eval, write_run


def test_settings_that_differ_are_detected(seeded: list[Path]) -> None:
    comp = compare_runs([read_run(d) for d in seeded])
    assert comp.settings == ("loss.lambda_max", "train.seed")
    assert [r.settings for r in comp.rows][-1] == {"loss.lambda_max": 0.5, "train.seed": 0}
    assert headers(comp)[:5] == ["run", "recipe", "loss.lambda_max", "train.seed", "status"]
    row = cells(comp, comp.rows[0])
    assert row[:4] == ["lambda_max-0.3_seed-0", "tiny-conservative", "0.3", "0"]
    assert "12,800" in row  # images seen from run.json


def test_seeds_aggregate_into_mean_and_std(seeded: list[Path]) -> None:
    comp = compare_runs([read_run(d) for d in seeded])
    assert len(comp.aggregate) == 2
    group, single = comp.aggregate
    assert group.label == "lambda_max-0.3" and group.seeds == (0, 1, 2)
    fid = group.metrics[(P50, "fid")]
    assert fid.value == pytest.approx(12.0) and fid.std == pytest.approx(2.0) and fid.n == 3  # sample std
    assert single.metrics[(P50, "fid")].std is None and "train.seed" not in group.settings
    md = to_markdown(comp)
    assert "Mean ± std over seeds" in md and "| 12 ± 2 |" in md


def test_a_seed_lacking_a_metric_is_counted_not_zeroed(tmp_path: Path) -> None:
    dirs = []
    for seed, entry in ((0, {"value": 10.0}), (1, {"value": 12.0}), (2, {"missing": "weights absent"})):
        d = write_run(tmp_path, f"s{seed}", (f"train.seed={seed}",))
        write_eval(d, P50, 50, 200, {"fid": entry})
        dirs.append(d)
    (group,) = compare_runs([read_run(d) for d in dirs]).aggregate
    assert group.metrics[(P50, "fid")].value == pytest.approx(11.0) and group.metrics[(P50, "fid")].n == 2
    assert "(n=2)" in cells(compare_runs([read_run(d) for d in dirs]), group, aggregate=True)[-1]


def test_seeds_evaluated_at_different_checkpoints_are_not_averaged(tmp_path: Path) -> None:
    dirs = []
    for seed, checkpoint in ((0, 100), (1, 200), (2, 200)):
        d = write_run(tmp_path, f"s{seed}", (f"train.seed={seed}",))
        write_eval(d, P50, 50, checkpoint, {"fid": {"value": 10.0 + seed}})
        dirs.append(d)
    comp = compare_runs([read_run(d) for d in dirs])
    fid = comp.aggregate[0].metrics[(P50, "fid")]
    assert fid.value is None and fid.mixed_steps == (100, 200) and "evaluate the lagging ones at their newest checkpoint" in fid.missing
    assert [w for w in comp.warnings if "different checkpoints (steps 100, 200)" in w]
    write_eval(dirs[0], P50, 50, 200, {"fid": {"value": 10.0}})  # evaluated again at the common step
    comp = compare_runs([read_run(d) for d in dirs])
    assert comp.aggregate[0].metrics[(P50, "fid")].value == pytest.approx(11.0) and not comp.warnings
    csv_lines = to_csv(comp).splitlines()
    assert f"fid n @ {P50}" in csv_lines[0].split(",")  # how many seeds are behind a mean, as a column
    assert csv_lines[-1].startswith("seed-mean,s0 (+2),") and csv_lines[-1].endswith(",200,11.0,1.0,seeds,3")


def test_mixed_protocols_are_kept_apart(tmp_path: Path) -> None:
    a = write_run(tmp_path, "a")
    write_eval(a, P50, 50, 200, {"fid": {"value": 20.0}})
    b = write_run(tmp_path, "b", ("loss.alpha=0.5",))
    write_eval(b, P10, 10, 200, {"fid": {"value": 30.0}})
    comp = compare_runs([read_run(a), read_run(b)])
    assert comp.columns == ((P10, "fid"), (P50, "fid"))
    for column in comp.columns:  # no column holds numbers from both protocols
        assert sum(row.metrics[column].value is not None for row in comp.rows) == 1
    ra, rb = comp.rows
    assert ra.metrics[(P50, "fid")].value == 20.0 and rb.metrics[(P10, "fid")].value == 30.0
    assert "not evaluated under protocol" in (ra.metrics[(P10, "fid")].missing or "")
    head = headers(comp)
    assert f"fid @ {P50}" in head and f"fid @ {P10}" in head
    cell = dict(zip(head, cells(comp, ra)))
    assert cell[f"fid @ {P10}"] == "—" and cell[f"fid @ {P50}"] == "20"  # never evaluated there: not "missing"
    md = to_markdown(comp)
    assert f"`{P50}`: sampler=ddim, steps=50" in md and f"`{P10}`: sampler=ddim, steps=10" in md


def test_missing_metric_shows_missing_never_a_number(tmp_path: Path) -> None:
    d = write_run(tmp_path, "a")
    reason = "inception-2015-12-05.pt not found in /nowhere"
    write_eval(d, P50, 50, 200, {"fid": {"missing": reason}, "swd": {"value": 1.25}, "kid": {"value": None}})
    comp = compare_runs([read_run(d)])
    row = dict(zip(headers(comp), cells(comp, comp.rows[0])))
    assert row[f"fid @ {P50}"] == "missing" and row[f"kid @ {P50}"] == "missing" and row[f"swd @ {P50}"] == "1.25"
    data = to_json(comp)
    assert data["runs"][0]["metrics"][P50]["fid"] == {"missing": reason}
    assert data["runs"][0]["metrics"][P50]["swd"]["value"] == 1.25
    csv_row = dict(zip(*[line.split(",") for line in to_csv(comp).splitlines()[:2]]))
    assert csv_row[f"fid @ {P50}"] == ""  # empty, so the column stays numeric


def test_newest_checkpoint_evaluation_is_the_one_tabled(tmp_path: Path) -> None:
    d = write_run(tmp_path, "a")
    write_eval(d, P50, 50, 100, {"fid": {"value": 40.0}}, file="history/step-100.json")
    write_eval(d, P50, 50, 200, {"fid": {"value": 25.0}})
    run = read_run(d)
    assert [r.checkpoint_step for r in run.evals] == [100, 200]
    comp = compare_runs([run])
    assert comp.rows[0].metrics[(P50, "fid")].value == 25.0 and comp.rows[0].eval_steps[P50] == (200,)


def test_truncated_last_metrics_line_is_dropped_and_missing_folder_is_an_error(tmp_path: Path) -> None:
    d = write_run(tmp_path, "a")
    with open(d / "metrics.jsonl", "a") as f:
        f.write('{"step": 225, "lo')
    assert read_run(d).history[-1]["step"] == 200
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="run.json"):
        read_run(tmp_path / "empty")


def test_a_copied_run_folder_is_told_apart_by_its_path(tmp_path: Path) -> None:
    import shutil

    a = write_run(tmp_path, "a")
    copy = tmp_path / "copy-of-a"
    shutil.copytree(a, copy)  # run.json still says name "a"
    labels = [row.label for row in compare_runs([read_run(a), read_run(copy)]).rows]
    assert labels == [f"a ({a})", f"a ({copy})"]


SHA_A, SHA_B = "a" * 8 + "1" * 56, "b" * 8 + "1" * 56


def test_other_reference_data_gets_its_own_column(tmp_path: Path) -> None:
    dirs = []
    for name, sha, fid in (("a", SHA_A, 10.0), ("b", SHA_B, 30.0), ("c", SHA_A, 12.0)):
        d = write_run(tmp_path, name, (f"loss.lambda_max={fid / 100}",))
        write_eval(d, P50, 50, 200, {"fid": {"value": fid}}, ref_manifest_sha256=sha, image_size=32)
        dirs.append(d)
    comp = compare_runs([read_run(d) for d in dirs])
    col_a, col_b = f"{P50} (ref aaaaaaaa)", f"{P50} (ref bbbbbbbb)"
    assert comp.columns == ((col_a, "fid"), (col_b, "fid")) and set(comp.protocols) == {col_a, col_b}
    assert [r.metrics[(col_a, "fid")].value for r in comp.rows] == [10.0, None, 12.0]
    assert [r.metrics[(col_b, "fid")].value for r in comp.rows] == [None, 30.0, None]
    assert f"fid @ {col_b}" in headers(comp)
    written = {p.name for p in write_figures([read_run(d) for d in dirs], tmp_path / "figs")}
    assert {f"metrics-vs-step_{P50}-ref-bbbbbbbb.png", f"final-metrics_{P50}-ref-aaaaaaaa.png"} <= written
    # One reference for all: the column is the bare protocol id; another image size splits it too.
    assert compare_runs([read_run(dirs[0]), read_run(dirs[2])]).columns == ((P50, "fid"),)
    write_eval(dirs[2], P50, 50, 200, {"fid": {"value": 12.0}}, ref_manifest_sha256=SHA_A, image_size=64)
    assert [c for c, _ in compare_runs([read_run(dirs[0]), read_run(dirs[2])]).columns] == [f"{P50} (32px)",
                                                                                             f"{P50} (64px)"]


def test_seeds_that_logged_or_checkpointed_at_other_intervals_are_one_group(tmp_path: Path) -> None:
    same_data = {"data_manifest_sha256": "d" * 64}  # moved: another data.path, the same images
    a = write_run(tmp_path, "a", ("train.seed=0", "train.log_every=5"), info=same_data)
    b = write_run(tmp_path, "b", ("train.seed=1", "train.checkpoint_every=7", f"data.path={tmp_path}"), info=same_data)
    c = write_run(tmp_path, "c", ("train.seed=2", "optim.lr=1e-3"), info=same_data)  # this one changes the weights
    comp = compare_runs([read_run(d) for d in (a, b, c)])
    assert [row.seeds for row in comp.aggregate] == [(0, 1), (2,)]
    assert comp.aggregate[0].settings["data.path"] == "(varies)"  # moved, or other data: shown
    # Bookkeeping that leaves the weights as they are is no column (research review #5: 23 columns wrapped)
    assert "train.log_every" not in comp.settings and "train.checkpoint_every" not in comp.settings
    assert {"train.seed", "optim.lr"} <= set(comp.settings)


def test_runs_on_other_training_data_are_never_one_seed_group(tmp_path: Path) -> None:
    dirs = [write_run(tmp_path, f"s{seed}", (f"train.seed={seed}",), info={"data_manifest_sha256": sha})
            for seed, sha in ((0, SHA_A), (1, SHA_B), (2, SHA_A))]
    for d, fid in zip(dirs, (10.0, 30.0, 12.0)):
        write_eval(d, P50, 50, 200, {"fid": {"value": fid}})
    comp = compare_runs([read_run(d) for d in dirs])
    assert [g.seeds for g in comp.aggregate] == [(0, 2), (1,)]
    assert comp.aggregate[0].metrics[(P50, "fid")].value == pytest.approx(11.0)


def test_a_copied_run_is_not_averaged_as_another_seed(seeded: list[Path], tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(seeded[0], copy)
    comp = compare_runs([read_run(seeded[0]), read_run(copy)])
    assert comp.aggregate == () and len(comp.rows) == 2
    assert any("repeats seed 0" in w and str(copy) in w for w in comp.warnings)
    comp = compare_runs([read_run(d) for d in [*seeded, copy]])  # seeds 0, 1, 2 and a copy of seed 0
    assert [g.seeds for g in comp.aggregate] == [(0, 1, 2), (0,), (0,)]
    assert comp.aggregate[0].metrics[(P50, "fid")].value == pytest.approx(12.0)
    assert "0,0" not in to_markdown(comp)


def test_an_evaluation_drawn_under_the_old_seed_rule_is_warned_about(tmp_path: Path) -> None:
    old, new = write_run(tmp_path, "old"), write_run(tmp_path, "new")
    write_eval(old, P50 + "-seed2", 50, 200, {"fid": {"value": 20.0}}, seed=2)
    write_eval(new, P50 + "-seed2", 50, 200, {"fid": {"value": 20.0}}, seed=2, image_seeds=SEED_RULE)
    comp = compare_runs([read_run(old), read_run(new)])
    assert [w for w in comp.warnings if "seed+i" in w] == [
        f"{old / 'eval' / (P50 + '-seed2.json')} drew seed 2's images as seed+i, overlapping seed 0's set: "
        "run `dreamctl evaluate` again to draw an independent set"]


def test_a_protocol_names_inception_only_where_an_inception_metric_was_computed(tmp_path: Path) -> None:
    from dreamctl.experiments.tables import describe_protocols

    a = write_run(tmp_path, "a")
    write_eval(a, "free", 50, 200, {"swd": {"value": 80.0}, "pixel_fd": {"value": 3.0}})
    write_eval(a, "fid", 20, 200, {"fid": {"value": 12.0}, "swd": {"value": 81.0}})
    text = describe_protocols(compare_runs([read_run(a)]))
    assert "feature_network" not in text["free"] and "resize" not in text["free"] and "steps=50" in text["free"]
    assert "feature_network=" in text["fid"] and "resize=" in text["fid"]


def test_two_seeds_get_a_sample_std(tmp_path: Path) -> None:
    """Two seeds are the commonest group: their spread (sample std, ddof=1, as documented) must be shown."""
    dirs = []
    for seed, fid in ((0, 10.0), (1, 12.0)):
        d = write_run(tmp_path, f"s{seed}", (f"train.seed={seed}",))
        write_eval(d, P50, 50, 200, {"fid": {"value": fid}})
        dirs.append(d)
    (group,) = compare_runs([read_run(d) for d in dirs]).aggregate
    fid = group.metrics[(P50, "fid")]
    assert fid.value == pytest.approx(11.0) and fid.std == pytest.approx(2 ** 0.5) and fid.n == 2


def test_step_1000_is_newer_than_step_900(tmp_path: Path) -> None:
    """Checkpoint steps compare as numbers: a text sort would table the older step-900 evaluation as the newest."""
    d = write_run(tmp_path, "a", step=1000)
    write_eval(d, P50, 50, 900, {"fid": {"value": 40.0}}, file="history/step-900.json")
    write_eval(d, P50, 50, 1000, {"fid": {"value": 25.0}})
    comp = compare_runs([read_run(d)])
    assert comp.rows[0].eval_steps[P50] == (1000,) and comp.rows[0].metrics[(P50, "fid")].value == 25.0


def test_metric_columns_follow_the_documented_metric_order(tmp_path: Path) -> None:
    """Tables list metrics in one fixed order (fid, kid, is, lpips, swd, pixel_fd), not alphabetically."""
    d = write_run(tmp_path, "a")
    write_eval(d, P50, 50, 200, {m: {"value": 1.0} for m in ("swd", "pixel_fd", "kid", "fid")})
    comp = compare_runs([read_run(d)])
    assert [m for _, m in comp.columns] == ["fid", "kid", "swd", "pixel_fd"]
    assert headers(comp)[-5:] == [f"ckpt @ {P50}", f"fid @ {P50}", f"kid @ {P50}", f"swd @ {P50}", f"pixel_fd @ {P50}"]


def test_a_seed_without_the_metric_at_another_step_does_not_block_the_mean(tmp_path: Path) -> None:
    """Only seeds with a value decide whether steps are mixed: a seed lacking the metric is counted out (n=1)."""
    a = write_run(tmp_path, "s0", ("train.seed=0",))
    write_eval(a, P50, 50, 200, {"fid": {"value": 10.0}, "swd": {"value": 1.0}})
    b = write_run(tmp_path, "s1", ("train.seed=1",))
    write_eval(b, P50, 50, 100, {"fid": {"missing": "weights absent"}, "swd": {"value": 1.0}})
    comp = compare_runs([read_run(a), read_run(b)])
    fid = comp.aggregate[0].metrics[(P50, "fid")]
    assert fid.value == pytest.approx(10.0) and fid.n == 1 and fid.mixed_steps == ()
    assert "10 (n=1)" in cells(comp, comp.aggregate[0], aggregate=True)


def test_a_seed_without_wall_time_is_left_out_of_the_mean_totals(tmp_path: Path) -> None:
    """A run.json lacking a total (older runs) must not count as 0 and drag the seeds' mean wall time down."""
    dirs = [write_run(tmp_path, f"s{seed}", (f"train.seed={seed}",), info=info) for seed, info in
            ((0, {"wall_time_s": 60.0, "images_seen": 6000}), (1, {"wall_time_s": 90.0, "images_seen": 18000}),
             (2, {"wall_time_s": None, "img_per_s": None}))]
    (group,) = compare_runs([read_run(d) for d in dirs]).aggregate
    assert group.totals["wall_time_s"] == pytest.approx(75.0) and group.totals["img_per_s"] == pytest.approx(150.0)


def test_img_per_s_is_the_runs_totals_whatever_its_status(tmp_path: Path) -> None:
    """A failed or running run's run.json holds its last checkpoint's speed meter (recent steps of one
    session) as img_per_s; a finished one's, images over wall time. The column is the latter for all."""
    run = write_run(tmp_path, "r", status="failed", info={"images_seen": 6400, "wall_time_s": 64.0, "img_per_s": 999.0})
    (row,) = compare_runs([read_run(run)]).rows
    assert row.totals["img_per_s"] == pytest.approx(100.0)


def test_the_loss_kind_is_a_differing_setting(tmp_path: Path) -> None:
    """Comparing a standard run with a DREAM run, the loss kind is the very setting that differs."""
    a = write_run(tmp_path, "standard", recipe="tiny")
    b = write_run(tmp_path, "dream", recipe="tiny-dream")
    comp = compare_runs([read_run(a), read_run(b)])
    assert "loss.kind" in comp.settings
    assert [row.settings["loss.kind"] for row in comp.rows] == ["standard", "dream"]


def test_wall_time_and_memory_are_formatted_in_readable_units() -> None:
    """Up to two hours a wall time reads in minutes, then hours; memory is in binary units (MiB = 2**20 bytes)."""
    from dreamctl.experiments.tables import format_number

    assert format_number(119.0, "wall_time_s") == "119.0 s"
    assert format_number(3600.0, "wall_time_s") == "60.0 min"
    assert format_number(5400.0, "wall_time_s") == "90.0 min"
    assert format_number(7200.0, "wall_time_s") == "2.00 h"
    assert format_number(3 * 2**20, "peak_memory_bytes") == "3.0 MiB"
    assert format_number(1.5 * 2**30, "peak_memory_bytes") == "1.50 GiB"


def test_csv_leaves_the_seed_count_empty_where_there_is_no_value(tmp_path: Path) -> None:
    """An n next to an empty value would claim seeds behind a number that does not exist."""
    import csv
    import io

    dirs = []
    for seed in (0, 1):
        d = write_run(tmp_path, f"s{seed}", (f"train.seed={seed}",))
        write_eval(d, P50, 50, 200, {"fid": {"missing": "weights absent"}, "swd": {"value": 1.0 + seed}})
        dirs.append(d)
    head, *lines = list(csv.reader(io.StringIO(to_csv(compare_runs([read_run(d) for d in dirs])))))
    rows = [dict(zip(head, line)) for line in lines]
    assert [r["kind"] for r in rows] == ["run", "run", "seed-mean"]
    for r in rows:
        assert r[f"fid @ {P50}"] == "" and r[f"fid n @ {P50}"] == ""
    assert rows[-1][f"swd n @ {P50}"] == "2"


def test_the_protocol_description_says_whether_ema_weights_were_sampled(tmp_path: Path) -> None:
    """EMA and raw weights give other numbers: the protocol line must say which were used."""
    from dreamctl.experiments.tables import describe_protocols

    a = write_run(tmp_path, "a")
    write_eval(a, "raw", 50, 200, {"swd": {"value": 80.0}}, ema=False)
    write_eval(a, "ema", 50, 200, {"swd": {"value": 81.0}})
    text = describe_protocols(compare_runs([read_run(a)]))
    assert "ema=False" in text["raw"] and "ema=True" in text["ema"]
    assert "seed=0" in text["ema"]  # which images: said even for the default base seed (research review #9)


def test_two_inception_files_never_share_a_column(tmp_path: Path) -> None:
    """The protocol id does not name the Inception file: FIDs from two files (feature_network_sha256) get a
    column each, labelled by the hash; an evaluation with no feature metric (SWD only) joins the one network's."""
    net_a, net_b = "c" * 64, "d" * 64
    dirs = []
    for name, sha, metrics in (("a", net_a, {"fid": {"value": 10.0}}), ("b", net_b, {"fid": {"value": 30.0}}),
                               ("c", None, {"swd": {"value": 5.0}})):
        d = write_run(tmp_path, name, (f"loss.lambda_max={len(dirs) / 10 + 0.1}",))
        write_eval(d, P50, 50, 200, metrics, feature_network_sha256=sha)
        dirs.append(d)
    comp = compare_runs([read_run(d) for d in dirs[:2]])
    col_a, col_b = f"{P50} (net cccccccc)", f"{P50} (net dddddddd)"
    assert comp.columns == ((col_a, "fid"), (col_b, "fid"))
    assert [r.metrics[(col_a, "fid")].value for r in comp.rows] == [10.0, None]
    assert [r.metrics[(col_b, "fid")].value for r in comp.rows] == [None, 30.0]
    assert [c for c, _ in compare_runs([read_run(dirs[0]), read_run(dirs[2])]).columns] == [P50, P50]
    assert (f"{P50} (no feature metric)", "swd") in compare_runs([read_run(d) for d in dirs]).columns


def test_the_spread_after_plus_minus_is_named(tmp_path: Path) -> None:
    """± after KID is the std over subsets, after LPIPS that of single pair distances: a legend line says so,
    also for files written before "spread" was recorded; a seed group's ± is over seeds."""
    from dreamctl.experiments.tables import spread_line

    dirs = []
    for seed in (0, 1):
        d = write_run(tmp_path, f"s{seed}", (f"train.seed={seed}",))
        write_eval(d, P50, 50, 200, {"kid": {"value": 0.02, "std": 0.001, "spread": "subsets"},
                                     "lpips": {"value": 0.3 + seed / 10, "std": 0.05}})  # no "spread": an old file
        dirs.append(d)
    comp = compare_runs([read_run(d) for d in dirs])
    assert comp.rows[0].metrics[(P50, "lpips")].spread == "pairs"
    assert comp.aggregate[0].metrics[(P50, "lpips")].spread == "seeds"
    assert comp.aggregate[0].metrics[(P50, "lpips")].std == pytest.approx(0.1 / 2 ** 0.5)
    legend = "± is: kid std over random subsets; lpips std of single pair distances, not an error bar"
    assert spread_line(comp) == legend and f"\n{legend}\n" in to_markdown(comp)
    assert to_json(comp)["runs"][0]["metrics"][P50]["lpips"]["spread"] == "pairs"



def test_binary_bytes_in_a_runs_metrics_log_are_an_error_naming_the_line(tmp_path: Path) -> None:
    d = write_run(tmp_path, "a")
    with open(d / "metrics.jsonl", "ab") as f:
        f.write(b"\x9c\xfe\x01\x80 not a line dreamctl wrote\n")
    with pytest.raises(CheckpointError, match=r"metrics\.jsonl line 9 is not text"):
        read_run(d)


def test_a_value_that_is_not_finite_is_missing_never_averaged(tmp_path: Path) -> None:
    """json writes NaN and Infinity: printed as a score and taken into a mean, they would poison the table."""
    dirs = []
    for seed, entry in ((0, {"value": 10.0}), (1, {"value": float("nan")}), (2, {"value": 12.0, "std": float("inf")})):
        d = write_run(tmp_path, f"s{seed}", (f"train.seed={seed}",))
        write_eval(d, P50, 50, 200, {"fid": entry})
        dirs.append(d)
    comp = compare_runs([read_run(d) for d in dirs])
    assert comp.rows[1].metrics[(P50, "fid")].missing == "no finite numeric value in the evaluation file (nan)"
    assert comp.rows[2].metrics[(P50, "fid")].value == 12.0 and comp.rows[2].metrics[(P50, "fid")].std is None
    (group,) = comp.aggregate
    assert group.metrics[(P50, "fid")].value == pytest.approx(11.0) and group.metrics[(P50, "fid")].n == 2


def test_an_evaluation_without_its_precision_never_shares_a_column_with_fp32(tmp_path: Path) -> None:
    """A file from before precision was recorded has the id of an fp32 one, but may have been drawn in bf16."""
    old, new = write_run(tmp_path, "old", ("loss.lambda_max=0.3",)), write_run(tmp_path, "new", ("loss.lambda_max=0.5",))
    write_eval(old, P50, 50, 200, {"fid": {"value": 10.0}})
    write_eval(new, P50, 50, 200, {"fid": {"value": 12.0}}, precision="fp32")
    comp = compare_runs([read_run(old), read_run(new)])
    assert comp.columns == ((f"{P50} (fp32)", "fid"), (f"{P50} (precision unrecorded)", "fid"))


def test_a_seed_resumed_with_another_learning_rate_is_not_averaged_with_the_others(tmp_path: Path) -> None:
    """recipe.yaml holds only the latest values: run.json's resumes say one seed changed optim.lr at step 100
    (it trained otherwise); a resume that only extended the run or changed bookkeeping does not split it."""
    same = {"data_manifest_sha256": "d" * 64}
    a = write_run(tmp_path, "a", ("train.seed=0",), info=same)
    b = write_run(tmp_path, "b", ("train.seed=1",), info={**same, "resumes": [
        {"step": 100, "set": ["train.epochs=8", "train.log_every=5"], "world_size": 1}]})
    c = write_run(tmp_path, "c", ("train.seed=2",), info={**same, "resumes": [
        {"step": 100, "set": ["optim.lr=0.0001", "train.epochs=8"], "world_size": 1}]})
    comp = compare_runs([read_run(d) for d in (a, b, c)])
    assert [row.seeds for row in comp.aggregate] == [(0, 1), (2,)]
    assert "resumed with" in comp.settings
    assert [row.settings["resumed with"] for row in comp.rows] == [None, None, "step 100: optim.lr=0.0001"]
    assert "step 100: optim.lr=0.0001" in to_markdown(comp)


def test_speed_and_memory_are_averaged_only_over_one_kind_of_device(tmp_path: Path) -> None:
    """A CPU seed's img/s and resident memory and a GPU seed's are no sample of one quantity; the metrics
    still average. A recorded 0 (older runs, not measured) is no number; CPU memory says it is the RSS."""
    cpu = write_run(tmp_path, "s0", ("train.seed=0",), info={"device": "cpu", "peak_memory_bytes": 3 * 2**20})
    gpu = write_run(tmp_path, "s1", ("train.seed=1",), info={"device": "cuda:0", "peak_memory_bytes": 2**30})
    old = write_run(tmp_path, "s2", ("train.seed=2",), info={"device": "cpu", "peak_memory_bytes": 0})
    for d, fid in ((cpu, 10.0), (gpu, 12.0), (old, 14.0)):
        write_eval(d, P50, 50, 200, {"fid": {"value": fid}})
    comp = compare_runs([read_run(d) for d in (cpu, gpu, old)])
    (group,) = comp.aggregate
    assert group.device == "mixed" and group.metrics[(P50, "fid")].value == pytest.approx(12.0)
    assert group.totals["img_per_s"] is None and group.totals["peak_memory_bytes"] is None
    assert group.totals["step"] == 200
    assert [r.totals["peak_memory_bytes"] for r in comp.rows] == [3 * 2**20, 2**30, None]
    memory = headers(comp).index("peak memory")
    assert [cells(comp, r)[memory] for r in comp.rows] == ["3.0 MiB (CPU RSS)", "1.00 GiB", "—"]
    cpu_only = compare_runs([read_run(cpu), read_run(old)])
    assert cpu_only.aggregate[0].device == "cpu" and cpu_only.aggregate[0].totals["peak_memory_bytes"] == 3 * 2**20
    assert "device" in to_csv(comp).splitlines()[0].split(",")


def test_speed_and_memory_are_averaged_only_over_one_process_count(tmp_path: Path) -> None:
    """A seed on 2 processes beside one on 1: their img/s (global) and rank 0's memory (of half the batch) are
    no sample of one quantity, and the tables did not say which run used how many (dist review F1)."""
    one = write_run(tmp_path, "s0", ("train.seed=0",), info={"world_size": 1, "peak_memory_bytes": 2**20})
    two = write_run(tmp_path, "s1", ("train.seed=1",), info={"world_size": 2, "peak_memory_bytes": 2**20})
    moved = write_run(tmp_path, "s2", ("train.seed=2",), info={"world_size": 1, "resumes": [
        {"step": 100, "set": [], "world_size": 2},  # resumed on another count: both
        {"step": 200, "set": [], "world_size": 4}]})  # at its last step: trained nothing on 4
    for d, fid in ((one, 10.0), (two, 12.0), (moved, 14.0)):
        write_eval(d, P50, 50, 200, {"fid": {"value": fid}})
    comp = compare_runs([read_run(d) for d in (one, two, moved)])
    assert [r.processes for r in comp.rows] == [(1,), (2,), (1, 2)]
    (group,) = comp.aggregate
    assert group.processes == () and group.metrics[(P50, "fid")].value == pytest.approx(12.0)
    assert group.totals["img_per_s"] is None and group.totals["wall_time_s"] is None
    assert [cells(comp, r)[headers(comp).index("processes")] for r in comp.rows] == ["1", "2", "1,2"]
    assert cells(comp, group, aggregate=True)[headers(comp, aggregate=True).index("processes")] == "mixed"
    rows = list(csv.DictReader(io.StringIO(to_csv(comp))))
    assert [r["processes"] for r in rows] == ["1", "2", "1,2", "mixed"]
    assert [r["processes"] for r in to_json(comp)["runs"]] == [[1], [2], [1, 2]]
    same = compare_runs([read_run(one), read_run(write_run(tmp_path, "s3", ("train.seed=3",), info={"world_size": 1}))])
    assert same.aggregate[0].totals["img_per_s"] is not None and "processes" not in headers(same)


def test_the_csv_names_what_each_std_is_over(tmp_path: Path) -> None:
    """A run's KID std is over the file's subsets, a mean's over seeds: one column of stds, told apart."""
    import csv
    import io

    dirs = []
    for seed, kid in ((0, 0.010), (1, 0.014)):
        d = write_run(tmp_path, f"s{seed}", (f"train.seed={seed}",))
        write_eval(d, P50, 50, 200, {"kid": {"value": kid, "std": 0.001, "subsets": 10, "subset_size": 50}})
        dirs.append(d)
    head, *lines = list(csv.reader(io.StringIO(to_csv(compare_runs([read_run(d) for d in dirs])))))
    rows = [dict(zip(head, line)) for line in lines]
    assert [(r["kind"], r[f"kid std over @ {P50}"]) for r in rows] == [("run", "subsets"), ("run", "subsets"),
                                                                      ("seed-mean", "seeds")]


def test_every_format_says_dream_conservative_is_the_studys_variant_not_the_papers(tmp_path: Path, capsys) -> None:
    """A row named `conservative` beside `dream` reads as DREAM; DESIGN.md asks for the note wherever it is shown."""
    from dreamctl.cli import main
    from dreamctl.config.schema import STUDY_VARIANT_NOTE

    plain, study = write_run(tmp_path, "plain", recipe="tiny"), write_run(tmp_path, "study")
    assert compare_runs([read_run(plain)]).notes == ()
    comp = compare_runs([read_run(plain), read_run(study)])
    assert comp.notes == (STUDY_VARIANT_NOTE,) and "the CelebA study's variant" in STUDY_VARIANT_NOTE
    assert f"Note: {STUDY_VARIANT_NOTE}." in to_markdown(comp) and to_json(comp)["notes"] == [STUDY_VARIANT_NOTE]
    capsys.readouterr()
    assert main(["compare", str(plain), str(study)]) == 0
    assert f"Note: {STUDY_VARIANT_NOTE}." in " ".join(capsys.readouterr().out.split())
    assert main(["compare", str(plain), str(study), "--format", "csv"]) == 0
    assert f"note: {STUDY_VARIANT_NOTE}" in capsys.readouterr().err
    assert main(["compare", str(plain), "--format", "markdown"]) == 0
    assert "Note:" not in capsys.readouterr().out


def test_a_reference_of_training_images_is_noted_per_column(tmp_path: Path) -> None:
    """FID against images the run trained on rewards memorisation; the eval file said so only in ref_split
    (numbers review #1). compare says it per column, with the counts, and never for a held-out reference."""
    a, b = write_run(tmp_path, "a", recipe="tiny"), write_run(tmp_path, "b", recipe="tiny")
    write_eval(a, P50, 50, 200, {"swd": {"value": 1.0}}, ref_trained_on=200)
    write_eval(b, P50, 50, 200, {"swd": {"value": 2.0}}, ref_trained_on=64)
    write_eval(a, P10, 10, 200, {"swd": {"value": 3.0}}, ref_trained_on=0, ref_split="test")
    notes = compare_runs([read_run(a), read_run(b)]).notes
    assert len(notes) == 1 and notes[0].startswith(f"the reference images of {P50} are images the runs trained "
                                                   "on (64 of 500, 200 of 500)")
    write_eval(b, P50, 50, 200, {"swd": {"value": 2.0}}, ref_trained_on=None)  # a run without its data's hash
    assert "(200 of 500)" in compare_runs([read_run(a), read_run(b)]).notes[0]


def test_kid_and_lpips_columns_say_what_their_numbers_are(tmp_path: Path) -> None:
    """KID's raw MMD² beside papers' ×10³, and a diversity score beside distances to the data (numbers review #8)."""
    from dreamctl.metrics.registry import METRICS

    run = write_run(tmp_path, "a", recipe="tiny")
    write_eval(run, P50, 50, 200, {"fid": {"value": 9.0}, "kid": {"value": 0.01}})
    comp = compare_runs([read_run(run)])
    assert comp.notes == (METRICS["kid"].scale_note,) and "×10³" in to_markdown(comp)
    write_eval(run, P50, 50, 200, {"fid": {"value": 9.0}, "lpips": {"value": 0.3}, "kid": {"value": 0.01}})
    assert compare_runs([read_run(run)]).notes == (METRICS["kid"].scale_note, METRICS["lpips"].scale_note)
    write_eval(run, P50, 50, 200, {"fid": {"value": 9.0}})
    assert compare_runs([read_run(run)]).notes == ()


def test_the_terminal_table_leaves_out_a_metric_no_run_has_a_value_of(tmp_path: Path, capsys) -> None:
    """Four columns of `missing` (no Inception file) squeezed the rest to four characters; the files keep them."""
    from dreamctl.cli import main

    missing = {"missing": "weight file inception-2015-12-05.pt is missing"}
    dirs = [write_run(tmp_path, name, recipe="tiny") for name in ("a", "b")]
    for d, swd in zip(dirs, (1.5, 2.5)):
        write_eval(d, P50, 50, 200, {"fid": missing, "swd": {"value": swd}})
    assert main(["compare", *map(str, dirs)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"left out of the tables, as no run has a value: fid @ {P50}" in out
    assert "missing: a fid" in out and "2.5" in out
    write_eval(dirs[0], P50, 50, 200, {"kid": missing, "swd": {"value": 1.5}})  # no kid value: no note on its scale
    assert compare_runs([read_run(d) for d in dirs]).notes == ()
    assert main(["compare", *map(str, dirs), "--format", "markdown"]) == 0
    assert f"fid @ {P50}" in capsys.readouterr().out  # the markdown, CSV and JSON keep every column


def test_the_csv_leaves_a_setting_the_loss_kind_does_not_read_empty(tmp_path: Path) -> None:
    """`—` made pandas read the whole column as strings; the terminal and markdown keep the dash."""
    import csv
    import io

    plain, study = write_run(tmp_path, "plain", recipe="tiny"), write_run(tmp_path, "study")
    comp = compare_runs([read_run(plain), read_run(study)])
    rows = list(csv.DictReader(io.StringIO(to_csv(comp))))
    assert [r["loss.alpha"] for r in rows] == ["", "0.7"]
    assert "| — |" in to_markdown(comp)


@pytest.mark.parametrize("field, other", [("feature_network", "stand-in: another projection, NOT Inception"),
                                          ("resize", "clean: another resizer to 299")])
def test_files_under_one_id_that_disagree_on_a_protocol_field_are_warned_about(tmp_path: Path, field: str,
                                                                               other: str) -> None:
    """The id names the resize only up to its ':' and no feature network (beyond -standin): two files under one
    id that disagree on either measured otherwise, and compare must say so rather than table them as one
    protocol. Another checkpoint step is what a column compares, not a clash."""
    a, b, c = (write_run(tmp_path, name) for name in ("a", "b", "c"))
    write_eval(a, P50, 50, 200, {"fid": {"value": 10.0}})
    write_eval(b, P50, 50, 200, {"fid": {"value": 11.0}}, **{field: other})
    write_eval(c, P50, 50, 100, {"fid": {"value": 12.0}})
    clashes = [w for w in compare_runs([read_run(d) for d in (a, b, c)]).warnings if "check the evaluator" in w]
    assert clashes == [f"protocol {P50}: b differs on {field}; check the evaluator"]
