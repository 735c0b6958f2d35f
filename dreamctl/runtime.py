"""Device, precision, seeding and torch.distributed: set up explicitly, never at import.

One process on a CPU, one GPU, or one process per GPU under torchrun (NCCL on CUDA,
gloo on CPU). Code that needs to know where it runs takes a Runtime.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dreamctl.errors import PeerLost, RunError, StoppedWithMain


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # "fp32" or "bf16"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast where asked for; fp32 runs without autocast."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' is bf16 on CUDA and fp32 on the CPU (bf16 on CPU must be asked for)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise RunError("train.precision bf16: this GPU has no bf16 support; use --set train.precision=fp32")
    return precision


def default_device() -> str:
    """Where a command runs without --device: the GPU when one is visible."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def inference_precision() -> str:
    """The precision of `sample` and `evaluate` without --device (they run with "auto")."""
    return resolve_precision("auto", torch.device(default_device()))


def check_device(device: str | None) -> str:
    """The device a --device value names (None: the default), or a RunError for one this machine lacks."""
    if device is None:
        return default_device()
    if device not in ("cpu", "cuda"):
        raise RunError(f"--device {device}: expected cpu or cuda (torchrun's LOCAL_RANK picks the GPU)")
    if device == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda: no CUDA device is visible; drop the option to run on the CPU")
    return device


def device_args(device: str | None) -> list[str]:
    """The --device option that passes `device` on to a child dreamctl command (none: its default)."""
    return ["--device", device] if device else []


def setup(precision: str = "auto", device: str | None = None) -> Runtime:
    """Pick the device and join the process group when started by torchrun (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(check_device(device))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=collective_timeout())
    return Runtime(dev, resolve_precision(precision, dev), rank, world_size, local_rank)


def resume_command(run_root: Path | str) -> str:
    """How to go on, on as many processes as now: only that continues bit for bit (another count
    sees the same images and noise, but sums its gradients in another order)."""
    world, local = os.environ.get("WORLD_SIZE", "1"), os.environ.get("LOCAL_WORLD_SIZE")
    if world == "1":
        return f"dreamctl resume {run_root}"
    if local == world:  # one node
        return f"dreamctl resume {run_root} --nproc-per-node {world}"
    return f"torchrun (as before, {world} processes) -m dreamctl resume {run_root}"


def teardown(rt: Runtime) -> None:
    if _joined(rt):
        dist.destroy_process_group()


def mix_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of the parts (seed, step, rank, ...)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def processes(rt: Runtime) -> dict[str, int]:
    """What a session ran on, as run.json and each checkpoint record it: its number of processes, and on the
    CPU each one's threads, which change the order of float sums as the count does (resume is bit-identical
    only on both)."""
    return {"world_size": rt.world_size, **({"threads": torch.get_num_threads()} if rt.device.type == "cpu" else {})}


def generator(device: torch.device, *parts: int) -> torch.Generator:
    return torch.Generator(device).manual_seed(mix_seed(*parts))


def _joined(rt: Runtime) -> bool:
    """In a process group (a Runtime can describe a rank without one, as tests of rank slicing do)."""
    return rt.distributed and dist.is_initialized()


def _collective_device(rt: Runtime) -> torch.device:
    """Where a collective's tensor lives: the GPU under NCCL, the CPU under gloo."""
    return rt.device if rt.device.type == "cuda" else torch.device("cpu")


def _reduce(values: list[float], rt: Runtime, op: dist.ReduceOp) -> list[float]:
    """`values` reduced over the ranks by `op`, in one collective; as they are without a process group."""
    if not _joined(rt):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device(rt))
    dist.all_reduce(t, op=op)
    return t.tolist()


def any_rank(flag: bool | Tensor, rt: Runtime) -> bool:
    """True on every rank if it is true on any (so all ranks stop at the same step). A flag computed on the
    device is reduced where it lies: one wait for the answer, not one to read the flag and one for the sum."""
    if not _joined(rt):
        return bool(flag)
    t = torch.as_tensor(flag).detach().reshape(1).to(_collective_device(rt), torch.float32, copy=True)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sum_over_ranks(n: int, rt: Runtime) -> int:
    return int(_reduce([n], rt, dist.ReduceOp.SUM)[0])


def max_over_ranks(n: int, rt: Runtime) -> int:
    return int(_reduce([n], rt, dist.ReduceOp.MAX)[0])


def mean_over_ranks(values: list[float], rt: Runtime) -> list[float]:
    """Each value's mean over the ranks (NaN where any rank's is NaN)."""
    return [v / rt.world_size for v in _reduce(values, rt, dist.ReduceOp.SUM)] if _joined(rt) else values


