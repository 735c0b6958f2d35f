"""metrics.jsonl that dreamctl did not write as it is: binary bytes, a record without its step.

A cut last line (a process killed mid-append) is tolerated; anything else is one error naming the
file and the line, and resume refuses before it rewrites the log."""

from __future__ import annotations

import pytest

from dreamctl.cli import main
from dreamctl.errors import CheckpointError
from dreamctl.records import read_jsonl
from dreamctl.training.rundir import RunDir
from tiny_runs import TINY


def test_binary_bytes_in_the_log_are_an_error_naming_the_line(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_bytes(b'{"step": 1}\n\n\xff\xfe\x80garbage\n{"step": 3}\n')
    with pytest.raises(CheckpointError, match=r"metrics\.jsonl line 3 is not text"):  # the file's line, blanks counted
        read_jsonl(log)
    # A cut leaves a prefix of an ASCII line, never other bytes: binary bytes on the last line are not dropped as one.
    log.write_bytes(b'{"step": 1}\n\x80\x81\x82')
    with pytest.raises(CheckpointError, match=r"metrics\.jsonl line 2 is not text"):
        read_jsonl(log)
    log.write_bytes(b'{"step": 1}\n{"step": 2, "lo')
    assert read_jsonl(log) == [{"step": 1}]


@pytest.mark.parametrize("line", ['{"loss": 1.0}', '[4]', '{"step": "4"}'])
def test_truncating_the_log_refuses_a_record_without_its_step_and_leaves_the_file(tmp_path, line):
    run = RunDir(tmp_path)
    text = f'{{"step": 2}}\n{line}\n{{"step": 4}}\n{{"step": 6, "lo'
    run.metrics_file.write_text(text)
    with pytest.raises(CheckpointError, match=r'metrics\.jsonl line 2 is not a record with a "step"'):
        run.truncate_metrics(after_step=4)
    assert run.metrics_file.read_text() == text
    run.metrics_file.write_text('{"step": 2}\n{"step": 4}\n{"step": 6, "lo')  # the torn last line is still dropped
    run.truncate_metrics(after_step=2)
    assert run.metrics_file.read_text() == '{"step": 2}\n'


@pytest.mark.parametrize("log, says", [
    (b'{"loss": 1}\n{"step": 4}\n', 'line 1 is not a record with a "step"'),
    (b'\x9c\xfe\x01\x80binary\n{"step": 4}\n', "line 1 is not text"),
])
def test_resume_refuses_a_bad_log_in_one_line_and_changes_nothing(tmp_path, synthetic_data_dir, capsys, log, says):
    from dreamctl.config import load_recipe

    run = RunDir(tmp_path / "run")
    run.create(load_recipe("tiny", TINY + ["train.max_steps=6", f"data.path={synthetic_data_dir}"]), {"name": "run"})
    run.metrics_file.write_bytes(log)
    info = run.run_file.read_bytes()
    assert main(["resume", str(run.root)]) == 2
    err = capsys.readouterr().err
    assert f"{run.metrics_file} {says}" in err and "Traceback" not in err
    assert run.metrics_file.read_bytes() == log and run.run_file.read_bytes() == info
