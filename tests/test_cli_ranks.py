"""What each rank of a multi-process run prints and reports: dreamctl.cli.main and the --nproc-per-node
shortcut's exit code, driven in-process with the torchrun environment (RANK, LOCAL_RANK) set by hand."""

from __future__ import annotations

import json
import signal
import warnings

import pytest

from dreamctl import cli
from dreamctl.cli import launch as launch_module
from dreamctl.cli.common import EXIT_CODES_DIR
from dreamctl.cli.launch import launch, workers_code
from dreamctl.errors import DreamctlWarning, StoppedWithMain


@pytest.fixture
def rank(monkeypatch):
    """Set this process up as torchrun worker RANK with local rank LOCAL_RANK."""
    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE", raising=False)
    monkeypatch.delenv(EXIT_CODES_DIR, raising=False)

    def set_rank(global_rank: int, local_rank: int) -> None:
        monkeypatch.setenv("RANK", str(global_rank))
        monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    return set_rank


def _command(monkeypatch, body) -> None:
    """Make `dreamctl ...` run `body` as its command."""
    def app(args=None, prog_name=None, standalone_mode=True):
        body()
    monkeypatch.setattr(cli, "app", app)


def test_a_rank_stopped_because_rank_0_failed_prints_nothing_and_reports_no_error(rank, monkeypatch, tmp_path, capsys):
    """Rank 0 prints why it failed; a node's first rank adding 'rank 1: error: ...' would be a second, wrong cause."""
    rank(1, 0)  # speaks: the first rank of the second node
    monkeypatch.setenv(EXIT_CODES_DIR, str(tmp_path))

    def body():
        raise StoppedWithMain("rank 0 stopped the run")
    _command(monkeypatch, body)
    assert cli.main(["train"]) == 2
    assert capsys.readouterr().err == ""
    assert json.loads((tmp_path / "rank-1.json").read_text()) == {"code": 2, "error": None}


def _warn():
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("the data has only 10 images", DreamctlWarning, stacklevel=1)


def test_a_warning_is_printed_once_per_node_by_its_first_rank(rank, monkeypatch, capsys):
    """Every rank hits the same check: local rank 0 says it, prefixed with its rank off node 0; the others stay quiet."""
    _command(monkeypatch, _warn)
    rank(3, 1)
    assert cli.main(["train"]) == 0
    assert capsys.readouterr().err == ""
    rank(2, 0)
    assert cli.main(["train"]) == 0
    assert capsys.readouterr().err.strip() == "rank 2: warning: the data has only 10 images"


def test_opening_a_folder_as_a_file_says_to_give_a_file(rank, monkeypatch, tmp_path, capsys):
    """EISDIR has its own advice: the path exists, it is just a folder."""
    rank(0, 0)
    _command(monkeypatch, lambda: open(tmp_path))
    assert cli.main(["train"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path}: ") and err.endswith("; it is a folder: give a file")


def test_the_shortcut_exits_0_when_its_workers_finished_despite_a_late_signal(monkeypatch, tmp_path):
    """A SIGTERM that came after every worker finished (torchrun exited 0) is not a stopped run: exit 0, not 143."""
    for torchrun_code, expected in ((0, 0), (143, 143)):
        monkeypatch.setattr(launch_module, "run_child", lambda start, use=None: (torchrun_code, signal.SIGTERM))
        assert launch(2, ["train"]) == expected


def test_the_shortcut_returns_the_code_of_the_one_failing_rank_when_the_others_succeeded(tmp_path, capsys):
    """Rank 1 alone failed with 2 (a fixable error) while rank 0 exited 0: the shortcut exits 2, not torchrun's 1."""
    (tmp_path / "rank-0.json").write_text(json.dumps({"code": 0, "error": None}))
    (tmp_path / "rank-1.json").write_text(json.dumps({"code": 2, "error": "data/shard-3.h5: corrupt"}))
    assert workers_code(1, tmp_path, 2) == 2
    assert capsys.readouterr().err.strip() == "rank 1: error: data/shard-3.h5: corrupt"


def test_a_stop_whose_checkpoint_failed_on_every_worker_exits_with_their_code(monkeypatch, tmp_path):
    """SIGTERM on a full disk: each worker's stop checkpoint fails with 2, as one process exits. 143 would tell
    a scheduler "stopped with a checkpoint, requeue"; the workers' 2 says it was not (crash audit)."""
    import contextlib

    monkeypatch.setattr(launch_module.tempfile, "TemporaryDirectory",
                        lambda prefix: contextlib.nullcontext(str(tmp_path)))
    for worker_code, expected in ((2, 2), (143, 143)):  # failed alike; stopped cleanly
        for rank in (0, 1):
            (tmp_path / f"rank-{rank}.json").write_text(json.dumps({"code": worker_code, "error": None}))
        monkeypatch.setattr(launch_module, "run_child", lambda start, use=None: (1, signal.SIGTERM))
        assert launch(2, ["train"]) == expected
    (tmp_path / "rank-1.json").unlink()  # a worker that left no code (killed): the stop's code
    assert launch(2, ["train"]) == 143
