"""dreamctl.atomic: what a write cut short leaves is cleared, and only when its writer is gone."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from conftest import dead_pid
from dreamctl import atomic


def test_a_write_clears_what_a_killed_write_of_the_same_file_left(tmp_path):
    host, dead = socket.gethostname(), dead_pid()
    left = {
        "killed": tmp_path / f".run.json.{dead}@{host}.tmp",  # its writer is gone: removed
        "running": tmp_path / f".run.json.{os.getppid()}@{host}.tmp",  # a write under way (by a live process)
        "other node": tmp_path / f".run.json.{dead}@another-{host}.tmp",  # its pid means nothing here
        "other file": tmp_path / f".recipe.yaml.{dead}@{host}.tmp",  # not this write's to clear
        "older name": tmp_path / f".run.json.{dead}.tmp",  # not one of ours
    }
    for path in left.values():
        path.write_text("half")
    atomic.write_json(tmp_path / "run.json", {"step": 1})
    assert [k for k, p in left.items() if not p.exists()] == ["killed"]
    assert atomic.sweep(tmp_path) == [left["other file"]]  # a whole folder's, as a writer of many files does


def test_a_file_is_written_whole_or_not_at_all(tmp_path):
    target = tmp_path / "grid.png"
    target.write_text("before")
    try:
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert target.read_text() == "before" and [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_a_failed_write_names_the_file_it_was_writing(tmp_path):
    """A full disk raises OSError without a file name; the CLI's one-line message needs it (a bug otherwise)."""
    target = tmp_path / "000001.png"
    with pytest.raises(OSError) as info:
        with atomic.atomic_path(target):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert info.value.filename == str(target) and info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError) as info:  # a read-only disk: open() names the hidden temporary file (crash audit 7)
        with atomic.atomic_path(target) as tmp:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp))
    assert info.value.filename == str(target)
    with pytest.raises(OSError) as info:  # another file's name is left as it is
        with atomic.atomic_path(target):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "other.png"))
    assert info.value.filename == str(tmp_path / "other.png")


@pytest.mark.parametrize("error", [OSError("a message, no errno"), ConnectionResetError(errno.ECONNRESET, "reset")],
                         ids=["no errno", "connection"])
def test_an_error_that_is_not_about_the_file_is_left_as_it_is(tmp_path, error):
    """Naming the file in an OSError without an errno would print "[Errno None] None: path"; a lost
    connection is about the peer, not the file being written."""
    before = str(error)
    with pytest.raises(OSError) as info:
        with atomic.atomic_path(tmp_path / "run.json"):
            raise error
    assert info.value.filename is None and str(info.value) == before

def test_a_temporary_file_of_another_users_live_process_is_left_alone(tmp_path, monkeypatch):
    """os.kill(pid, 0) answers PermissionError for another user's running process: its write is under way."""
    def kill(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(atomic.os, "kill", kill)
    other = tmp_path / f".run.json.{dead_pid()}@{socket.gethostname()}.tmp"
    other.write_text("half")
    atomic.write_json(tmp_path / "run.json", {"step": 1})
    assert atomic.sweep(tmp_path) == [] and other.read_text() == "half"
