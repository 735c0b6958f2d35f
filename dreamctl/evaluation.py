"""The evaluate protocol: samples of a run against a reference split, written to RUN_DIR/eval/.

    reference split read, metric networks loaded (metric_inputs: rank 0, which scores) -> N samples drawn or
    reused (sample_folder.py, every rank) -> evaluate_image_sets -> eval/<protocol_id>.json (eval_files.py,
    docs/run-folder.md)

Weights are checked before anything is drawn. A metric the user named (or every metric with
strict_weights) must have its weights or the call fails; metrics taken from the recipe's
defaults are reported {"missing": reason} instead, and the rest are still computed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import dreamctl
from dreamctl import atomic
from dreamctl.config import Recipe
from dreamctl.config.metrics import check_eval_num, parse_metrics
from dreamctl.data.loader import open_split
from dreamctl.data.shards import REFSTATS_DIR, Manifest, read_manifest, split_count, split_size
from dreamctl.errors import ConfigError, DataError, WeightsError
from dreamctl.eval_files import write_eval
from dreamctl.events import OnEvent, ignore
from dreamctl.inference import InferenceModel, SampleOptions, load_for_inference
from dreamctl.metrics.image_sets import RefCache, evaluate_image_sets
from dreamctl.metrics.inception import FeatureNet
from dreamctl.metrics.inputs import MetricInputs, metric_inputs
from dreamctl.metrics.registry import METRIC_NAMES
from dreamctl.protocol import FEATURE_NETWORK_FIELDS, protocol_id
from dreamctl.runtime import Runtime, main_first, on_every_rank
from dreamctl.sample_folder import drawn_with, folder_name, read_samples, sample_to_folder
from dreamctl.training.rundir import RunDir


@dataclass(frozen=True)
class Evaluation:
    record: dict[str, Any]  # what eval/<protocol_id>.json holds
    paths: tuple[Path, ...]  # the files written
    samples: Path  # the sample folder used


def check_reference(data_dir: Path, split: str, num: int, resolution: int,
                    fix: str = "lower --ref-num (or --num), or choose another --ref split",
                    size_fix: str = "evaluate against the data the run was trained on") -> None:
    """Fail before sampling when the split is too small (`fix`) or holds images of another size (`size_fix`)."""
    manifest = read_manifest(data_dir)
    available = split_count(data_dir, split, manifest)
    if num > available:
        raise DataError(f"the evaluation needs {num} reference images but split {split} of {data_dir} "
                        f"holds {available}: {fix}")
    if manifest.resolution != resolution:
        raise DataError(f"{data_dir} holds {manifest.resolution}px images but the run samples "
                        f"{resolution}px ones; {size_fix}")


def trained_on(recipe: Recipe, run: RunDir, data_dir: Path, split: str, num: int) -> int | None:
    """How many of the reference images (the first `num` of `split`) the run trained on (the first data.limit of
    its split: the same images, in order); None for a run that did not record which data it trained on."""
    if not run.info().get("data_manifest_sha256"):  # check_data compared the hash: same data, or unknown
        return None
    return min(num, split_size(data_dir, split, recipe.data.limit)) if split == recipe.data.split else 0


def read_reference(data_dir: Path, split: str, num: int) -> tuple[np.ndarray, Manifest, str]:
    """The first `num` images of a prepared split, its manifest and the manifest's sha256."""
    with open_split(data_dir, split, limit=num) as images:
        data = images.images if images.images is not None else images[torch.arange(num)]
        return data.cpu().numpy(), images.manifest, images.manifest_sha256


def _data_dir(recipe: Recipe, run: RunDir) -> Path:
    path = recipe.data.path or run.info().get("data")
    if not path or not Path(path).is_dir():
        raise DataError(f"{run.recipe_file}: data.path {path!r} is not a prepared data folder; "
                        f"evaluate needs prepared data for the reference images: pass --data DIR (or move it back)")
    return Path(path)


@dataclass(frozen=True)
class EvalOptions:
    """What the user asked of an evaluation; None means the run recipe's `eval` section decides."""

    num: int | None = None  # generated images
    ref: str | None = None  # the reference split: train, valid or test
    ref_num: int | None = None  # its first N images; None: eval.ref_num, else num
    metrics: tuple[str, ...] | None = None  # named by the user: their weights must be there
    data: Path | None = None  # where the run's prepared data is now, if it moved; it must hold the data the run
    # trained on (its content hash is checked): a protocol id does not name the data, so other data would
    # overwrite the run's evaluation
    strict_weights: bool = False  # the recipe's metrics too fail when their weights are missing


@dataclass(frozen=True)
class EvalRequest:
    """What one evaluation draws and scores, the recipe's eval section filling what was not asked."""

    metrics: tuple[str, ...]
    explicit: bool  # the user named the metrics: their weights must be there
    num: int
    ref_split: str
    ref_num: int
    seed: int


def resolve_request(recipe: Recipe, opts: SampleOptions, asked: EvalOptions) -> EvalRequest:
    e = recipe.eval
    num_given, ref_num_given = asked.num is not None, asked.ref_num is not None
    num = e.num if asked.num is None else asked.num  # `or` would turn --num 0 into the default
    ref_num = (e.ref_num or num) if asked.ref_num is None else asked.ref_num
    ref_split = asked.ref or e.ref
    if ref_split not in ("train", "valid", "test"):
        raise ConfigError(f"--ref {ref_split!r}: choose train, valid or test")
    # Each count named by where it came from: a flag, or the recipe (of a run from before its eval section
    # was checked at training).
    num_from = "--num" if num_given else "eval.num"
    ref_from = "--ref-num" if ref_num_given else "eval.ref_num" if e.ref_num else num_from
    check_eval_num(num, num_from)
    if ref_num < 2:
        raise ConfigError(f"{ref_from} {ref_num}: evaluate needs at least 2 reference images")
    wanted = parse_metrics(asked.metrics) if asked.metrics is not None else parse_metrics(e.metrics, "eval.metrics")
    return EvalRequest(tuple(wanted), asked.metrics is not None,
                       num, ref_split, ref_num, e.seed if opts.seed is None else opts.seed)


