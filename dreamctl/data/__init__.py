"""Data: sources -> HDF5 shards + manifest (prepare), and the shard loader.

    from dreamctl.data import list_source, prepare_data, open_split, epoch_batches, to_model_input

Names resolve lazily so that a prepare-data worker process imports only what it needs
(PIL and NumPy), never torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "list_source": "sources",
    "Listing": "sources",
    "SPLITS": "sources",
    "prepare_data": "prepare",
    "Progress": "prepare",
    "PrepareResult": "prepare",
    "verify": "shards",
    "read_manifest": "shards",
    "manifest_sha256": "shards",
    "open_split": "loader",
    "ImageSet": "loader",
    "BatchOrder": "loader",
    "epoch_batches": "loader",
    "steps_per_epoch": "loader",
    "flip_mask": "loader",
    "to_model_input": "loader",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dreamctl.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"dreamctl.data.{_EXPORTS[name]}"), name)
