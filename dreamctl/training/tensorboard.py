"""Optional TensorBoard event files, written beside metrics.jsonl when `tensorboard` is installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any


def available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardSink:
    """Receives train()'s events and writes every numeric field of a log record as a scalar."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def on_event(self, kind: str, payload: dict[str, Any]) -> None:
        if kind != "log":
            return
        for key, value in payload.items():
            if key not in ("step", "time", "total_steps") and isinstance(value, (int, float)):
                self.writer.add_scalar(f"train/{key}", value, payload["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