def _together(rt: Runtime, action: Callable[[], Any], here: bool, elsewhere: Callable[[], BaseException]) -> Any:
    """`action()` where `here`, then every rank learns whether it failed anywhere: a rank whose action
    failed raises its own error, the others `elsewhere()`; no rank waits in a later collective for one
    that has left with an error."""
    failed: BaseException | None = None
    result = None
    if here:
        try:
            result = action()
        except Exception as err:  # any failure: told to the others first, then raised here as it was
            failed = err
    if any_rank(failed is not None, rt):
        raise failed if failed is not None else elsewhere()
    return result


def main_first(rt: Runtime, action: Callable[[], None]) -> None:
    """Run `action` on rank 0 only (claiming the run folder, say), then tell every rank whether it worked;
    the others stop quietly (StoppedWithMain: rank 0 says why)."""
    _together(rt, action, rt.is_main, lambda: StoppedWithMain(f"rank {rt.rank}: rank 0 stopped"))


def on_every_rank(rt: Runtime, action: Callable[[], Any], what: str) -> Any:
    """`action()` on every rank, then whether it worked on all; where it did, a RunError saying that `what`
    failed elsewhere (a data folder missing on another node, say), before any rank goes on to write what a
    retry would find."""
    return _together(rt, action, True, lambda: RunError(
        f"rank {rt.rank}: {what} failed on another process of this job (its error is in its output, or in "
        "torchrun's report); nothing was written"))


TIMEOUT_ENV = "DREAMCTL_COLLECTIVE_TIMEOUT_S"
MAX_TIMEOUT_S = 7 * 24 * 3600


def collective_timeout() -> timedelta:
    """How long a collective waits for the other processes: 30 minutes, or DREAMCTL_COLLECTIVE_TIMEOUT_S.
    It must outlast the longest work rank 0 does while the others wait (main_first: a checkpoint, a
    progress grid); shorter, a process that hangs (or a node cut off) is given up on sooner."""
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return timedelta(minutes=30)
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 1 <= seconds <= MAX_TIMEOUT_S:  # NaN fails too; under a second, every collective would time out
        raise RunError(f"{TIMEOUT_ENV}={text!r}: give the seconds a collective may wait, from 1 to "
                       f"{MAX_TIMEOUT_S:,} (a week), e.g. 600")
    return timedelta(seconds=seconds)


# What a collective says when the process at the other end has gone: gloo's TCP transport (a plain
# RuntimeError), NCCL's remote error; or has not answered within the timeout (gloo's; NCCL's watchdog
# ends the process itself). Not a shape mismatch, which is a bug and keeps its traceback.
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
              "remote process exited or there was a network error")
_PEER_SILENT = ("Timed out waiting",)


def peer_lost(err: BaseException, then: str) -> PeerLost | None:
    """`err` as a one-line PeerLost ending in `then` (what to do) when it is a collective that failed
    because another process of the job has gone; else None. gloo says so in a plain RuntimeError:
    "[.../gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:14758. This is
    typically caused by a remote worker crashing. ..."; the store, in a DistNetworkError."""
    text = str(err).strip()
    first = (re.sub(r"^\[[^\]]*\]\s*", "", text).splitlines() or [""])[0]  # without gloo's source path
    first = first.split(". ")[0][:200]
    if isinstance(err, RuntimeError) and any(phrase in text for phrase in _PEER_SILENT):
        return PeerLost(f"another process of this job did not answer within {collective_timeout()} ({first}): it "
                        f"hangs, is stopped (SIGSTOP), or its node is cut off; stop it if it still runs; {then} "
                        f"({TIMEOUT_ENV} sets the wait)")
    gone = isinstance(err, dist.DistNetworkError) or (isinstance(err, RuntimeError) and any(
        phrase in text for phrase in _PEER_GONE))
    if not gone:
        return None
    return PeerLost(f"lost contact with another process of this job ({first}): it crashed "
                    f"or was stopped, and said why above if it could; {then}")


def from_main(value: Any, rt: Runtime) -> Any:
    """Rank 0's `value` on every rank (a picklable object): what one rank chose, where each choosing for
    itself could differ (the newest checkpoint of a run still writing them)."""
    if not _joined(rt):
        return value
    box = [value if rt.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(rt: Runtime) -> None:
    if _joined(rt):
        dist.barrier()


class Autocast(nn.Module):
    """Runs the wrapped network under the runtime's autocast and returns float32.

    The losses and samplers see a plain (x, t) -> eps module; train()/eval() reach the
    network through this wrapper, and backward runs outside autocast as recommended.
    """

    def __init__(self, net: nn.Module, rt: Runtime):
        super().__init__()
        self.net = net
        self.rt = rt

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        with self.rt.autocast():
            return self.net(x, t).float()


def peak_memory_bytes(device: torch.device) -> int:
    """Peak device memory on CUDA; the process's peak resident memory on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
