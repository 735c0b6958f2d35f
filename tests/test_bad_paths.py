"""Output paths that cannot be used, and recipe files that cannot be read: one line, exit 2, before
any work, and nothing already there is changed."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from dreamctl.cli import main
from tiny_runs import TINY, train


def _one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory, synthetic_data_dir) -> Path:
    run = tmp_path_factory.mktemp("bad_paths") / "run"
    assert train(run, synthetic_data_dir, TINY + ["train.max_steps=2"], recipe="tiny") == 0
    return run


def test_a_file_given_as_the_run_folder(tmp_path, synthetic_data_dir, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for run_dir, said in ((afile, f"{afile} is a file, not a folder"),
                          (afile / "sub", f"{afile / 'sub'}: {afile} is a file, not a folder")):
        assert main(["train", "--recipe", "tiny", "--data", str(synthetic_data_dir), "--run-dir", str(run_dir)]) == 2
        assert said in _one_error_line(capsys)
    assert afile.read_text() == "mine"
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "samples").write_text("in the way")
    assert main(["train", "--recipe", "tiny", "--data", str(synthetic_data_dir), "--run-dir", str(blocked)]) == 2
    assert "samples is a file, not a folder" in _one_error_line(capsys)
    assert not (blocked / "recipe.yaml").exists()  # a refused start leaves no run behind to refuse the next one
    assert main(["prepare-data", "--source", "synthetic", "--count", "10", "--out", str(afile / "sub")]) == 2
    assert "Not a directory; a part of it is a file: give a path through folders" in _one_error_line(capsys)


def test_an_os_error_on_a_path_names_the_fix_for_its_kind(run, tmp_path, monkeypatch, capsys):
    """Permission denied, a full disk, a read-only file system: each its own fix, in one line."""
    import errno

    from dreamctl.cli import compare as compare_cli

    for code, fix in ((errno.EACCES, "choose a place you can write to"), (errno.ENOSPC, "the disk is full: free some space, then run the same command again"),
                      (errno.EROFS, "read-only"), (errno.EIO, "check that the path exists")):
        def failing(*args, code=code, **kwargs):
            raise OSError(code, os.strerror(code), str(tmp_path / "x"))

        monkeypatch.setattr(compare_cli, "compare_runs", failing)
        assert main(["compare", str(run)]) == 2
        line = _one_error_line(capsys)
        assert line.startswith(f"error: {tmp_path / 'x'}: {os.strerror(code)}; ") and fix in line


def test_a_full_disk_during_train_says_to_resume_the_run_not_to_train_again(tmp_path, monkeypatch, capsys):
    """`train` again refuses the folder that now holds the run: the fix is `resume`, as the checkpoint writer says."""
    import errno

    from dreamctl.cli import train as train_cli

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "run" / "samples" / "step-00000020.png"))

    monkeypatch.setattr(train_cli, "run_training", full)
    assert main(["train", "--recipe", "tiny", "--run-dir", str(tmp_path / "run"), "--set", "data.path=unused"]) == 2
    assert _one_error_line(capsys).endswith("No space left on device; the disk is full: free some space, then "
                                            "continue the run with `dreamctl resume RUN` (or `train` again if RUN "
                                            "holds no recipe.yaml yet)")


def test_resume_checks_the_folders_it_writes_before_the_first_step(run, capsys):
    log = (run / "metrics.jsonl").read_text()
    samples = run / "samples"
    samples.rename(run / "samples.kept")
    samples.write_text("in the way")
    try:
        assert main(["resume", str(run), "--set", "train.max_steps=4"]) == 2
        assert "is a file, not a folder" in _one_error_line(capsys)
        assert (run / "metrics.jsonl").read_text() == log and len(list((run / "checkpoints").glob("*.pt"))) == 1
    finally:
        samples.unlink()
        (run / "samples.kept").rename(samples)


def test_sample_never_overwrites_a_grid_path_and_checks_it_first(run, tmp_path, capsys):
    keep = tmp_path / "keep.png"
    keep.write_text("precious")
    assert main(["sample", str(run), "-n", "2", "--out", str(tmp_path / "s"), "--grid", str(keep)]) == 2
    assert "exists; delete it or choose another path" in _one_error_line(capsys)
    assert keep.read_text() == "precious" and not (tmp_path / "s").exists()  # nothing drawn


def test_bench_checks_its_output_before_measuring(tmp_path, capsys):
    assert main(["bench", "train", "--recipe", "tiny", "--out", str(tmp_path)]) == 2
    assert "is a folder; give a file path" in _one_error_line(capsys)


def test_unreadable_recipe_files(run, tmp_path, capsys):
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00bin")
    assert main(["train", "--recipe", str(tmp_path / "binary.yaml")]) == 2
    assert "not a UTF-8 text file" in _one_error_line(capsys)
    recipe = run / "recipe.yaml"
    kept = recipe.read_text()
    recipe.write_text("garbage: [\n")
    try:
        assert main(["sample", str(run), "-n", "2", "--out", str(tmp_path / "s")]) == 2
        assert "recipe.yaml: not valid YAML at line 2, column 1" in _one_error_line(capsys)
    finally:
        recipe.write_text(kept)


def test_a_folder_without_a_manifest_gets_the_fix_that_works_for_it(synthetic_data_dir, tmp_path):
    import shutil

    from dreamctl.data.shards import read_manifest
    from dreamctl.errors import DataError

    data = tmp_path / "data"
    shutil.copytree(synthetic_data_dir, data)
    (data / "manifest.json").unlink()
    images = tmp_path / "images"  # the likeliest mistake: the photos given where prepared data goes
    images.mkdir()
    (images / "000001.JPG").write_bytes(b"a photo")
    cases = ((data / "train-00000.h5", "is a file; give the prepared data folder"),
             (data, "holds shards but no manifest.json; prepare it again with the prepare-data command that made it, "
                    "adding --overwrite"),
             (tmp_path / "nothing", "manifest.json not found: give a folder made by prepare-data, or make one with "
                                    "`dreamctl prepare-data --source synthetic|celeba|folder ... --out "),
             (images, f"{images} is a folder of images, not prepared data: prepare it with `dreamctl prepare-data "
                      f"--source folder --root {images} --out NEW_FOLDER` and give NEW_FOLDER instead"))
    for path, said in cases:
        with pytest.raises(DataError, match=re.escape(said)):
            read_manifest(path)
    (data / "progress.json").write_text("{}")
    with pytest.raises(DataError, match="an unfinished prepare .* re-run the same prepare-data command"):
        read_manifest(data)
    a_run = tmp_path / "run"  # `evaluate --data RUN`: prepare-data into it would be refused (crash audit 7)
    a_run.mkdir()
    (a_run / "run.json").write_text("{}")
    with pytest.raises(DataError, match=f"{re.escape(str(a_run))} is a run folder, not prepared data: give the "
                                        "folder its recipe.yaml names as data.path"):
        read_manifest(a_run)


def test_a_run_without_run_json_is_not_sampled_under_a_made_up_id(run, tmp_path, capsys):
    info = run / "run.json"
    info.rename(tmp_path / "run.json")
    try:
        assert main(["sample", str(run), "-n", "2", "--out", str(tmp_path / "s")]) == 2
        assert "run.json is missing or holds no run_id: restore it" in _one_error_line(capsys)
    finally:
        (tmp_path / "run.json").rename(info)


def test_compare_lists_a_folder_given_twice_once(run, capsys):
    assert main(["compare", str(run), str(run), "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)["runs"]) == 1 and f"skipping {run}: listed twice" in captured.err


def test_evaluate_checks_where_it_writes_before_drawing(run, capsys):
    eval_dir = run / "eval"
    if eval_dir.is_dir():
        eval_dir.rename(run / "eval.kept")
    eval_dir.write_text("in the way")
    before = sorted(p.name for p in (run / "samples").iterdir())
    try:
        assert main(["evaluate", str(run), "--num", "4", "--metrics", "swd"]) == 2
        assert "evaluation folder" in _one_error_line(capsys)
        assert sorted(p.name for p in (run / "samples").iterdir()) == before  # nothing drawn
    finally:
        eval_dir.unlink()
        if (run / "eval.kept").is_dir():
            (run / "eval.kept").rename(eval_dir)


def test_an_oserror_about_no_path_is_a_bug_shown_with_its_traceback(monkeypatch, capsys):
    """An OSError with no filename is not the user's path: 'None: ...' would hide where it came from."""
    import errno as errno_module

    from dreamctl import cli

    def app(args=None, prog_name=None, standalone_mode=True):
        raise OSError(errno_module.EPIPE, "Broken pipe")  # e.g. a socket, not a file
    monkeypatch.setattr(cli, "app", app)
    with pytest.raises(OSError, match="Broken pipe") as info:
        cli.main(["train"])
    assert info.value.filename is None and info.traceback  # the original error, where it was raised
    assert "None:" not in capsys.readouterr().err


