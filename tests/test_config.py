"""Recipes: the shipped ones, inheritance, overrides and the errors a user sees."""

import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from pydantic import ValidationError

from dreamctl.cli import main
from dreamctl.config import (
    RECIPES_DIR,
    DiffusionConfig,
    Recipe,
    SampleConfig,
    load_recipe,
    recipe_from_file,
    recipe_to_yaml,
)
from dreamctl.errors import ConfigError
from dreamctl.models import build_model, count_parameters


@pytest.mark.parametrize("name", sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
def test_every_shipped_recipe_loads(name):
    recipe = load_recipe(name)
    assert recipe.name == name


def test_conservative_is_the_study_table():
    r = load_recipe("conservative")
    assert (r.diffusion.schedule, r.diffusion.num_timesteps) == ("cosine", 1000)
    assert (r.optim.lr, r.optim.betas, r.optim.weight_decay, r.optim.grad_clip) == (2e-4, (0.9, 0.999), 0.01, 1.0)
    assert (r.train.batch_size, r.train.epochs, r.data.limit, r.optim.ema_decay) == (128, 100, 50000, 0.9999)
    assert r.loss.kind == "dream_conservative"
    assert (r.loss.start_epoch, r.loss.lambda_min, r.loss.lambda_max, r.loss.alpha, r.loss.ramp_epochs) == (
        10, 0.0, 0.5, 0.7, 20)
    assert (r.sample.sampler, r.sample.steps) == ("ddim", 50)
    params = count_parameters(build_model(r.model, r.data.resolution))
    assert abs(params - 54.85e6) / 54.85e6 < 0.005


def test_aggressive_and_published_recipes():
    a = load_recipe("aggressive")
    assert a.loss.kind == "dream_conservative"  # its loss section adds to conservative's, not replaces it
    assert (a.loss.start_epoch, a.loss.lambda_max, a.loss.alpha, a.optim.lr) == (2, 0.7, 0.5, 1e-4)
    assert (a.diffusion.schedule, a.diffusion.beta_start, a.diffusion.beta_end) == ("linear", 1e-4, 0.02)
    assert (load_recipe("dream").loss.kind, load_recipe("dream").loss.p) == ("dream", 1.0)
    ip = load_recipe("ddpm-ip")
    assert (ip.loss.kind, ip.loss.gamma) == ("input_perturbation", 0.1)
    assert load_recipe("baseline").loss.kind == "standard"


def test_tiny_is_small():
    r = load_recipe("tiny")
    assert r.data.resolution <= 32
    assert count_parameters(build_model(r.model, r.data.resolution)) < 3e6


def test_overrides_and_path(tmp_path: Path):
    r = load_recipe("conservative", ["train.batch_size=64", "loss.lambda_max=0.3", "model.channel_mult=[1,2,4,4]"])
    assert (r.train.batch_size, r.loss.lambda_max, r.model.channel_mult) == (64, 0.3, (1, 2, 4, 4))
    child = tmp_path / "mine.yaml"
    child.write_text("extends: aggressive\ntrain:\n  epochs: 3\n")
    r = load_recipe(str(child))
    assert (r.name, r.train.epochs, r.loss.alpha, r.optim.lr) == ("mine", 3, 0.5, 1e-4)
    assert r.description == ""  # aggressive's would describe settings this file may change


def test_a_recipe_never_inherits_its_parents_name(tmp_path: Path):
    """The name is the run folder's default and compare's recipe column: the file's own, even when the
    recipe it extends states one."""
    (tmp_path / "parent.yaml").write_text("name: parentname\ndescription: the parent\nextends: tiny\n")
    (tmp_path / "child.yaml").write_text("extends: parent.yaml\ntrain:\n  epochs: 3\n")
    child = load_recipe(str(tmp_path / "child.yaml"))
    assert (child.name, child.description, child.data.resolution) == ("child", "", 32)
    assert load_recipe(str(tmp_path / "parent.yaml")).name == "parentname"


@pytest.mark.parametrize("overrides,needle", [
    (["train.batchsize=3"], "train.batchsize: unknown key; did you mean 'batch_size'? (train keys: batch_size,"),
    (["train.batch_size=abc"], "train.batch_size"),
    (["loss.kind=magic"], "loss.kind"),
    (["loss.lambda_min=0.6", "loss.lambda_max=0.5"], "lambda_min must not exceed lambda_max"),
    (["model.attention_resolutions=[12]"], "model.attention_resolutions"),
    (["sample.sampler=ddpm"], "sample.sampler 'ddpm' runs all T steps"),
    (["train.batch_size"], "bad override 'train.batch_size'"),
    (["nosection.key=1"], "nosection: unknown key"),
    # values the schema let through once, each failing later with a traceback from torch
    (["optim.betas=[2,2]"], "optim.betas.0: Input should be less than 1"),
    (["model.channel_mult=[0,1]"], "model.channel_mult.0: Input should be greater than 0"),
    (["model.channel_mult=[]"], "model.channel_mult"),
    (["train.seed=99999999999999999999"], "train.seed"),
    (["train.seed=-1"], "train.seed"),
    (["model.channels=15"], "level width 60 (model.channels 15 x model.channel_mult) must be divisible by model.groups"),
    # values the schema let through once, each a traceback from torch on a huge allocation or a shape
    (["model.channels=100000"], "model.channels: Input should be less than or equal to 512"),
    (["model.channel_mult=[1,2,400]"], "model.channel_mult.2: Input should be less than or equal to 8"),
    (["model.num_res_blocks=100"], "model.num_res_blocks: Input should be less than or equal to 8"),
    (["model.time_features=3"], "model.time_features: Input should be a multiple of 2"),
    (["model.time_features=100000000"], "model.time_features: Input should be less than or equal to 1024"),
    (["diffusion.num_timesteps=100000000000"], "diffusion.num_timesteps: Input should be less than or equal to 1000000"),
    (["model.channels=12", "model.channel_mult=[2,4]", "model.attention_resolutions=[16]"],
     "model.channels 12 must be divisible by model.groups (8)"),
    (["train.batch_size=true"], "train.batch_size: true is a boolean, not a number; give an integer"),
])
def test_bad_overrides_name_the_key(overrides, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)) as err:
        load_recipe("conservative", overrides)
    if not needle.startswith("bad override"):  # a malformed --set is the command line's fault, not the file's
        assert "conservative.yaml" in str(err.value)


