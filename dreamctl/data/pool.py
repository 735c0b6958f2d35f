"""prepare-data's worker processes: chunks decoded in parallel, results in order, and a pool that
stops cleanly. A stop (Ctrl-C, SIGTERM to the group) is the parent's alone to handle; workers finish
the chunk in hand; a worker's death stops the run with one line; and no worker outlives the parent.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from multiprocessing.connection import wait

from dreamctl.data.decode import Chunk, ChunkResult, load_chunk
from dreamctl.errors import DataError
from dreamctl.signals import ended, on_parent_death


def decoded(chunks: list[Chunk], workers: int) -> Iterator[ChunkResult]:
    """load_chunk of each chunk, in order, by `workers` processes; at most 2*workers chunks in flight,
    so memory stays flat. Closing the iterator early stops the pool."""
    if workers <= 1:
        yield from map(load_chunk, chunks)
        return
    # spawn: the workers are this process's own children, started clean (never a fork of a parent
    # that holds threads or open files); a forkserver between would die of a SIGTERM to the group
    # and hide its workers from _stop_pool.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_leave_stops_to_parent, initargs=(os.getpid(),))
    it = iter(chunks)
    window = deque(pool.submit(load_chunk, c) for c in islice(it, 2 * workers))
    try:
        while window:
            result = window.popleft().result()
            window.extend(pool.submit(load_chunk, c) for c in islice(it, 1))
            yield result
    except BrokenProcessPool as err:  # a worker died: the OOM killer, or a decoder that crashed
        died = _stop_pool(pool)
        raise DataError(f"a decoding worker died ({_death(died[0]) if died else err}); finished shards are kept: "
                        "re-run the same command to continue, with fewer --workers if memory ran out") from None
    except BaseException:  # a stop, an error, or the caller closing early: the chunks in flight are not wanted
        _stop_pool(pool)
        raise
    pool.shutdown(wait=True)


def _stop_pool(pool: ProcessPoolExecutor, grace_s: float = 30.0) -> list[int]:
    """Cancel the chunks not yet started and let each worker finish the one in hand (at most a few
    seconds), then kill any still running; returns the exit codes of workers that had died before.

    Killed at once, a worker could die halfway through sending its result, and the pool's reader
    thread, and with it the interpreter's exit, would wait forever for the rest. Once a worker has
    died, though, the pool reads no more results: the others, blocked handing theirs over, are killed.
    """
    workers = list((pool._processes or {}).values())  # the executor has no public handle on them
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + grace_s
    while True:
        # One reading of the exit codes per round. The pool's own thread reaps workers too, and a worker it
        # has just reaped can read None here, then not alive a moment later: waiting only on the "alive" ones
        # would then sit out the whole grace beside a survivor blocked on its result. Its sentinel, waited on
        # with the others, is ready at once, and the next round reads its code.
        codes = [w.exitcode for w in workers]
        died = [c for c in codes if c not in (None, 0)]
        running = [w.sentinel for w, c in zip(workers, codes) if c is None]
        if died or not running or time.monotonic() >= deadline:
            break
        wait(running, timeout=deadline - time.monotonic())  # until one exits
    for worker in workers:
        worker.kill()  # not terminate(): the workers ignore SIGTERM
        worker.join()
    return died


def _death(exitcode: int) -> str:
    """How a worker died, from its exit code (minus the signal that killed it)."""
    return ended(exitcode) + (", as by the out-of-memory killer" if exitcode == -signal.SIGKILL else "")


def _leave_stops_to_parent(parent: int) -> None:
    """Workers ignore Ctrl-C and SIGTERM (a terminal or scheduler signals the whole process group):
    the parent stops the pool, after the chunks in hand. A worker interrupted while it held the task
    queue's lock would leave the others, and the parent's exit, waiting on that lock forever. Should
    the parent die without stopping them (SIGKILL), they die with it rather than decode on as orphans."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    on_parent_death(signal.SIGKILL, parent)
