"""eval/<protocol_id>.json files: which earlier metrics a new evaluation keeps (evaluation.write_eval)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dreamctl.eval_files import write_eval
from dreamctl.protocol import SEED_RULE, drawn_by_seed_rule

PID = "ddim50-eta0-ema-n500-train500-clean-seed1"
ANY_TIME = {"created": None, "versions": None}  # record() writes neither


def record(step: int, metrics: dict, **protocol: object) -> dict:
    p = {"checkpoint_step": step, "ema": True, "sampler": "ddim", "steps": 50, "eta": 0.0, "t_start": None,
         "clip_x0": False, "num_generated": 500, "seed": 1, "image_seeds": SEED_RULE, "ref_split": "train",
         "ref_num": 500, "ref_manifest_sha256": "a" * 64, "feature_network_sha256": None}
    return {"protocol_id": PID, "protocol": p | protocol, "metrics": metrics, "weights": {}}


def test_seed_zero_draws_the_same_images_under_both_rules() -> None:
    assert drawn_by_seed_rule({"seed": 0}) and drawn_by_seed_rule({"seed": 3, "image_seeds": SEED_RULE})
    assert not drawn_by_seed_rule({"seed": 3}) and not drawn_by_seed_rule({"seed": 3, "image_seeds": "seed+i"})


def test_metrics_of_the_same_samples_are_kept(tmp_path: Path) -> None:
    write_eval(tmp_path, record(100, {"swd": {"value": 2.0}}))
    write_eval(tmp_path, record(100, {"pixel_fd": {"value": 1.0}}))
    saved = json.loads((tmp_path / f"{PID}.json").read_text())
    assert saved["metrics"] == {"pixel_fd": {"value": 1.0}, "swd": {"value": 2.0, "carried_from": ANY_TIME}}


def test_a_kept_metric_keeps_its_settings_and_when_it_was_computed(tmp_path: Path) -> None:
    """`evaluate --metrics pixel_fd` after a full evaluation kept KID's value but not its subsets, nor IS's
    splits, nor the libraries that computed them (numbers review #3)."""
    first = record(100, {"kid": {"value": 0.01}, "is": {"value": 3.0}, "swd": {"value": 2.0}},
                   feature_network_sha256="a" * 64, kid={"num_subsets": 100}, **{"is": {"splits": 10}},
                   swd={"patch": 7}, reference_cache="cache/refstats-x.npz")
    first |= {"created": "2026-11-01T00:00:00Z", "versions": {"clean-fid": "0.1.35"}}
    write_eval(tmp_path, first)
    later = record(100, {"pixel_fd": {"value": 1.0}}) | {"created": "2026-11-02T00:00:00Z", "versions": {"numpy": "2"}}
    write_eval(tmp_path, later)
    write_eval(tmp_path, record(100, {"lpips": {"value": 0.4}}) | {"created": "2026-11-03T00:00:00Z"})
    saved = json.loads((tmp_path / f"{PID}.json").read_text())
    p = saved["protocol"]
    assert (p["kid"], p["is"], p["swd"]) == ({"num_subsets": 100}, {"splits": 10}, {"patch": 7})
    assert p["reference_cache"] == "cache/refstats-x.npz" and p["feature_network_sha256"] == "a" * 64
    computed = {"created": "2026-11-01T00:00:00Z", "versions": {"clean-fid": "0.1.35"}}  # the first file's, twice on
    assert all(saved["metrics"][m]["carried_from"] == computed for m in ("kid", "is", "swd"))
    assert saved["metrics"]["pixel_fd"]["carried_from"]["created"] == "2026-11-02T00:00:00Z"
    assert "carried_from" not in saved["metrics"]["lpips"]


def test_metrics_of_other_samples_are_dropped(tmp_path: Path) -> None:
    """Another reference set, or seed 1 drawn as seed+i (before image_seeds was recorded): not the same images."""
    for earlier in (record(100, {"swd": {"value": 2.0}}, ref_manifest_sha256="b" * 64),
                    record(100, {"swd": {"value": 2.0}}, image_seeds=None)):
        write_eval(tmp_path, earlier)
        write_eval(tmp_path, record(100, {"pixel_fd": {"value": 1.0}}))
        assert json.loads((tmp_path / f"{PID}.json").read_text())["metrics"] == {"pixel_fd": {"value": 1.0}}


def test_a_protocol_id_names_every_setting_that_is_not_the_default() -> None:
    from dreamctl.protocol import protocol_id

    p = {"sampler": "ddim", "steps": 50, "eta": 0.0, "ema": True, "num_generated": 5000, "ref_split": "train",
         "ref_num": 5000, "resize": "clean: PIL bicubic to 299", "t_start": None, "clip_x0": False, "seed": 0}
    assert protocol_id(p, stand_in=False) == "ddim50-eta0-ema-n5000-train5000-clean"
    assert protocol_id(p | {"precision": "fp32"}, stand_in=False) == "ddim50-eta0-ema-n5000-train5000-clean"
    p |= {"eta": 0.5, "ema": False, "t_start": 950, "clip_x0": True, "seed": 3, "precision": "bf16"}
    assert protocol_id(p, stand_in=True) == (
        "ddim50-eta0.5-raw-n5000-train5000-clean-tstart950-clip-bf16-seed3-standin")  # bf16 draws other images


def test_an_earlier_feature_metric_of_another_feature_network_is_dropped(tmp_path: Path) -> None:
    """FID from other weights is not comparable: carrying it into a record of this network would mix two."""
    write_eval(tmp_path, record(100, {"fid": {"value": 9.0}}, feature_network_sha256="a" * 64))
    write_eval(tmp_path, record(100, {"kid": {"value": 0.1}}, feature_network_sha256="b" * 64))
    saved = json.loads((tmp_path / f"{PID}.json").read_text())
    assert saved["metrics"] == {"kid": {"value": 0.1}}
    assert saved["protocol"]["feature_network_sha256"] == "b" * 64
    # The same network's FID is the same measurement: it is kept.
    write_eval(tmp_path, record(100, {"is": {"value": 3.0}}, feature_network_sha256="b" * 64))
    saved = json.loads((tmp_path / f"{PID}.json").read_text())
    assert saved["metrics"] == {"is": {"value": 3.0}, "kid": {"value": 0.1, "carried_from": ANY_TIME}}


def test_evaluating_an_older_checkpoint_leaves_the_main_file_at_the_newest(tmp_path: Path) -> None:
    """<id>.json is what compare reads as the run's result: an older step evaluated later must not replace it."""
    write_eval(tmp_path, record(200, {"swd": {"value": 2.0}}))
    write_eval(tmp_path, record(100, {"swd": {"value": 5.0}}))
    main = json.loads((tmp_path / f"{PID}.json").read_text())
    assert main["protocol"]["checkpoint_step"] == 200 and main["metrics"] == {"swd": {"value": 2.0}}
    for step, value in ((100, 5.0), (200, 2.0)):  # both kept as history
        kept = json.loads((tmp_path / f"{PID}@step{step}.json").read_text())
        assert kept["protocol"]["checkpoint_step"] == step and kept["metrics"] == {"swd": {"value": value}}


def test_seed_zero_asked_for_overrides_the_recipes_eval_seed() -> None:
    """--seed 0 is a real seed: `or` would turn it into the recipe's eval.seed and draw other images."""
    from dreamctl.config.schema import EvalConfig, Recipe
    from dreamctl.evaluation import EvalOptions, resolve_request
    from dreamctl.inference import SampleOptions

    recipe = Recipe(eval=EvalConfig(seed=3, num=8))
    assert resolve_request(recipe, SampleOptions(seed=0), EvalOptions()).seed == 0
    assert resolve_request(recipe, SampleOptions(seed=5), EvalOptions()).seed == 5
    assert resolve_request(recipe, SampleOptions(), EvalOptions()).seed == 3


def test_evaluate_refuses_more_images_than_a_base_seed_names_before_drawing() -> None:
    """A set beyond 2**20 images would fail at image 2**20, hours in: refused with the request."""
    from dreamctl.config.schema import EvalConfig, Recipe
    from dreamctl.errors import ConfigError
    from dreamctl.evaluation import EvalOptions, resolve_request
    from dreamctl.inference import SampleOptions

    recipe = Recipe(eval=EvalConfig(num=8))
    assert resolve_request(recipe, SampleOptions(), EvalOptions(num=2**20, ref_num=8)).num == 2**20
    message = "--num 1048577: evaluate draws 2 (a covariance needs two) to 1,048,576 images"
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve_request(recipe, SampleOptions(), EvalOptions(num=2**20 + 1, ref_num=8))


@pytest.mark.parametrize("asked, message", [
    ({"num": 1}, "--num 1: evaluate draws 2 (a covariance needs two) to 1,048,576 images"),
    ({"num": 0}, "--num 0: evaluate draws 2"),  # not the recipe's default, as `or` would make it
    ({"num": 8, "ref_num": 1}, "--ref-num 1: evaluate needs at least 2 reference images"),
    ({"ref": "validation"}, "--ref 'validation': choose train, valid or test"),
])
def test_evaluate_flags_out_of_range_are_named(asked, message) -> None:
    from dreamctl.config.schema import EvalConfig, Recipe
    from dreamctl.errors import ConfigError
    from dreamctl.evaluation import EvalOptions, resolve_request
    from dreamctl.inference import SampleOptions

    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve_request(Recipe(eval=EvalConfig(num=8)), SampleOptions(), EvalOptions(**asked))


def test_metrics_of_other_weights_at_the_same_step_are_dropped(tmp_path: Path) -> None:
    """The same step, other weights (a checkpoint replaced): not the same samples. A file without the field
    (written before it was recorded) still counts as the same (diff review #8)."""
    write_eval(tmp_path, record(100, {"swd": {"value": 2.0}}, weights_sha256="a" * 64))
    write_eval(tmp_path, record(100, {"pixel_fd": {"value": 1.0}}, weights_sha256="b" * 64))
    assert set(json.loads((tmp_path / f"{PID}.json").read_text())["metrics"]) == {"pixel_fd"}
    write_eval(tmp_path, record(100, {"swd": {"value": 2.0}}))  # no weights_sha256: an older file
    write_eval(tmp_path, record(100, {"pixel_fd": {"value": 1.0}}, weights_sha256="b" * 64))
    assert set(json.loads((tmp_path / f"{PID}.json").read_text())["metrics"]) == {"pixel_fd", "swd"}


def test_a_damaged_earlier_file_is_set_aside_not_the_scores_just_computed(tmp_path: Path) -> None:
    """Found after all the drawing and scoring, it failed the command and the new scores went nowhere
    (crash audit 3): it is kept beside, renamed, and the new file written."""
    from dreamctl.errors import DreamctlWarning

    write_eval(tmp_path, record(100, {"swd": {"value": 2.0}}))
    (main,) = tmp_path.glob("*.json")
    main.write_text('{"protocol_id": ')
    with pytest.warns(DreamctlWarning, match=rf"{re.escape(str(main))} cannot be read as an evaluation file: set aside as "
                                             rf"{re.escape(main.name)}\.corrupt, and the new evaluation written"):
        write_eval(tmp_path, record(100, {"pixel_fd": {"value": 1.0}}))
    assert json.loads(main.read_text())["metrics"] == {"pixel_fd": {"value": 1.0}}  # nothing carried from it
    assert (tmp_path / f"{main.name}.corrupt").read_text() == '{"protocol_id": '


def test_a_reference_count_from_the_recipe_is_named_as_the_recipes_setting() -> None:
    """An eval.ref_num of 1 in a run's recipe.yaml is refused under its own name: the user typed no --ref-num."""
    from dreamctl.config.schema import EvalConfig, Recipe
    from dreamctl.errors import ConfigError
    from dreamctl.evaluation import EvalOptions, resolve_request
    from dreamctl.inference import SampleOptions

    recipe = Recipe(eval=EvalConfig(num=8, ref_num=1))
    with pytest.raises(ConfigError, match=re.escape("eval.ref_num 1: evaluate needs at least 2 reference images")):
        resolve_request(recipe, SampleOptions(), EvalOptions())
    with pytest.raises(ConfigError, match=re.escape("--ref-num 1: evaluate needs at least 2 reference images")):
        resolve_request(Recipe(eval=EvalConfig(num=8)), SampleOptions(), EvalOptions(ref_num=1))
