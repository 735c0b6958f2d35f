"""The `dreamctl` command line: a thin Typer layer over the core.

Each command lives in its own module and only parses arguments, calls the core and
renders results. DreamctlError from below becomes a one-line message and its exit code (2; 1 for a lost
peer under torchrun).
"""

from __future__ import annotations

import errno
import importlib
import os
import re
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import typer

try:  # typer >= 0.2x vendors click under its own name; earlier typer uses click itself
    from typer._click import exceptions as click_exceptions
except ImportError:
    from click import exceptions as click_exceptions

import dreamctl
from dreamctl import atomic
from dreamctl.cli.common import EXIT_CODES_DIR, err_console, rank_prefix, speaks
from dreamctl.errors import DreamctlError, DreamctlWarning, StoppedWithMain

app = typer.Typer(
    name="dreamctl",
    help="Train and evaluate diffusion models with DREAM-style training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# (command name, module under dreamctl.cli); each module defines `command`.
COMMANDS = [
    ("train", "train"),
    ("resume", "resume"),
    ("prepare-data", "prepare_data"),
    ("sample", "sample"),
    ("evaluate", "evaluate"),
    ("weights", "weights"),
    ("compare", "compare"),
    ("ablate", "ablate"),
    ("bench", "bench"),
]

for _name, _module in COMMANDS:
    _mod = importlib.import_module(f"dreamctl.cli.{_module}")
    app.command(_name, help=_mod.command.__doc__, epilog=getattr(_mod, "EXAMPLES", None))(_mod.command)


def _version(shown: bool) -> None:
    if shown:  # what run.json's dreamctl_version records, to hold a run against the installed tool
        typer.echo(f"dreamctl {dreamctl.__version__}")
        raise typer.Exit(0)


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                          help="Print the version (run.json records the one that wrote a run).")
             ) -> None:
    """Options before the command (--version); the help text is the Typer app's."""


def _one_line_warnings(fallback: Callable[..., None]) -> Callable[..., None]:
    """A showwarning that prints dreamctl's own warnings as one line; others go to `fallback`."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, DreamctlWarning):
            if speaks():
                err_console.print(f"{rank_prefix()}warning: {message}", markup=False, highlight=False, soft_wrap=True)
        else:
            fallback(message, category, filename, lineno, file, line)
    return show


_PATH_FIX = "check that the path exists, is a file or folder as asked, and can be written"
_PATH_FIXES = {
    errno.ENOENT: "check the path: it, or a folder on the way to it, does not exist",
    errno.EACCES: "choose a place you can write to, or change its permissions",
    errno.EPERM: "choose a place you can write to, or change its permissions",
    errno.EROFS: "the file system is read-only: choose another place",
    errno.ENOSPC: "the disk is full: free some space, then {go_on}",
    errno.EISDIR: "it is a folder: give a file",
    errno.ENOTDIR: "a part of it is a file: give a path through folders",
}


def usage_line(err: click_exceptions.ClickException) -> str:
    """A click error (bad option value, unknown option, missing argument) as the one line every other
    dreamctl error is: click's own four lines (usage, hint, blank, error) would bury the error in a log."""
    text = " ".join(line.strip() for line in err.format_message().splitlines() if line.strip())
    text = text.replace(": Value error, ", ": ")  # typer's wording for a value its parser refused
    ctx = getattr(err, "ctx", None)  # only usage errors know the command they came from
    if ctx is None or ctx.command.get_help_option(ctx) is None:
        return text
    return f"{text.removesuffix('.')} (see: {ctx.command_path} {ctx.help_option_names[0]})"


def _peer_lost(err: RuntimeError, then: str) -> DreamctlError | None:
    """`err` as a PeerLost, when it is a collective that failed because another process has gone; else None.
    Only under torchrun, where torch is loaded: a RuntimeError elsewhere is never this."""
    if "WORLD_SIZE" not in os.environ:
        return None
    from dreamctl.runtime import peer_lost

    return peer_lost(err, then)