def test_bad_file_names_the_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  channels: many\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*model.channels"):
        load_recipe(str(bad))
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_recipe(str(loop))
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        load_recipe("nope")


@pytest.mark.parametrize("args,needle", [
    (["train", "--recipe", "nope", "--dry-run"], "unknown recipe 'nope'"),
    (["train", "--recipe", "tiny", "--set", "train.epochz=1", "--dry-run"], "train.epochz: unknown key"),
    (["train", "--recipe", "tiny", "--set", "train.epochs=-1", "--dry-run"], "train.epochs"),
    (["train", "--recipe", "tiny", "--set", "oops", "--dry-run"], "bad override 'oops'"),
    (["ablate", "tiny-methods", "--seeds", "", "--dry-run"], "--seeds '': expected integers"),  # was ignored
    (["ablate", "tiny-methods", "--seeds", "-1", "--dry-run"], "train.seed"),
    (["train", "--recipe", "tiny", "--set", "optim.lr=inf", "--dry-run"], "optim.lr: Input should be a finite number"),
    (["train", "--recipe", "tiny", "--set", "model.channels=100000", "--dry-run"], "model.channels"),  # a 640 GB tensor
])
def test_cli_errors_exit_2_with_one_line(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and err.startswith("error:") and "\n" not in err


def test_dry_run_shows_parameters_and_cost(capsys):
    assert main(["train", "--recipe", "conservative", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "54,846,979 (54.85M)" in out and "6 forward units per step (3 before loss.start_epoch)" in out


def test_dry_run_counts_the_images_training_would_open(synthetic_data_dir, capsys):
    args = ["train", "--recipe", "tiny", "--data", str(synthetic_data_dir), "--dry-run", "--set", "train.epochs=2"]
    assert main(args + ["--set", "data.limit=128"]) == 0
    assert "schedule      128 images, 4 steps of 64 = 256 images seen, 768 image forward units in all" in (
        capsys.readouterr().out)  # standard: a forward and a backward (two units) per image
    assert main(args) == 0
    assert "schedule      230 images, 6 steps of 64" in capsys.readouterr().out  # 3 full batches per epoch
    assert main(args + ["--set", "data.limit=231"]) == 2
    assert "data.limit 231 is outside 1..230, the size of split train" in capsys.readouterr().err


def test_ddpm_sampling_options_on_a_recipe_with_t_start():
    from dreamctl.inference import SampleOptions, sample_config

    tiny = load_recipe("tiny")
    assert tiny.sample.t_start == 950
    with pytest.raises(ConfigError, match="no sample.t_start"):
        load_recipe("tiny", ["sample.sampler=ddpm", "sample.steps=1000"])
    cfg = sample_config(tiny, SampleOptions(sampler="ddpm"), "tiny")
    assert (cfg.sampler, cfg.steps, cfg.t_start, cfg.eta) == ("ddpm", 1000, None, 1.0)  # what DDPM really does
    ddpm = ["sample.sampler=ddpm", "sample.steps=1000", "sample.t_start=null"]
    assert load_recipe("tiny", ddpm).sample.eta == 1.0  # a recipe naming ddpm records the eta it runs with
    with pytest.raises(ConfigError, match="sample: eta 0.5: sampler 'ddpm' is DDIM with eta 1"):
        load_recipe("tiny", ddpm + ["sample.eta=0.5"])
    # A recipe that names ddpm and nothing else gets what DDPM does, at its own T; what it gives is kept, and checked.
    own = Recipe.model_validate({"diffusion": {"num_timesteps": 100}, "sample": {"sampler": "ddpm"}}).sample
    assert (own.steps, own.t_start, own.eta) == (100, None, 1.0)
    assert SampleConfig(sampler="ddpm", steps=1000).eta == 1.0  # the section alone too (Python API)
    with pytest.raises(ValidationError, match="set sample.steps to diffusion.num_timesteps"):
        Recipe.model_validate({"diffusion": {"num_timesteps": 100}, "sample": {"sampler": "ddpm", "steps": 50}})


def test_every_sampling_option_reaches_the_sample_config():
    """sample_config applies SampleOptions by field name: each option but the checkpoint and the base seed
    names a sample.* setting, and a value given for it is the one sampling uses."""
    import dataclasses

    from dreamctl.inference import SampleOptions, sample_config

    tiny = load_recipe("tiny")
    given = {"sampler": "ddim", "steps": 7, "eta": 0.3, "t_start": 900, "clip_x0": True, "use_ema": False,
             "batch_size": 5, "compile": True, "compile_mode": "reduce-overhead"}
    assert set(given) == {f.name for f in dataclasses.fields(SampleOptions)} - {"checkpoint", "seed"}
    # each one a change, but the sampler: ddpm would fix steps and eta itself
    assert all(getattr(tiny.sample, k) != v for k, v in given.items() if k != "sampler")
    cfg = sample_config(tiny, SampleOptions(**given, checkpoint=3, seed=1), "tiny")
    assert {k: getattr(cfg, k) for k in given} == given


def test_cli_starts_without_torch_or_matplotlib():
    """Every command's module loads lazily: `dreamctl --help` and argument errors come back at once,
    and `compare` without --plot needs no matplotlib (the GPU machine's Python may lack it). Reading an
    ablation spec loads no torch (it did, for the one helper that spells a sample setting as a flag)."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['matplotlib'] = None  # importing it now fails\n"
            "from dreamctl.cli import main\n"
            "assert main(['--help']) == 0 and main(['train', '--help']) == 0 and 'torch' not in sys.modules\n"
            "assert main(['compare', 'no-such-run', '--format', 'csv']) == 2  # through compare's code path\n"
            "from dreamctl.experiments.spec import ABLATIONS_DIR, expand, parse_spec\n"
            "assert expand(parse_spec(ABLATIONS_DIR / 'ddim-steps.yaml')) and 'torch' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_plain_install_ships_the_recipes(tmp_path: Path) -> None:
    """`pip install .` (not editable) must carry the built-in recipes and ablation specs."""
    pytest.importorskip("setuptools", minversion="70.1")  # builds a wheel offline: bdist_wheel built in
    repo, src, target = Path(__file__).resolve().parent.parent, tmp_path / "src", tmp_path / "site"
    # a copy, so that the build leaves nothing in the checkout and no stale build/ leaks in
    shutil.copytree(repo / "dreamctl", src / "dreamctl", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, src / name)
    built = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                            "--target", str(target), str(src)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    code = ("import dreamctl; from dreamctl.config import load_recipe; from dreamctl.experiments.spec import parse_spec;"
            "print(dreamctl.__file__, load_recipe('conservative').loss.kind, parse_spec('methods').name)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)},
                         check=True, capture_output=True, text=True).stdout.split()
    assert out[0].startswith(str(target)) and out[1:] == ["dream_conservative", "methods"]


def test_extends_errors_name_the_file_that_extends(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    child = tmp_path / "sub" / "child.yaml"
    child.write_text("extends: sub/parent.yaml\n")  # relative to child's folder: sub/sub/parent.yaml
    with pytest.raises(ConfigError, match=r"child\.yaml: extends: recipe file .*sub/sub/parent\.yaml does not exist "
                                          r"\(a path is taken from the folder of child\.yaml\)"):
        load_recipe(child)
    child.write_text("extends: nosuch\n")
    with pytest.raises(ConfigError, match=r"child\.yaml: extends: unknown recipe 'nosuch'"):
        load_recipe(child)


def test_an_empty_recipe_file_is_refused(tmp_path: Path):
    """It would train every default, the full-size model included."""
    empty = tmp_path / "mine.yaml"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="mine.yaml is empty"):
        load_recipe(empty)


def test_prepare_data_needs_at_least_one_worker(tmp_path: Path, capsys):
    assert main(["prepare-data", "--source", "synthetic", "--workers", "0", "--out", str(tmp_path / "d")]) == 2
    assert "--workers" in capsys.readouterr().err and not (tmp_path / "d").exists()


def _keys(kinds: str) -> list[str]:
    """Every setting of the schema whose type names one of `kinds` (a regex) and not bool, as a dotted
    key (a tuple by its first item: `optim.betas.0`)."""
    keys = []
    for section, field in Recipe.model_fields.items():
        for name, sub in getattr(field.annotation, "model_fields", {}).items():
            if re.search(rf"\b({kinds})\b", str(sub.annotation)) and "bool" not in str(sub.annotation):
                keys.append(f"{section}.{name}" + (".0" if "tuple" in str(sub.annotation) else ""))
    return keys


def _float_keys() -> list[str]:
    return _keys("float")


def _override(key: str, value: str) -> str:
    """`--set` text giving `value` to the setting `key` names (a tuple's first item: `[value,0.9]`)."""
    section, name = key.split(".")[:2]
    return f"{section}.{name}=" + (f"[{value},0.9]" if key.endswith(".0") else value)


def test_every_float_setting_is_checked_here():
    assert {"optim.lr", "optim.betas.0", "optim.grad_clip", "loss.gamma", "sample.eta"} <= set(_float_keys())


@pytest.mark.parametrize("key", _float_keys())
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e999"])
def test_non_finite_floats_are_refused(key, value):
    """inf passes a bound like gt=0 alone: training stopped on a NaN later and recipe.yaml kept `.inf`."""
    with pytest.raises(ConfigError, match=re.escape(f"{key}: Input should be a finite number")):
        load_recipe("tiny", [_override(key, value)])


def test_a_run_folders_recipe_with_inf_is_refused(tmp_path: Path):
    """A recipe.yaml written before the check: resume and sample name the key instead of training on."""
    stored = tmp_path / "recipe.yaml"
    text = recipe_to_yaml(load_recipe("tiny"))
    assert "\n  lr: 0.002\n" in text
    stored.write_text(text.replace("\n  lr: 0.002\n", "\n  lr: .inf\n"))
    with pytest.raises(ConfigError, match=r"recipe\.yaml: .*optim\.lr: Input should be a finite number"):
        recipe_from_file(stored)


def test_a_key_given_twice_in_a_recipe_is_refused(tmp_path: Path):
    """PyYAML keeps the last silently: a forgotten `lr:` further down would train with a setting nobody chose."""
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: tiny\noptim:\n  lr: 1.0e-4\n  weight_decay: 0.0\n  lr: 1.0e-3\n")
    with pytest.raises(ConfigError, match=re.escape(f"{mine}: not valid YAML at line 5, column 3: key 'lr' is given "
                                                    "twice (first at line 3); fix the file")):
        load_recipe(mine)
    mine.write_text("extends: tiny\ntrain:\n  epochs: 2\ntrain:\n  epochs: 3\n")  # a section given twice
    with pytest.raises(ConfigError, match=r"line 4, column 1: key 'train' is given twice \(first at line 2\)"):
        load_recipe(mine)
    # one key in two different sections, and a key that overrides one merged in, are fine
    mine.write_text("extends: tiny\nbase: &b {epochs: 2, batch_size: 8}\ntrain:\n  <<: *b\n  epochs: 3\n"
                    "sample:\n  batch_size: 8\n")
    with pytest.raises(ConfigError, match="base: unknown key"):  # the anchor's holder is not a section
        load_recipe(mine)


def test_the_duplicate_key_loader_is_still_safe_yaml():
    import yaml

    from dreamctl.config.load import safe_load

    text = "a: &a {x: 1, y: 2}\nb:\n  <<: *a\n  x: 3\nd: 2001-01-01\n"
    assert safe_load(text) == yaml.safe_load(text)
    with pytest.raises(yaml.YAMLError, match="could not determine a constructor"):
        safe_load("!!python/object/apply:os.system ['echo unsafe']")


def test_a_key_given_twice_in_an_override_is_refused():
    with pytest.raises(ConfigError, match=re.escape("bad override 'optim={lr: 1, lr: 2}': key 'lr' is given twice")):
        load_recipe("tiny", ["optim={lr: 1, lr: 2}"])


def test_a_folder_named_like_a_built_in_does_not_hide_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`--run-dir tiny` then `train --recipe tiny` in the same folder: the name is still the built-in."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    assert load_recipe("tiny").name == "tiny"
    (tmp_path / "mine.yaml").write_text("extends: tiny\n")
    assert load_recipe("mine.yaml").name == "mine"
    with pytest.raises(ConfigError, match="recipe tiny is a folder"):
        load_recipe("./tiny/")


# Schema boundaries: the edge values a user may give, and the first value past each edge.

def test_lambda_min_may_equal_lambda_max():
    """A constant DREAM weight (lambda_min == lambda_max) is a valid ramp, only min > max is refused."""
    r = load_recipe("conservative", ["loss.lambda_min=0.5", "loss.lambda_max=0.5"])
    assert (r.loss.lambda_min, r.loss.lambda_max) == (0.5, 0.5)


def test_an_ema_decay_of_one_is_refused():
    """decay 1 would keep the EMA at its initial weights forever: sampling from it draws noise."""
    assert load_recipe("tiny", ["optim.ema_decay=0.0"]).optim.ema_decay == 0.0
    with pytest.raises(ConfigError, match=re.escape("optim.ema_decay: Input should be less than 1")):
        load_recipe("tiny", ["optim.ema_decay=1.0"])


def test_the_resolution_must_halve_once_per_unet_level():
    """32 px halves 5 times to 1 px: a 5-level UNet fits, a 6-level one (2**6 = 64) does not."""
    five = ["model.channel_mult=[1,1,1,1,1]", "model.attention_resolutions=[8]"]
    assert load_recipe("tiny", five).model.channel_mult == (1, 1, 1, 1, 1)
    with pytest.raises(ConfigError, match=re.escape("data.resolution 32 must be divisible by 2**6")):
        load_recipe("tiny", ["model.channel_mult=[1,1,1,1,1,1]", "model.attention_resolutions=[8]"])


def test_every_level_width_must_split_into_the_attention_heads():
    """Width 16 (tiny's 16 x 1) over 3 heads would fail inside torch's attention, not here."""
    with pytest.raises(ConfigError, match=re.escape("level width 16 (model.channels 16 x model.channel_mult) must be "
                                                    "divisible by model.groups (8) and model.num_heads (3)")):
        load_recipe("tiny", ["model.num_heads=3"])


def test_a_single_timestep_diffusion_is_refused():
    """T = 1 has no noise schedule to learn; the schema says so instead of the schedule dividing by zero."""
    with pytest.raises(ConfigError, match=re.escape("diffusion.num_timesteps: Input should be greater than 1")):
        load_recipe("tiny", ["diffusion.num_timesteps=1", "sample.steps=1", "sample.t_start=null"])
    assert load_recipe("tiny", ["diffusion.num_timesteps=2", "sample.steps=1", "sample.t_start=null"]).diffusion.num_timesteps == 2


def test_every_problem_of_a_recipe_is_named_at_once():
    """A user fixes all the bad keys in one edit, not one per failed run."""
    with pytest.raises(ConfigError) as err:
        load_recipe("tiny", ["train.batch_size=abc", "optim.lr=-1"])
    problems = str(err.value).split(" optim.lr=-1: ", 1)[1]  # what follows the source (which echoes the --set)
    assert "optim.lr: Input should be greater than 0" in problems
    assert "train.batch_size: Input should be a valid integer" in problems


def test_the_eval_seed_reaches_the_last_seed_torch_can_hold():
    """Seeds 0..4095 (2**32 / 2**20 images per seed): 4095 is the last allowed, 4096 the first refused."""
    assert load_recipe("tiny", ["eval.seed=4095"]).eval.seed == 4095
    with pytest.raises(ConfigError, match=re.escape("eval.seed: Input should be less than or equal to 4095")):
        load_recipe("tiny", ["eval.seed=4096"])


def test_t_start_may_be_steps_minus_one():
    """2 DDIM steps from t = 1 visit timesteps 1 and 0: the lowest start that gives each step its own timestep."""
    assert load_recipe("tiny", ["sample.steps=2", "sample.t_start=1"]).sample.t_start == 1
    with pytest.raises(ConfigError, match=re.escape("sample.t_start 0 must be below diffusion.num_timesteps and at "
                                                    "least sample.steps - 1 (1)")):
        load_recipe("tiny", ["sample.steps=2", "sample.t_start=0"])


def test_a_ddim_step_count_that_starts_where_x_t_is_still_image_is_refused():
    """i * (T // steps) for 600 of 1000 steps starts at t = 599, where x_t is 58% image, from pure noise. Refused
    when a recipe is loaded to train and when sample/evaluate ask for it; 30 or 70 steps, which do not divide T
    either, start at t = 957 and 966 (7% and 5%) and are accepted."""
    from dreamctl.inference import SampleOptions, sample_config

    told = ("DDIM's uniform skip i*(T // steps) starts 600 steps, which do not divide T = 1000, at t = 599, where x_t "
            "still holds 58% of the image (at most 10% for a start from pure noise): use 500 or 1000 steps (counts "
            "that divide T), or sample.t_start=999 to space 600 steps evenly from T - 1")
    with pytest.raises(ConfigError, match=re.escape(told)):
        load_recipe("tiny", ["sample.steps=600", "sample.t_start=null"])
    recipe = load_recipe("tiny", ["sample.t_start=null"])
    with pytest.raises(ConfigError, match=re.escape("recipe.yaml with --steps 600 --no-ema: " + told)):  # as typed
        sample_config(recipe, SampleOptions(steps=600, use_ema=False), "recipe.yaml")
    assert sample_config(recipe, SampleOptions(steps=600, t_start=999), "recipe.yaml").steps == 600  # evenly spaced
    for steps in (10, 30, 70, 999, 1000):  # DDIM-10 starts at t = 900 (15%), as the DDIM paper defines it
        assert sample_config(recipe, SampleOptions(steps=steps), "recipe.yaml").steps == steps
    assert sample_config(recipe, SampleOptions(sampler="ddpm"), "recipe.yaml").steps == 1000


def test_a_ddim_step_count_is_accepted_when_it_divides_T_or_its_first_x_t_holds_at_most_a_tenth_of_the_image():
    """Against the cosine schedule's closed form (Nichol & Dhariwal eq. 17), not the code's own tables."""
    import math

    from dreamctl.diffusion.start import check_sampler_start

    T = 200
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for steps in range(1, T + 1):
        first = (steps - 1) * (T // steps)
        try:
            check_sampler_start(DiffusionConfig(num_timesteps=T), SampleConfig(steps=steps, t_start=None), "test")
            accepted = True
        except ConfigError:
            accepted = False
        assert accepted == (T % steps == 0 or math.sqrt(f(first + 1) / f(0)) <= 0.1), steps


def test_a_linear_schedule_that_leaves_x_T_part_image_is_refused_to_train_but_a_stored_run_loads():
    """DDPM's betas are given for T = 1000: at T = 100 x_T keeps 60% of the image, and sampling starts from noise."""
    from dreamctl.config import recipe_from_yaml, recipe_to_yaml

    linear_100 = ["diffusion.schedule=linear", "diffusion.num_timesteps=100", "sample.t_start=null"]
    with pytest.raises(ConfigError, match=re.escape(
            "the linear schedule leaves 60% of the image in x_T (sqrt(abar) at t = T - 1; at most 10%), and sampling "
            "starts from pure noise: raise diffusion.beta_end (improved DDPM scales DDPM's betas by 1000/T: --set "
            "diffusion.beta_start=0.001 --set diffusion.beta_end=0.2) or diffusion.num_timesteps, or use "
            "diffusion.schedule=cosine")):
        load_recipe("tiny", linear_100)
    scaled = load_recipe("tiny", [*linear_100, "diffusion.beta_start=0.001", "diffusion.beta_end=0.2"])
    assert scaled.diffusion.beta_end == 0.2
    assert load_recipe("tiny", ["diffusion.num_timesteps=100", "sample.t_start=null"]).diffusion.schedule == "cosine"
    assert load_recipe("aggressive").diffusion.schedule == "linear"  # T = 1000: 0.6% left
    stored = recipe_to_yaml(scaled).replace("beta_end: 0.2", "beta_end: 0.02")  # a run from before the check
    assert recipe_from_yaml(stored, "recipe.yaml").diffusion.beta_end == 0.02


# Recipe files: the errors a user sees for a .yml file, a non-mapping, a bad `extends:` and a bad --set.

def test_a_missing_yml_recipe_is_named_as_a_missing_file(tmp_path: Path):
    """`.yml` is as much a YAML file as `.yaml`: a typo in its path says the file is missing, not 'unknown recipe'."""
    missing = tmp_path / "mine.yml"
    with pytest.raises(ConfigError, match=re.escape(f"recipe file {missing} does not exist")):
        load_recipe(str(missing))


def test_a_recipe_file_that_is_a_list_is_refused(tmp_path: Path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("- extends: tiny\n- train: {epochs: 2}\n")  # a list where sections were meant
    with pytest.raises(ConfigError, match=re.escape(f"{mine}: a recipe must be a mapping of sections, got list")):
        load_recipe(mine)


def test_extends_must_be_a_name(tmp_path: Path):
    """`extends: 3` (or a list) is a mistake in the file: named, not a crash."""
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: 3\n")
    with pytest.raises(ConfigError, match=re.escape(f"{mine}: key 'extends' must be a recipe name, got 3")):
        load_recipe(mine)


def test_only_a_plain_name_is_a_built_in_recipe(tmp_path: Path, monkeypatch):
    """`extends: ../recipes/tiny` once reached a file through the package's recipes folder (any YAML beside
    the installed package); a name with a path in it is not a built-in's."""
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: ../recipes/tiny\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=re.escape("extends: unknown recipe '../recipes/tiny'; built-in:")):
        load_recipe(mine)
    assert load_recipe("tiny").name == "tiny"


def test_extends_may_name_a_yml_file_next_to_the_recipe(tmp_path: Path):
    """A parent `base.yml` is found in the child's folder, wherever the command runs."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "base.yml").write_text("extends: tiny\ntrain:\n  epochs: 7\n")
    (tmp_path / "sub" / "child.yaml").write_text("extends: base.yml\n")
    assert load_recipe(tmp_path / "sub" / "child.yaml").train.epochs == 7


def test_an_override_below_a_value_names_it():
    """train.batch_size is a number, not a section: --set train.batch_size.x=1 says so."""
    with pytest.raises(ConfigError, match=re.escape("bad override 'train.batch_size.x=1': 'batch_size' is not a section")):
        load_recipe("tiny", ["train.batch_size.x=1"])


# Values the UNet cannot run, refused by the schema: the edge values a recipe may use run.

def test_the_time_features_must_be_even_because_the_unet_needs_it():
    """A cosine and a sine per frequency: an odd width gave the time MLP one feature less than it takes."""
    import torch

    from dreamctl.config import ModelConfig

    def forward(width: int) -> tuple[int, ...]:
        cfg = ModelConfig.model_construct(**{**load_recipe("tiny").model.model_dump(), "time_features": width})
        return tuple(build_model(cfg, 32)(torch.zeros(1, 3, 32, 32), torch.tensor([5])).shape)

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        forward(3)  # unchecked (model_construct): what `train` raised before
    for width in (2, 1024):
        assert load_recipe("tiny", [f"model.time_features={width}"]).model.time_features == width
        assert forward(width) == (1, 3, 32, 32)


def test_the_largest_model_and_schedule_values_are_accepted():
    r = load_recipe("tiny", ["model.channels=512", "model.channel_mult=[8]", "model.attention_resolutions=[16]",
                             "model.num_res_blocks=8",
                             "diffusion.num_timesteps=1000000", "sample.t_start=null"])
    assert (r.model.channels, r.model.channel_mult, r.model.num_res_blocks, r.diffusion.num_timesteps) == (
        512, (8,), 8, 1_000_000)


def test_the_input_width_must_split_into_the_groups():
    """channels 12 x (2, 4) gives levels of 24 and 48, both divisible by 8, but the first block normalises 12."""
    from dreamctl.config import ModelConfig

    unchecked = {**load_recipe("tiny").model.model_dump(), "channels": 12, "channel_mult": (2, 4)}
    cfg = ModelConfig.model_construct(**unchecked)
    with pytest.raises(ValueError, match="num_channels \\(12\\) must be divisible by num_groups \\(8\\)"):
        build_model(cfg, 32)  # unchecked: what the UNet raised
    assert load_recipe("tiny", ["model.channels=16", "model.channel_mult=[2,4]"]).model.channels == 16


def _number_keys() -> list[str]:
    return _keys("int|float")


def test_every_number_setting_is_checked_here():
    assert {"train.batch_size", "optim.lr", "optim.betas.0", "model.channel_mult.0", "data.limit", "eval.seed",
            "loss.start_epoch", "sample.t_start"} <= set(_number_keys())


@pytest.mark.parametrize("key", _number_keys())
@pytest.mark.parametrize("value", ["true", "false"])
def test_booleans_are_refused_for_numbers(key, value):
    """Lax validation read `batch_size: true` as 1 (and false as 0): a mistake, not a number."""
    setting = key.removesuffix(".0")
    with pytest.raises(ConfigError, match=re.escape(f"{setting}: {value} is a boolean, not a number; give")):
        load_recipe("tiny", [_override(key, value)])


def test_yaml_floats_read_as_strings_still_load(tmp_path: Path):
    """PyYAML reads 1e-3 (no dot) as a string; a recipe takes it as the number, as before."""
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: tiny\noptim:\n  lr: 1e-3\n  betas: [9e-1, 0.99]\ntrain:\n  compile: true\n")
    r = load_recipe(mine)
    assert (r.optim.lr, r.optim.betas, r.train.compile) == (0.001, (0.9, 0.99), True)
    assert load_recipe("tiny", ["optim.lr=1e-3", "train.batch_size=\"16\""]).train.batch_size == 16


def test_a_mapping_given_for_a_section_is_merged_into_it():
    """--set 'loss={alpha: 0.5}' changes alpha and keeps the recipe's other loss settings (a replaced
    section would have trained conservative's loss with lambda_max and start_epoch at their defaults)."""
    base = load_recipe("conservative")
    r = load_recipe("conservative", ["loss={alpha: 0.25}"])
    assert r.loss.alpha == 0.25 and r.loss.alpha != base.loss.alpha
    assert r.loss.model_dump(exclude={"alpha"}) == base.loss.model_dump(exclude={"alpha"})


def test_a_recipe_nested_thousands_deep_is_a_one_line_error(tmp_path: Path):
    """PyYAML recurses once per level: a RecursionError traceback becomes the file's one-line error."""
    deep = tmp_path / "deep.yaml"
    deep.write_text("extends: tiny\ntrain: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=re.escape(f"{deep}: not valid YAML: nested too deeply")):
        load_recipe(deep)


@pytest.mark.parametrize("override, needle", [
    ("eval.metrics=[fid, fdi]", "unknown metric(s) fdi in eval.metrics; choose from fid, kid, is, lpips"),
    ("eval.num=1", "eval.num 1: evaluate draws 2 (a covariance needs two) to 1,048,576 images"),
    ("eval.num=2000000", "eval.num 2000000: evaluate draws 2"),
    ("eval.ref_num=1", "eval.ref_num 1: evaluate needs at least 2 reference images"),
])
def test_a_recipes_evaluation_settings_are_checked_when_it_loads(override, needle):
    """Not when its training is done and evaluate first reads them (days later, and blamed on --num)."""
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_recipe("tiny", [override])


def test_eval_metrics_are_read_as_evaluate_reads_its_flag():
    assert load_recipe("tiny", ["eval.metrics=FID, swd,fid"]).eval.metrics == ("fid", "swd")


def test_every_loss_setting_reaches_the_loss_of_a_kind():
    """A field that no kind's params() passes on would be accepted by --set and ignored (mutation audit)."""
    import inspect
    from typing import get_args

    from dreamctl.config.schema import LOSS_PARAMS, LossConfig, LossKind
    from dreamctl.diffusion.losses import LOSSES

    passed = set().union(*(LossConfig(kind=k).params() for k in get_args(LossKind)))
    assert passed == set(LossConfig.model_fields) - {"kind"}
    assert list(LOSS_PARAMS) == list(get_args(LossKind)) == list(LOSSES)
    for kind, names in LOSS_PARAMS.items():  # each a keyword its loss function takes: no TypeError mid-run
        assert set(names) <= set(inspect.signature(LOSSES[kind].fn).parameters), kind
    assert load_recipe("tiny-dream", ["loss.estimate_eval_mode=false"]).loss.params()["estimate_eval_mode"] is False
    assert load_recipe("tiny", ["loss.kind=input_perturbation", "loss.gamma=0.3"]).loss.params() == {"gamma": 0.3}


def test_an_override_value_may_hold_an_equals_sign():
    from dreamctl.config import parse_override

    assert parse_override("data.path=/data/celeba,size=64") == (["data", "path"], "/data/celeba,size=64")


def test_a_loss_setting_the_kind_does_not_read_is_warned_about():
    """`--set loss.alpha=0.3` on dream went into recipe.yaml without a word (research review #2)."""
    from dreamctl.errors import DreamctlWarning

    with pytest.warns(DreamctlWarning, match=r"^--set loss\.alpha: loss\.kind dream does not read it \(a setting of "
                                             r"dream_conservative\); the run trains as if it were not set$"):
        load_recipe("tiny-dream", ["loss.alpha=0.3"])
    with pytest.warns(DreamctlWarning, match=r"--set loss\.gamma: loss\.kind standard .*input_perturbation"):
        load_recipe("tiny", ["loss={gamma: 0.3, kind: standard}"])  # a mapping's keys too
    with pytest.warns(DreamctlWarning, match=r"--set loss\.p: loss\.kind dream_conservative"):  # the kind as set
        load_recipe("tiny-dream", ["loss.p=2", "loss.kind=dream_conservative", "loss.alpha=0.3"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_recipe("tiny-dream", ["loss.p=2", "loss.norm=l1"])
        load_recipe("tiny-dream", ["loss.kind=dream_conservative", "loss.alpha=0.3", "train.epochs=2"])


def test_a_key_set_twice_to_other_values_is_warned_about_and_the_last_wins():
    """A shell loop's `--set` after a Makefile's: the first value was silently dropped (research review)."""
    from dreamctl.errors import DreamctlWarning

    with pytest.warns(DreamctlWarning, match=r"^--set optim\.lr is given twice \('optim\.lr=1e-4', then "
                                             r"'optim\.lr=2e-4'\): the last is used$"):
        assert load_recipe("tiny", ["optim.lr=1e-4", "train.epochs=2", "optim.lr=2e-4"]).optim.lr == 2e-4
    with pytest.warns(DreamctlWarning, match=r"--set loss\.gamma is given twice \('loss.gamma=0.2', then "
                                             r"'loss=\{gamma: 0.3\}'\)"):
        load_recipe("tiny", ["loss.kind=input_perturbation", "loss.gamma=0.2", "loss={gamma: 0.3}"])  # a mapping too
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_recipe("tiny", ["optim.lr=2e-4", "optim.lr=2e-4"]).optim.lr == 2e-4  # the same twice: no news
