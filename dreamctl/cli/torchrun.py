"""torchrun for the --nproc-per-node shortcut: python -m dreamctl.cli.torchrun TORCHRUN-ARGS.

This is torchrun's own `run`, minus the traceback and failure report torchrun prints after a worker
fails: each worker has already printed what failed, in one line, and left its exit code in
EXIT_CODES_DIR. The report is kept for the workers that left no code (killed by a signal, or a crash
with its own traceback): there it is the only word of the failure. It stops (SIGTERM) when the
shortcut dies, and so do its workers when it does; a second Ctrl-C reaches the workers, as it would
one process. No module imports this one, so that `-m` runs it fresh.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

from dreamctl.cli.common import EXIT_CODES_DIR
from dreamctl.signals import children


class _WorkerFailedLines(logging.Filter):
    """Drops torchrun's per-worker lines "failed (exitcode: N) local_rank: ..." and "Sending process N
    closing signal SIGTERM": a failed worker said why itself (the report below covers one that could
    not), and a stopped one says it is checkpointing. Its other lines (a worker killed after the
    shutdown timeout) still print."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("failed (exitcode", "Sending process"))


def pass_on_a_second_ctrl_c() -> None:
    """torchrun starts each worker in a session of its own, out of the terminal's reach, and passes on
    the first signal only (the workers then finish their step and checkpoint); a second Ctrl-C stopped
    at torchrun, and the workers wrote their checkpoint anyway. Now it goes on to each worker's process
    group, where it aborts the checkpoint as in one process. torchrun installs its handler by this
    module-level name when it starts the workers, so replacing the name is enough. Linux only (the
    workers are found in /proc); where none is found, a second Ctrl-C does what torchrun does with it."""
    from torch.distributed.elastic.multiprocessing import api

    torchruns = api._terminate_process_handler
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        workers = children() if received and signum == signal.SIGINT else []  # torchrun's are its workers only
        if workers:
            for pid in workers:
                try:
                    os.killpg(pid, signal.SIGINT)
                except ProcessLookupError:  # ended meanwhile
                    pass
            return
        received.append(signum)
        torchruns(signum, frame)  # raises SignalException: torchrun stops its workers

    api._terminate_process_handler = handler


def torchrun(argv: list[str]) -> int:
    """torchrun ARGV; on a failure, its report of the ranks that left no exit code in EXIT_CODES_DIR only."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(_WorkerFailedLines())
    try:
        run(parse_args(argv))
    except ChildFailedError as err:
        codes_dir = Path(os.environ[EXIT_CODES_DIR])
        silent = {rank: f for rank, f in err.failures.items() if not (codes_dir / f"rank-{rank}.json").is_file()}
        if silent:  # the others said why in their own line; repeated here it would only bury these
            print(ChildFailedError(err.name, silent).format_msg(), file=sys.stderr)
        return 1
    except SignalException as err:  # forwarded by launch(), which reports the signal itself
        return 128 + int(err.sigval)
    return 0


if __name__ == "__main__":
    from dreamctl.signals import PARENT_PID, stop_with_parent

    stop_with_parent()  # SIGTERM (passed on to the workers, who checkpoint) if the shortcut is killed
    os.environ[PARENT_PID] = str(os.getpid())  # and each worker SIGTERM if this process is
    try:
        pass_on_a_second_ctrl_c()
        code = torchrun(sys.argv[1:])
    except KeyboardInterrupt:  # Ctrl-C while torch loads, before torchrun handles signals: nothing started
        code = 130
    sys.exit(code)
