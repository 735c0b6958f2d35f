"""The README's Python API example runs as written, at the tiny recipe's size (the substitutions are checked,
so an edit of the example that they no longer fit fails here instead of leaving it untested)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from dreamctl.generate import image_seeds
from tiny_runs import trained_for_sampling

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_example_runs(tmp_path, synthetic_data_dir):
    run, _ = trained_for_sampling(tmp_path, synthetic_data_dir)
    code = _example()
    for old, new in (('load_recipe("conservative", overrides=["train.batch_size=64"])', 'load_recipe("tiny")'),
                     ("(2, 3, 64, 64)", "(2, 3, 32, 32)"), ("steps=50, eta=0.0", "steps=2, eta=0.0"),
                     ('"runs/conservative"', repr(str(run))), ("SampleOptions(steps=50)", "SampleOptions(steps=2)")):
        assert old in code, old
        code = code.replace(old, new)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["images"].shape == (2, 3, 32, 32) and not scope["model"].training
    # Image 1 is its own seed's: drawn alone from seed 1 it is the same (with x_T from the global RNG it was not)
    from dreamctl.diffusion.samplers import sample
    from dreamctl.generate import initial_noise, seed_generators

    g = seed_generators(image_seeds(0, [1]))
    with torch.no_grad():
        alone = sample(scope["model"], scope["schedule"], initial_noise(g, 32), steps=2, eta=0.0, method="ddim",
                       generator=g)
    torch.testing.assert_close(alone, scope["images"][1:2], rtol=1e-4, atol=1e-4)
    pixels = scope["pixels"]
    assert pixels.shape == (8, 32, 32, 3) and pixels.dtype == torch.uint8
    # image i is its own seed's: drawn alone, the first image is the same
    from dreamctl.generate import generate

    m = scope["m"]
    alone = generate(m.net, m.schedule, image_seeds(0, [0]), image_size=32, cfg=m.cfg, device=m.schedule.betas.device)
    assert np.abs(alone[0].numpy().astype(int) - pixels[0].numpy()).max() <= 1
