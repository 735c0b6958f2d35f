"""protocol.py: one definition of the settings a sample folder and an evaluation file record, and of their views."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dreamctl.config import SampleConfig
from dreamctl.protocol import SAME_SAMPLES, SAMPLING_FIELDS, Sampling, holds_protocol, protocol_id, same_samples


def test_a_sample_folder_and_an_evaluation_record_the_same_sampling_fields() -> None:
    """sample.json and eval/*.json are written from one Sampling: a setting added to it reaches both, and the
    fields that decide whether an earlier file's metrics are kept."""
    from dreamctl.inference import InferenceModel
    from dreamctl.sample_folder import folder_name, folder_settings

    cfg = SampleConfig(steps=20, eta=0.5, use_ema=False, clip_x0=True)
    m = InferenceModel(None, None, cfg, 300, Path("step300.pt"), 32, "run-1", "f" * 64, "bf16")  # type: ignore
    assert folder_name(m, 2) == "ddim20-eta0.5-raw-step300-seed2-clip-bf16"
    written = ("checkpoint_step", "ema", "sampler", "steps", "eta", "t_start", "clip_x0", "seed", "precision")
    assert SAMPLING_FIELDS == written  # what sample.json and eval files hold: a field lost here loses it in both
    assert tuple(folder_settings(m, 2)) == ("run_id", *written, "image_size", "weights_sha256")
    sampling = Sampling.of(cfg, 300, 2, "bf16")
    assert Sampling.from_record(folder_settings(m, 2)) == sampling
    p = sampling.protocol_fields(100, "test", 50) | {"resize": "clean: PIL bicubic to 299"}
    assert set(written) <= set(p) and set(written) <= set(SAME_SAMPLES)
    assert protocol_id(p, stand_in=False) == "ddim20-eta0.5-raw-n100-test50-clean-clip-bf16-seed2"
    assert holds_protocol(p, sampling.protocol_fields(100, "test", 50))
    assert not holds_protocol(p, Sampling.of(cfg, 300, 2, "fp32").protocol_fields(100, "test", 50))
    # a file from before the seed rule or precision was recorded: evaluated again, whatever its seed
    seed0 = Sampling.of(cfg, 300, 0, "bf16").protocol_fields(100, "test", 50)
    for old in ({k: v for k, v in seed0.items() if k != "image_seeds"}, seed0 | {"precision": None}):
        assert not holds_protocol(old, seed0)


def test_the_same_samples_need_every_sampling_field_and_the_same_weights() -> None:
    p = Sampling.of(SampleConfig(), 100, 0, "fp32").protocol_fields(100, "train", 100)
    assert same_samples(p, dict(p)) and same_samples(p | {"weights_sha256": "a"}, p)  # older files: no hash
    assert not same_samples(p | {"weights_sha256": "a"}, p | {"weights_sha256": "b"})
    for name in ("checkpoint_step", "ema", "sampler", "steps", "eta", "t_start", "clip_x0", "seed", "precision"):
        assert not same_samples(p, p | {name: "other"}), name


def test_protocol_and_compare_import_no_torch() -> None:
    code = "import sys, dreamctl.protocol, dreamctl.experiments.compare; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