def test_a_run_folder_that_does_not_exist_is_named_so(tmp_path, capsys):
    """`sample nosuchrun` said "is not a run folder (no recipe.yaml)" of a path that is not there at all."""
    from dreamctl.cli import main

    for command in (["sample", str(tmp_path / "nosuch"), "--num", "2"], ["evaluate", str(tmp_path / "nosuch")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"run folder {tmp_path / 'nosuch'} does not exist; give a folder that `dreamctl train --run-dir` " \
               "wrote" in err
    (tmp_path / "empty").mkdir()
    assert main(["sample", str(tmp_path / "empty"), "--num", "2"]) == 2
    assert "is not a run folder (no recipe.yaml)" in capsys.readouterr().err
    assert not (tmp_path / "nosuch").exists()


def test_a_run_folder_without_its_recipe_is_told_to_restore_it_not_to_train(tmp_path, capsys):
    """It was told to create a run with `train --run-dir`, which refuses a folder holding a run (crash audit 4)."""
    from dreamctl.cli import main

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    for command in (["sample", str(run), "--num", "2"], ["resume", str(run)], ["evaluate", str(run)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"{run / 'recipe.yaml'} is missing, the run's record of its settings: restore it from a copy; " \
               "each checkpoint holds the recipe it was trained with" in err, command
        assert "train --run-dir" not in err
