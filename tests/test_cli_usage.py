"""Command-line usage errors (bad option values, unknown options, missing arguments) print one line,
`error: ... (see: dreamctl CMD --help)`, and exit 2, like every other dreamctl error; help and the exit
codes that commands choose themselves (typer.Exit, Ctrl-C) are as before."""

from __future__ import annotations

import json

import pytest
import typer

import dreamctl.cli as cli
from dreamctl.cli import main
from dreamctl.cli.common import EXIT_CODES_DIR


def _one_error_line(capsys: pytest.CaptureFixture) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert captured.out == ""
    return lines[0]


@pytest.mark.parametrize("args,said", [
    (["prepare-data", "--workers", "0"], "error: Invalid value for '--workers': "),
    (["train", "--nproc-per-node", "0"], "error: Invalid value for '--nproc-per-node': "),
    (["bench", "--batch-size", "0"], "error: Invalid value for '--batch-size': "),
    (["sample", "RUN", "-n", "2.5"], "error: Invalid value for '--num' / '-n': "),
    (["compare", "X", "--format", "xml"], "error: Invalid value for '--format': 'xml' is not one of"),
    (["train", "--recipe", "tiny", "--no-such-option"], "error: No such option: --no-such-option"),
    (["sample"], "error: Missing argument"),
    (["train"], "error: Missing option '--recipe'"),
])
def test_a_usage_error_is_one_line_that_names_the_commands_help(args, said, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # whatever a broken check would write lands here, and must not
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert line.startswith(said) and line.endswith(f"(see: dreamctl {args[0]} --help)"), line
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_command_points_at_the_top_level_help(capsys):
    assert main(["no-such-command"]) == 2
    assert _one_error_line(capsys) == "error: No such command 'no-such-command' (see: dreamctl --help)"


def test_help_still_prints_and_exits_0(capsys):
    for args in (["--help"], ["train", "--help"], ["prepare-data", "--help"]):
        assert main(args) == 0
        captured = capsys.readouterr()
        assert captured.out.startswith(f"Usage: dreamctl {' '.join(args[:-1])}".rstrip()) and captured.err == ""


def test_no_arguments_prints_the_help_with_clicks_exit_code(capsys):
    assert main([]) == 2  # click's own code for no_args_is_help, as before
    err = capsys.readouterr().err
    assert err.startswith("Usage: dreamctl [OPTIONS] COMMAND") and "prepare-data" in err and "error:" not in err


def test_an_exit_code_a_command_chooses_is_kept(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DREAMCTL_WEIGHTS", str(tmp_path))  # empty: every file missing
    assert main(["weights", "--check"]) == 2  # typer.Exit(2) from the command
    assert main(["weights"]) == 0
    capsys.readouterr()


def _stub_app(monkeypatch, stop: BaseException) -> None:
    """main() on an app whose one command raises `stop`, as training does when stopped."""
    app = typer.Typer(add_completion=False)

    @app.command()
    def go(n: int = typer.Option(1, min=1)) -> None:
        raise stop

    @app.command()
    def other() -> None:  # two commands: `go` stays a subcommand
        pass

    monkeypatch.setattr(cli, "app", app)


@pytest.mark.parametrize("stop,code", [(typer.Exit(143), 143), (typer.Exit(0), 0), (KeyboardInterrupt(), 130),
                                       (typer.Abort(), 1)])
def test_stops_keep_their_exit_codes(stop, code, monkeypatch, capsys):
    _stub_app(monkeypatch, stop)
    assert main(["go"]) == code
    err = capsys.readouterr().err
    assert err == ("error: aborted\n" if isinstance(stop, typer.Abort) else "")


def test_a_silent_rank_prints_nothing_and_a_worker_leaves_its_code_and_line(tmp_path, monkeypatch, capsys):
    """Under torchrun only local rank 0 speaks; a worker of the --nproc-per-node shortcut leaves the line
    for the launcher, as for any other error."""
    monkeypatch.setenv(EXIT_CODES_DIR, str(tmp_path))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert main(["train", "--recipe", "tiny", "--bogus"]) == 2
    assert capsys.readouterr().err == ""
    left = json.loads((tmp_path / "rank-1.json").read_text())
    assert left == {"code": 2, "error": "No such option: --bogus (see: dreamctl train --help)"}
    monkeypatch.setenv("RANK", "8")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert main(["train", "--recipe", "tiny", "--bogus"]) == 2
    assert capsys.readouterr().err == "rank 8: error: No such option: --bogus (see: dreamctl train --help)\n"



def test_an_error_whose_library_message_runs_over_lines_is_printed_on_one(monkeypatch, capsys):
    """h5py's and torch's messages hold newlines; the error is still one line (a log grep, a CI summary)."""
    from dreamctl.errors import DataError
    from dreamctl.metrics import weights

    def fail() -> None:
        raise DataError("shard x.h5 cannot be read (Unable to open file\n  (truncated file: eof = 10)\n); prepare again")

    monkeypatch.setattr(weights, "status_all", fail)
    assert main(["weights"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["error: shard x.h5 cannot be read (Unable to open file (truncated file: eof = 10) ); "
                                "prepare again"]


def test_version_is_the_one_run_json_records(capsys):
    import dreamctl

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"dreamctl {dreamctl.__version__}\n"


@pytest.mark.parametrize("option, said", [(["--resolution", "0"], "Invalid value for '--resolution'"),
                                          (["--shard-size", "0"], "Invalid value for '--shard-size'"),
                                          (["--crop", "foo"], "--crop 'foo' is not a preset")])
def test_prepare_data_refuses_bad_sizes_and_crops_before_listing_the_source(tmp_path, capsys, option, said):
    """They were refused only after the source was listed (and its split sizes printed)."""
    args = ["prepare-data", "--source", "synthetic", "--count", "20", "--out", str(tmp_path / "out"), *option]
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert said in err and out == "" and not (tmp_path / "out").exists()


def test_every_example_under_help_names_options_its_command_has(capsys):
    """The examples --help shows (a module's EXAMPLES) parse: a renamed option would fail here, not a user."""
    import importlib
    import shlex

    from dreamctl.cli import COMMANDS

    shown = 0
    for name, module in COMMANDS:
        examples = getattr(importlib.import_module(f"dreamctl.cli.{module}"), "EXAMPLES", None)
        for line in (examples or "").splitlines()[2:]:  # after "\b" and "Examples:"
            args = shlex.split(line.split("#")[0])
            assert args[:2] == ["dreamctl", name], line
            assert main([*args[1:], "--help"]) == 0, line  # click parses every option before --help acts
            assert "Examples:" in capsys.readouterr().out
            shown += 1
    assert shown >= 15
