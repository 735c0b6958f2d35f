"""The --nproc-per-node shortcut of train and resume: start `dreamctl ARGS` under torchrun, on this node
(through dreamctl.cli.torchrun, torchrun without its report of errors the workers have already printed)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from dreamctl.cli.common import EXIT_CODES_DIR, console, err_console
from dreamctl.signals import adopting_orphans, child_env, ended, run_child, shell_code


def launch(nproc: int, args: list[str]) -> int:
    """Run `dreamctl ARGS` in `nproc` processes; return their exit code.

    A stop reaches torchrun (signals.run_child), which stops its workers with SIGTERM (each then
    writes a checkpoint); this process waits for all of them instead of leaving orphans, then exits
    128 + the signal, as a single process does (torchrun itself would say 1). Workers that fail all
    with one exit code (2: an error the user can fix) make it ours for the same reason. Should this
    process or torchrun be killed outright (SIGKILL), the one below gets SIGTERM (child_env), so no
    worker trains on unwatched: torchrun starts each in a session of its own, out of reach of a kill of our group.
    """
    torchrun = ["--standalone", f"--nproc-per-node={nproc}", "-m", "dreamctl", *args]
    console.print("starting: torchrun " + shlex.join(torchrun), markup=False)  # a command to copy, for more nodes
    with tempfile.TemporaryDirectory(prefix="dreamctl-exit-") as codes_dir, adopting_orphans():
        code, signum = run_child(lambda: subprocess.Popen([sys.executable, "-m", "dreamctl.cli.torchrun", *torchrun],
                                                          env={**child_env(), EXIT_CODES_DIR: codes_dir}))
        if code < 0:  # torchrun killed outright: its workers got SIGTERM (child_env) and are checkpointing
            err_console.print(f"torchrun was {ended(code)}: waiting for its workers, which stop with a checkpoint",
                              markup=False, highlight=False)
        if signum is not None and code != 0:  # stopped: 128 + the signal, unless every worker failed alike
            # (its stop checkpoint on a full disk: 2, as one process says; 143 would read "stopped with a checkpoint")
            told = workers_code(code, Path(codes_dir), nproc)
            return told if told not in (code, 128 + signum) else 128 + signum
        if code < 0:  # torchrun itself killed by a signal: the shell's 128 + its number, not 256 - it
            return shell_code(code)
        return workers_code(code, Path(codes_dir), nproc)


def workers_code(code: int, codes_dir: Path, nproc: int) -> int:
    """torchrun's exit code `code`, or the one every worker left in `codes_dir` when they agree.

    Only rank 0 printed its error, so an error that another rank alone hit is printed here.
    """
    left = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in codes_dir.glob("rank-*.json")}
    said = left.get(0, {}).get("error")
    for rank, worker in sorted(left.items()):
        if worker["error"] and worker["error"] != said:
            err_console.print(f"rank {rank}: error: {worker['error']}", markup=False, highlight=False, soft_wrap=True)
    failed = {w["code"] for w in left.values()} - {0}  # a worker that died with a traceback left no file
    return failed.pop() if code != 0 and len(left) == nproc and len(failed) == 1 else code