def _go_on(argv: list[str] | None) -> str:
    """How to go on after a full disk: `train` again refuses a folder that holds its run (recipe.yaml
    written), which `resume` continues; any other command is run again."""
    args = sys.argv[1:] if argv is None else argv
    command = next((a for a in args if not a.startswith("-")), None)
    return ("continue the run with `dreamctl resume RUN` (or `train` again if RUN holds no recipe.yaml yet)"
            if command == "train" else "run the same command again")


def _with_notes(err: BaseException, message: str) -> str:
    """The one-line message plus what was added to the error on its way up (add_note, Python 3.11+)."""
    return "; ".join([message, *getattr(err, "__notes__", ())])


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code instead of exiting."""
    shown = warnings.showwarning
    warnings.showwarning = _one_line_warnings(shown)
    message = None  # the one-line error, if any
    try:
        # Not standalone: click hands its errors to us instead of printing them itself. A typer.Exit (--help,
        # a stopped run's 130/143, torchrun's code) comes back as the result; commands themselves return None.
        result = app(args=argv, prog_name="dreamctl", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    # Bare `dreamctl`: the help itself, with click's exit code (2). Click before 8.2 has no such error: it
    # printed the help and exited 0 itself, which comes back as the result above.
    except getattr(click_exceptions, "NoArgsIsHelpError", ()) as err:
        code = err.exit_code
        if speaks():
            err.show()
    except click_exceptions.ClickException as err:  # usage errors exit 2, as in standalone mode
        code, message = err.exit_code, usage_line(err)
    except typer.Abort:  # EOF at a prompt: click's "Aborted!" and exit code 1
        code, message = 1, "aborted"
    except DreamctlError as err:
        code, message = err.exit_code, None if isinstance(err, StoppedWithMain) else _with_notes(err, str(err))
        # (a StoppedWithMain is rank 0's to print)
    except RuntimeError as err:
        lost = _peer_lost(err, "what was finished is kept: run the same command again to go on")
        if lost is None:  # a bug, with its traceback
            raise
        code, message = lost.exit_code, str(lost)
    except OSError as err:
        if err.filename is None:  # not about a path the user gave: a bug, with its traceback
            raise
        code, message = 2, _with_notes(err, f"{err.filename}: {err.strerror or err}; "
                                            f"{_PATH_FIXES.get(err.errno, _PATH_FIX).format(go_on=_go_on(argv))}")
    finally:
        warnings.showwarning = shown
    if message is not None:  # one line, also when a library's message (h5py's, torch's) runs over several
        message = re.sub(r"\s*\n\s*", " ", message.strip())
    if message is not None and speaks():
        err_console.print(f"{rank_prefix()}error: {message}", markup=False, highlight=False, soft_wrap=True)
    # A worker of the --nproc-per-node shortcut, unless the shortcut was killed and its folder is gone.
    if EXIT_CODES_DIR in os.environ and "RANK" in os.environ and Path(os.environ[EXIT_CODES_DIR]).is_dir():
        atomic.write_json(Path(os.environ[EXIT_CODES_DIR]) / f"rank-{os.environ['RANK']}.json",
                          {"code": code, "error": message})
    if message is not None and "TORCHELASTIC_ERROR_FILE" in os.environ:
        # torchrun's failure report shows this as the rank's "traceback": the only place an error
        # that a silent rank (local rank > 0) hit alone is printed under plain torchrun. The layout is
        # that of torch's own ErrorHandler.record_exception, with our line where its traceback goes.
        line = f"error: {message}"
        atomic.write_json(Path(os.environ["TORCHELASTIC_ERROR_FILE"]), {"message": {
            "message": line, "extraInfo": {"py_callstack": line, "timestamp": str(int(time.time()))}}})
    return code


if __name__ == "__main__":
    sys.exit(main())
