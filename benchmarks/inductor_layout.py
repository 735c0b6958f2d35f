"""Does torch.compile lay the UNet's convolutions out channels_last by itself? No GPU needed.

    python benchmarks/inductor_layout.py [--recipe conservative] [--batch-size 128]

Inductor decides per graph (`GraphLowering.decide_layout_opt`, torch/_inductor/graph.py) from the
convolutions' shapes alone: an inference graph by their FLOPs, a training graph (forward and
backward) by rules, one of which refuses it when any convolution halves its channels, as the
UNet's decoder does where a skip connection joins (and its output convolution). This traces the recipe's UNet on meta
tensors (shapes only) and asks that function for both kinds of graph, so the answer is torch's
own for the installed version. It says which graphs `train.channels_last` could still change
under `train.compile`.
"""

from __future__ import annotations

import argparse
from unittest import mock

import torch
from torch._inductor.graph import GraphLowering
from torch.fx.experimental.proxy_tensor import make_fx

from dreamctl.config import load_recipe
from dreamctl.models import build_model


def halving_convs(model: torch.nn.Module) -> list[str]:
    """The convolutions inductor's training heuristic refuses channels_last for: 2*out <= in, kernel > 1."""
    return [f"{name} {c.in_channels}->{c.out_channels}" for name, c in model.named_modules()
            if isinstance(c, torch.nn.Conv2d) and 2 * c.out_channels <= c.in_channels and c.kernel_size[0] > 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="conservative")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    res = recipe.data.resolution
    # The meta device has no autocast; the UNet's GroupNorm asks whether it is on. The decision reads shapes only.
    with torch.device("meta"), mock.patch("torch.is_autocast_enabled", return_value=False):
        model = build_model(recipe.model, res)
        x, t = torch.randn(args.batch_size, 3, res, res), torch.randint(0, 1000, (args.batch_size,))
        graph = make_fx(lambda x, t: model(x, t))(x, t)
    print(f"inductor's channels_last decision for {args.recipe} at batch {args.batch_size} (torch {torch.__version__}):")
    for kind, inference in (("inference graph (sampling, dream's estimate pass)", True),
                            ("training graph (forward and backward)", False)):
        chosen = GraphLowering.decide_layout_opt(graph, is_inference=inference)
        print(f"  {kind}: {'channels_last' if chosen else 'as given (contiguous unless the model is channels_last)'}")
    print(f"  convolutions that halve their channels: {', '.join(halving_convs(model)) or 'none'}")


if __name__ == "__main__":
    main()
