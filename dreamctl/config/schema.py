"""The recipe schema: eight typed, frozen sections, every default written once, here.

Unknown keys, wrong types and impossible combinations raise ConfigError naming the dotted
key and where the recipe came from (validate_recipe). Loading files is dreamctl.config.load.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from dreamctl.config.validation import problems
from dreamctl.config.values import bool_for_number
from dreamctl.errors import ConfigError

LossKind = Literal["standard", "dream", "dream_conservative", "input_perturbation"]
# The settings each loss kind reads: the keyword arguments its function in diffusion/losses.py takes.
LOSS_PARAMS: dict[str, tuple[str, ...]] = {
    "standard": (),
    "dream": ("p", "norm", "estimate_eval_mode"),
    "dream_conservative": ("lambda_min", "lambda_max", "alpha", "start_epoch", "ramp_epochs"),
    "input_perturbation": ("gamma",),
}
# Image i under base seed S is drawn from seed S * 2**20 + i (generate.image_seeds); torch's CPU
# generator keeps 32 bits of a seed, which leaves base seeds 0..4095.
IMAGES_PER_SEED = 2**20
MAX_BASE_SEED = 2**32 // IMAGES_PER_SEED - 1
# The UNets trained here are the DDPM family's for 32-256 px faces (CelebA's aligned images are
# 178x218); 1024 px already upsamples them 5x, and a default 5000-image shard of it is 15 GiB in memory
# while prepare-data writes it. Past it a typo (100000) is an out-of-memory crash, not a data set.
MAX_RESOLUTION = 1024
# Parameters grow with the square of the width: the study's 128 channels are 54.85M, 512 already 0.88B (17.5 GB
# of fp32 weights, EMA, gradients and AdamW state); ADM's widest UNet has 256. Past it a typo (100000) is a
# 640 GB allocation for the time MLP, not a model; the same holds for a level's multiplier and block count.
MAX_CHANNELS = 512
MAX_CHANNEL_MULT = 8  # DDPM and ADM go up to 4
MAX_RES_BLOCKS = 8  # DDPM and ADM use 2 or 3
PositiveInt = Annotated[int, Field(gt=0)]
ChannelMult = Annotated[int, Field(gt=0, le=MAX_CHANNEL_MULT)]
Beta = Annotated[float, Field(ge=0.0, lt=1.0)]  # AdamW's own bounds


class _Section(BaseModel):
    # inf and nan pass every bound written as gt/ge alone (optim.lr=inf is "> 0"): training would stop on
    # a NaN loss later, and recipe.yaml would keep `.inf`. Refused here, for every float of every section.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, allow_inf_nan=False)

    # Lax mode (not strict) keeps YAML's `lr: 1e-3`, which PyYAML reads as a string, a float; it also
    # reads `batch_size: true` as 1. A boolean is refused wherever a number (or a tuple of them) is meant.
    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        problem = bool_for_number(cls.model_fields[info.field_name].annotation, value)
        if problem:
            raise ValueError(problem)
        return value


class DataConfig(_Section):
    path: str | None = None  # prepared folder; `train --data DIR` sets it
    split: Literal["train", "valid", "test"] = "train"
    limit: int | None = Field(None, gt=0)  # first N images of the split (the study: 50,000)
    resolution: int = Field(64, ge=8, le=MAX_RESOLUTION)
    hflip: bool = True


class ModelConfig(_Section):
    channels: int = Field(128, gt=0, le=MAX_CHANNELS)  # base width; level i has channels * channel_mult[i]
    channel_mult: tuple[ChannelMult, ...] = Field((1, 2, 4), min_length=1)
    num_res_blocks: int = Field(2, gt=0, le=MAX_RES_BLOCKS)
    attention_resolutions: tuple[PositiveInt, ...] = (16, 8)  # 8 = the middle at 64x64
    num_heads: int = Field(8, gt=0)
    groups: int = Field(8, gt=0)  # GroupNorm groups
    # Sinusoidal width; the MLP widens it to 4*channels. A cosine and a sine per frequency (timestep_features): an
    # odd width gives the MLP one feature less than it takes. DDPM and ADM use the base width; past 1024 the
    # frequencies only crowd closer together.
    time_features: int = Field(128, ge=2, le=1024, multiple_of=2)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class DiffusionConfig(_Section):
    schedule: Literal["linear", "cosine"] = "cosine"
    # DDPM's T is 1000, improved DDPM's 4000. The schedule is a T-long float64 table made up front: 8 MB at
    # the bound, while a typo (1e11) is an 800 GB allocation, not a schedule.
    num_timesteps: int = Field(1000, gt=1, le=1_000_000)
    beta_start: float = Field(1e-4, gt=0.0, lt=1.0)  # linear schedule only
    beta_end: float = Field(0.02, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _betas_ordered(self) -> DiffusionConfig:
        if self.schedule == "linear" and self.beta_start >= self.beta_end:
            raise ValueError("beta_start must be below beta_end")
        return self


# Said wherever a dream_conservative run is shown (compare's tables and figures, ablate's report).
STUDY_VARIANT_NOTE = ("`dream_conservative` is the CelebA study's variant (x0 rectification, plain noise target), "
                      "not the published DREAM method (`dream`)")


class LossConfig(_Section):
    kind: LossKind = "standard"
    # dream (Zhou et al. 2024): lambda = sqrt(1 - abar)**p
    p: float = Field(1.0, ge=0.0)
    # Both are per-pixel means, as diffusers' MSE and the official DREAM code's L1 (an nn.L1Loss summed over
    # the batch, then divided by b*c*h*w in its model.py).
    norm: Literal["mse", "l1"] = "mse"
    estimate_eval_mode: bool = True  # estimate pass with dropout off (the official code)
    # dream_conservative (the CelebA study, not the paper's method)
    lambda_min: float = Field(0.0, ge=0.0, le=1.0)
    lambda_max: float = Field(0.5, ge=0.0, le=1.0)
    alpha: float = Field(0.7, ge=0.0, le=1.0)  # weight of the standard term
    start_epoch: int = Field(10, ge=0)
    ramp_epochs: int = Field(20, ge=0)
    # input_perturbation (Ning et al. 2023)
    gamma: float = Field(0.1, ge=0.0)

    @model_validator(mode="after")
    def _lambda_ordered(self) -> LossConfig:
        if self.lambda_min > self.lambda_max:
            raise ValueError("lambda_min must not exceed lambda_max")
        return self

    def params(self) -> dict[str, Any]:
        """The keyword arguments compute_loss takes for this kind."""
        return {name: getattr(self, name) for name in LOSS_PARAMS[self.kind]}

    def unused(self) -> list[str]:
        """The settings this kind does not read (a recipe holds every one; compare shows them as —)."""
        return [name for name in type(self).model_fields if name != "kind" and name not in LOSS_PARAMS[self.kind]]


class OptimConfig(_Section):
    lr: float = Field(2e-4, gt=0.0)
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    weight_decay: float = Field(0.01, ge=0.0)
    grad_clip: float | None = Field(1.0, gt=0.0)
    warmup_steps: int = Field(0, ge=0)
    ema_decay: float = Field(0.9999, ge=0.0, lt=1.0)
    ema_warmup: bool = True  # decay = min(d, (1 + step) / (10 + step))


class TrainConfig(_Section):
    batch_size: int = Field(128, gt=0)  # global, over all processes
    epochs: int = Field(100, gt=0)
    max_steps: int | None = Field(None, gt=0)
    seed: int = Field(0, ge=0, lt=2**63)  # torch.manual_seed's range
    checkpoint_every: int = Field(1000, gt=0)
    keep_checkpoints: int = Field(3, gt=0)
    sample_every: int = Field(2000, gt=0)
    sample_grid: int = Field(64, gt=0)  # images in the progress grid
    log_every: int = Field(50, gt=0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    compile: bool = False
    channels_last: bool = False


DDPM_SETTINGS = ("eta", "steps", "t_start")  # what sampler 'ddpm' fixes


def ddpm_defaults(sample: dict, T: Any) -> dict:
    """A sample section naming sampler 'ddpm' with what DDPM implies filled in where not given: DDIM with eta 1
    (the posterior variance) on all T steps from T - 1. T None: unknown (a SampleConfig alone), steps not filled."""
    if sample.get("sampler") != "ddpm":
        return sample
    return {"eta": 1.0, "t_start": None, **({"steps": T} if type(T) is int else {}), **sample}  # a bad T: its own error


def check_ddpm(sample: SampleConfig, T: int | None) -> None:
    """ValueError for a DDPM sample section given settings DDPM does not use, which a protocol would record."""
    if sample.sampler != "ddpm":
        return
    if sample.eta != 1.0:
        raise ValueError(f"eta {sample.eta:g}: sampler 'ddpm' is DDIM with eta 1 (the posterior variance); "
                         "drop sample.eta, or use ddim for another eta")
    if T is not None and (sample.steps != T or sample.t_start is not None):
        raise ValueError("sample.sampler 'ddpm' runs all T steps from T-1: set sample.steps to "
                         "diffusion.num_timesteps and no sample.t_start (on the command line: no --steps or "
                         "--t-start with --sampler ddpm), or use ddim (--eta 1: fresh noise every step, in "
                         "fewer steps)")


class SampleConfig(_Section):
    sampler: Literal["ddim", "ddpm"] = "ddim"
    steps: int = Field(50, gt=0)
    eta: float = Field(0.0, ge=0.0, le=1.0)  # past 1, sqrt(1 - abar_prev - sigma^2) (DDIM eq. 12) can be imaginary
    clip_x0: bool = False
    t_start: int | None = Field(None, ge=0)  # first (largest) timestep; default DDIM's (steps-1)*(T//steps)
    # (checked by diffusion/start.py: x_t must be about noise there)
    batch_size: int = Field(256, gt=0)
    use_ema: bool = True
    compile: bool = False  # torch.compile the network for `sample`/`evaluate`; the same images up to rounding
    # torch.compile's mode: "reduce-overhead" replays each step's network as a CUDA graph (CUDA only; the
    # CPU compiles as "default"), cutting the launch cost of its hundreds of kernels.
    compile_mode: Literal["default", "reduce-overhead"] = "default"

    # A section alone knows DDPM's eta; its steps depend on the schedule's T, which the recipe fills in.
    @model_validator(mode="before")
    @classmethod
    def _ddpm_eta(cls, data: Any) -> Any:
        return ddpm_defaults(data, None) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _ddpm_is_eta_1(self) -> SampleConfig:
        check_ddpm(self, None)
        return self

    @model_validator(mode="after")
    def _mode_needs_compile(self) -> SampleConfig:
        if self.compile_mode != "default" and not self.compile:  # else a mode that is never used
            raise ValueError(f"compile_mode {self.compile_mode!r} needs compile: true (or --compile)")
        return self


class EvalConfig(_Section):
    # Bounds a stored recipe may hold (runs from before check_eval_section still load); a recipe about to
    # train or resume is held to config.metrics.check_eval_section's too.
    num: int = Field(5000, gt=0)
    ref: Literal["train", "valid", "test"] = "train"
    ref_num: int | None = Field(None, gt=0)  # default: as many as generated
    metrics: tuple[str, ...] = ("fid", "kid", "is", "lpips", "swd")
    seed: int = Field(0, ge=0, le=MAX_BASE_SEED)  # base seed of the samples (generate.image_seeds)

    @field_validator("metrics", mode="before")
    @classmethod
    def _comma_list(cls, metrics: Any) -> Any:
        return metrics.split(",") if isinstance(metrics, str) else metrics  # `metrics: fid,swd` as --metrics takes


class Recipe(_Section):
    name: str = "unnamed"
    description: str = ""
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="before")
    @classmethod
    def _ddpm_settings(cls, data: Any) -> Any:
        sample = data.get("sample") if isinstance(data, dict) else None
        if not isinstance(sample, dict):
            return data
        diffusion = data.get("diffusion")
        default_T = DiffusionConfig.model_fields["num_timesteps"].default
        T = (diffusion.get("num_timesteps", default_T) if isinstance(diffusion, dict)
             else getattr(diffusion, "num_timesteps", default_T))
        return {**data, "sample": ddpm_defaults(sample, T)}

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        m, res = self.model, self.data.resolution
        levels = len(m.channel_mult)
        if res % 2**levels:
            raise ValueError(f"data.resolution {res} must be divisible by 2**{levels} (one halving per level)")
        reachable = {res >> i for i in range(levels + 1)}
        for r in m.attention_resolutions:
            if r not in reachable:
                raise ValueError(f"model.attention_resolutions: {r} is not one of the UNet's resolutions {sorted(reachable)}")
        for c in {m.channels * k for k in m.channel_mult}:
            if c % m.groups or c % m.num_heads:
                raise ValueError(f"model: level width {c} (model.channels {m.channels} x model.channel_mult) must be "
                                 f"divisible by model.groups ({m.groups}) and model.num_heads ({m.num_heads})")
        if m.channels % m.groups:  # the first residual block normalises the input convolution's output
            raise ValueError(f"model.channels {m.channels} must be divisible by model.groups ({m.groups}), "
                             "the GroupNorm groups of the first block's input")
        if self.sample.steps > self.diffusion.num_timesteps:
            raise ValueError(f"sample.steps ({self.sample.steps}) exceeds diffusion.num_timesteps")
        check_ddpm(self.sample, self.diffusion.num_timesteps)
        t_start = self.sample.t_start
        if t_start is not None and not self.sample.steps - 1 <= t_start < self.diffusion.num_timesteps:
            raise ValueError(f"sample.t_start {t_start} must be below diffusion.num_timesteps and at least "
                             f"sample.steps - 1 ({self.sample.steps - 1}), one timestep per step")
        return self


def validate_recipe(raw: dict, source: str) -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{source}: {problems(err, Recipe)}") from None