@dataclass(frozen=True)
class Scoring:
    """What rank 0, which alone scores, has ready before anything is drawn."""

    data_dir: Path
    reference: np.ndarray  # the reference images
    manifest: Manifest
    manifest_sha256: str
    inputs: MetricInputs  # each metric's networks (loaded before sampling, so a bad file fails first), or why not


def _protocol(model: InferenceModel, req: EvalRequest, s: Scoring, ref_trained_on: int | None,
              used: dict[str, Any]) -> dict[str, Any]:
    """An evaluation file's protocol: what fixed the samples, the reference they met, and (`used`, from
    evaluate_image_sets) the feature network and each metric's settings, under its name: KID's subsets, ..."""
    return {**drawn_with(model, req.seed).protocol_fields(req.num, req.ref_split, req.ref_num),  # as its folder
            "ref_preprocessing": s.manifest.preprocessing, "ref_manifest_sha256": s.manifest_sha256,
            "image_size": model.image_size, "ref_trained_on": ref_trained_on,
            "weights_sha256": model.weights_sha256,  # which weights, also for a file copied out of the run
            **{k: used[k] for k in (*FEATURE_NETWORK_FIELDS, "reference_cache", *METRIC_NAMES) if k in used}}


def evaluate_run(run_dir: Path, opts: SampleOptions, asked: EvalOptions = EvalOptions(), *, rt: Runtime,
                 feature_net: FeatureNet | None = None, weights_dir: Path | None = None,
                 on_event: OnEvent = ignore) -> Evaluation | None:
    """Evaluate a run's checkpoint; returns the record on rank 0 (None on other ranks, which only sample).

    `opts` fixes the samples, `asked` what they are scored against and by which metrics (EvalOptions).
    `feature_net` replaces Inception (a stand-in, named so in the id and the file). `opts.seed` None:
    the recipe's eval.seed.
    """
    started = time.perf_counter()
    run = RunDir(run_dir)
    # What a node may lack (the run folder, its data), checked through on_every_rank and main_first: a rank that
    # failed alone would leave the others to report a lost peer.
    recipe = on_every_rank(rt, run.recipe, f"reading {run.recipe_file}")
    req = resolve_request(recipe, opts, asked)
    scoring: list[Scoring] = []

    def prepare_scoring() -> None:  # rank 0 alone scores: it alone needs the data and loads the networks
        data_dir = Path(asked.data) if asked.data is not None else _data_dir(recipe, run)
        run.check_data(data_dir, "pass --data the run's data folder, wherever it is now")  # also the recorded
        # one: it may have been prepared again in place, and other data would overwrite this protocol's file
        check_reference(data_dir, req.ref_split, req.ref_num, recipe.data.resolution)
        # Read now (its shards hashed once): a damaged one would otherwise surface after all the drawing.
        on_event("stage", {"what": f"reading {req.ref_num} reference images ({req.ref_split}) from {data_dir}"})
        reference = read_reference(data_dir, req.ref_split, req.ref_num)
        inputs = metric_inputs(req.metrics, feature_net=feature_net, weights_dir=weights_dir, device=str(rt.device))
        if inputs.missing and (asked.strict_weights or req.explicit):
            raise WeightsError("; ".join(dict.fromkeys(inputs.missing.values())))  # before anything is drawn;
            # fid/kid/is share one file: named once
        images, manifest, manifest_sha256 = reference
        scoring.append(Scoring(data_dir, images, manifest, manifest_sha256, inputs))
    main_first(rt, prepare_scoring)

    def writable() -> None:  # before drawing: the images and the scores must have a place
        for where, what in ((run.samples, "sample folder"), (run.eval, "evaluation folder")):
            atomic.check_writable(where, what)
    on_every_rank(rt, writable, f"checking that {run.root} can be written")
    model = load_for_inference(run, opts, rt, recipe)  # read above, on every rank
    folder = run.samples / folder_name(model, req.seed)
    sample_to_folder(model, folder, req.num, seed=req.seed, rt=rt, on_event=on_event)
    if not rt.is_main:
        return None
    generated = read_samples(folder, req.num, model.image_size)
    s = scoring[0]
    on_event("stage", {"what": "computing " + ", ".join(m for m in req.metrics if s.inputs.ready(m))})
    # With no metric computable this computes nothing, but still describes the feature network and libraries.
    cache = RefCache(f"{s.manifest_sha256}/{req.ref_split}/{req.ref_num}", s.data_dir / REFSTATS_DIR)
    out = evaluate_image_sets(generated, s.reference, req.metrics, inputs=s.inputs, cache=cache, seed=req.seed)
    used = out["protocol"]
    protocol = _protocol(model, req, s, trained_on(recipe, run, s.data_dir, req.ref_split, req.ref_num), used)
    record = {"protocol_id": protocol_id(protocol, protocol["feature_network_stand_in"]), "protocol": protocol,
              "metrics": out["metrics"],  # in req.metrics' order, the missing ones with their reason
              "versions": {"dreamctl": dreamctl.__version__, **used["libraries"]},
              "weights": dict(used.get("weights", {})), "samples": str(folder),
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "wall_time_s": round(time.perf_counter() - started, 2)}
    paths = write_eval(run.eval, record)
    return Evaluation(record, paths, folder)
