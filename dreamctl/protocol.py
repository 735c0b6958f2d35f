"""The evaluation protocol: the settings behind a set of images and a number, under the field names that
sample.json and eval/<protocol_id>.json record them (docs/run-folder.md).

One record, seen three ways, each view defined here beside the others:
  SAMPLING_FIELDS  fix the pixels (with the weights): a sample folder's images are reused only when they agree;
  SAME_SAMPLES     also fix the reference: an earlier file's metrics are carried over only when they agree;
  protocol_id      names the group whose numbers are comparable; compare checks PROTOCOL_FIELDS agree under
                   one id and splits one id's columns by DATA_FIELDS.
Adding a sampling setting is adding a field to `Sampling`, and to `Sampling.suffix` when ids must name it.
Free of torch: compare and ablate's plan read protocols on a laptop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dreamctl.config import SampleConfig

# Image i under base seed S is drawn from seed S * 2**20 + i (generate.image_seeds), recorded in evaluation files;
# files written before it used seed+i.
SEED_RULE = "seed*2**20+i"


def drawn_by_seed_rule(protocol: Mapping[str, Any]) -> bool:
    """Whether an evaluation's images came from SEED_RULE. Base seed 0 draws the same images under both
    rules; any other base seed in a file without SEED_RULE drew the old overlapping sets."""
    return protocol.get("seed", 0) == 0 or protocol.get("image_seeds") == SEED_RULE


@dataclass(frozen=True)
class Sampling:
    """The settings that fix a run's images, given its weights; recorded under these names, in this order."""

    checkpoint_step: int | None
    ema: bool
    sampler: str
    steps: int
    eta: float
    t_start: int | None
    clip_x0: bool
    seed: int  # base seed: image i from seed * 2**20 + i (generate.image_seeds)
    precision: str | None  # the network's autocast: bf16 draws other images than fp32; None in files before it

    @classmethod
    def of(cls, cfg: SampleConfig, checkpoint_step: int | None, seed: int, precision: str) -> Sampling:
        return cls(checkpoint_step=checkpoint_step, ema=cfg.use_ema, sampler=cfg.sampler, steps=cfg.steps, eta=cfg.eta,
                   t_start=cfg.t_start, clip_x0=cfg.clip_x0, seed=seed, precision=precision)

    @classmethod
    def from_record(cls, p: Mapping[str, Any]) -> Sampling:
        """From a protocol or sample.json record. The id needs no step, and older files have no precision."""
        optional = ("checkpoint_step", "precision")
        return cls(**{f: p.get(f) if f in optional else p[f] for f in SAMPLING_FIELDS})

    def tag(self) -> str:
        """`ddim50-eta0-ema`: how images were drawn, the head of sample-folder names and protocol ids."""
        return f"{self.sampler}{self.steps}-eta{self.eta:g}-{'ema' if self.ema else 'raw'}"

    def suffix(self) -> str:
        """`-tstart950`, `-clip`, `-bf16`: the settings named only when they are not the default."""
        return ((f"-tstart{self.t_start}" if self.t_start is not None else "") + ("-clip" if self.clip_x0 else "")
                + ("-bf16" if self.precision == "bf16" else ""))

    def folder_name(self) -> str:
        """`ddim50-eta0-ema-step39000-seed0` (+ `-tstart950`, `-clip`, `-bf16`): one folder per image-fixing setting."""
        return f"{self.tag()}-step{self.checkpoint_step}-seed{self.seed}{self.suffix()}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def protocol_fields(self, num_generated: int, ref_split: str, ref_num: int) -> dict[str, Any]:
        """The protocol fields that fix the generated images and say which reference they meet."""
        return {**self.to_json(), "num_generated": num_generated, "image_seeds": SEED_RULE, "ref_split": ref_split,
                "ref_num": ref_num}


SAMPLING_FIELDS = tuple(f.name for f in fields(Sampling))
# The samples and the reference: an earlier file's metrics are kept only when these agree.
SAME_SAMPLES = (*SAMPLING_FIELDS, "num_generated", "ref_split", "ref_num", "ref_manifest_sha256")
# Must agree for two numbers to share a column; compare warns of an id whose files disagree on one.
PROTOCOL_FIELDS = ("sampler", "steps", "eta", "t_start", "num_generated", "ref_split", "ref_num",
                   "resize", "feature_network")
# Left out of the id but still deciding what a number means: the same id measured against another reference set,
# at another image size or with another feature network file gets columns of its own. A file from before
# `precision` was recorded shares its id with an fp32 one, but may have been drawn in bf16.
DATA_FIELDS = ("ref_manifest_sha256", "image_size", "feature_network_sha256", "precision")


@dataclass(frozen=True)
class FeatureNetworkId:
    """The protocol fields naming the network behind FID, KID and IS."""

    feature_network: str
    feature_network_sha256: str | None  # None: no network was loaded (no FID, KID or IS computed)
    feature_network_stand_in: bool  # a test network, never Inception: the id says `-standin`
    resize: str  # its preprocessing; the id names the part before ':'

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


FEATURE_NETWORK_FIELDS = tuple(f.name for f in fields(FeatureNetworkId))


def protocol_id(p: Mapping[str, Any], stand_in: bool) -> str:
    """`ddim50-eta0-ema-n5000-train5000-clean` (+ `-tstart950`, `-clip`, `-bf16`, `-seed1`, `-standin`).

    The checkpoint step is not part of it: steps are what is compared within one protocol. Files from
    before `precision` was recorded were drawn in fp32 on the CPU, or in bf16 on a GPU: their id says neither."""
    s = Sampling.from_record(p)
    pid = f"{s.tag()}-n{p['num_generated']}-{p['ref_split']}{p['ref_num']}-{p['resize'].split(':')[0]}{s.suffix()}"
    pid += f"-seed{s.seed}" if s.seed != 0 else ""
    return pid + ("-standin" if stand_in else "")


def same_samples(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether an earlier evaluation scored the same images, from the same weights, against the same reference.
    An old file of a base seed other than 0 without SEED_RULE drew other images (seed+i)."""
    sampled = {old.get("weights_sha256"), new.get("weights_sha256")} - {None}  # files before 2026-11-29: none
    return all(old.get(k) == new.get(k) for k in SAME_SAMPLES) and drawn_by_seed_rule(old) and len(sampled) <= 1


def holds_protocol(recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether an evaluation file's protocol has `wanted`'s fields (Sampling.protocol_fields), SEED_RULE and
    precision among them: a file from before either was recorded is evaluated again (none recorded one alone)."""
    return all(recorded.get(k) == v for k, v in wanted.items())
