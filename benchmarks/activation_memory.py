"""What one training step saves for backward under CUDA bf16 autocast, without a GPU.

    python benchmarks/activation_memory.py [--recipe conservative] [--batch-size 128]

The model runs on fake CUDA tensors (torch's FakeTensorMode: shapes and dtypes, no data, no
device), so autocast applies CUDA's precision rules, and every tensor autograd saves is counted
once by its storage. This is the activation memory of the step's graph, not a measured peak:
weights, AdamW state, the EMA and the allocator's slack come on top (`dreamctl bench train
--device cuda` measures the real peak). It compares, in one process, the UNet's GroupNorm
(bf16 in, bf16 out) with nn.GroupNorm under autocast (float32 out), the baseline.
"""

from __future__ import annotations

import argparse
import collections
from contextlib import contextmanager
from unittest import mock

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from dreamctl.bench.steps import float32_groupnorm
from dreamctl.config import load_recipe
from dreamctl.models import build_model


@contextmanager
def cuda_autocast_allowed():
    """torch.autocast('cuda') checks for a GPU; on fake tensors it only needs CUDA's precision rules."""
    with mock.patch("torch.cuda.is_available", return_value=True), \
            mock.patch("torch.cuda.is_bf16_supported", return_value=True):
        yield


def saved_bytes(model: nn.Module, batch: int, resolution: int) -> dict[str, int]:
    """Bytes autograd saves in one forward of a training step, by dtype (each storage once)."""
    seen: set[int] = set()
    by_dtype: collections.Counter[str] = collections.Counter()

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in seen:
            seen.add(storage._cdata)
            by_dtype[str(t.dtype).removeprefix("torch.")] += storage.nbytes()
        return t

    x = torch.randn(batch, 3, resolution, resolution, device="cuda")
    t = torch.randint(0, 1000, (batch,), device="cuda")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cuda", dtype=torch.bfloat16):
        model(x, t).float().square().mean()
    return dict(by_dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="conservative")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    res = recipe.data.resolution
    results = {}
    with FakeTensorMode(allow_non_fake_inputs=True):  # fake tensors on a fake CUDA device: no GPU needed
        with torch.device("cuda"):
            model = build_model(recipe.model, res).train()
        with cuda_autocast_allowed():
            results["ours (GroupNorm keeps bf16)"] = saved_bytes(model, args.batch_size, res)
            with float32_groupnorm():
                results["baseline (nn.GroupNorm: float32 out)"] = saved_bytes(model, args.batch_size, res)
    base = sum(results["baseline (nn.GroupNorm: float32 out)"].values())
    print(f"saved for backward, one forward of {args.recipe} at batch {args.batch_size}, CUDA bf16 autocast "
          f"(fake tensors, torch {torch.__version__}):")
    for name, by_dtype in results.items():
        total = sum(by_dtype.values())
        parts = ", ".join(f"{k} {v / 2**30:.2f}" for k, v in sorted(by_dtype.items()))
        print(f"  {name}: {total / 2**30:.2f} GiB ({parts}); {total / base:.2f}x the baseline")


if __name__ == "__main__":
    main()
