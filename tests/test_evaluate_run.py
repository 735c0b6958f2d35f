"""evaluate on a tiny trained run (CPU, no weights, no network): the record, its cache and history,
missing weights, and data that moved."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamctl.cli import main
from dreamctl.data.shards import manifest_sha256, read_manifest
from dreamctl.evaluation import EvalOptions, evaluate_run
from dreamctl.experiments.runs import read_evals
from dreamctl.inference import SampleOptions
from dreamctl.metrics.inception import RESIZE_CLEAN
from dreamctl.training.checkpoints import checkpoint_path, load_checkpoint
from feature_fakes import StandInFeatureNet, write_fake_inception
from tiny_runs import CPU, trained_for_sampling


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_data_dir) -> tuple[Path, Path]:
    return trained_for_sampling(tmp_path_factory.mktemp("evaluate"), synthetic_data_dir)


def _older_checkpoint(run: Path, step: int) -> None:
    """A second checkpoint (the newest one relabelled), so that history across steps can be tested."""
    ckpt = load_checkpoint(checkpoint_path(run / "checkpoints", 4))
    ckpt["step"] = step
    torch.save(ckpt, checkpoint_path(run / "checkpoints", step))


def test_the_reference_is_the_split_asked_for(trained):
    """--ref valid measures against the valid split's first ref_num images: not a label on train's."""
    from dreamctl.data.loader import open_split
    from dreamctl.metrics.pixel_fd import pixel_frechet_distance
    from dreamctl.sample_folder import read_samples

    run, data = trained
    for split in ("valid", "train"):
        asked = EvalOptions(num=12, ref=split, ref_num=12, metrics=("pixel_fd",))
        result = evaluate_run(run, SampleOptions(), asked, rt=CPU)
        with open_split(data, split, limit=12) as ref:
            reference = ref[torch.arange(12)].numpy()
        expected = pixel_frechet_distance(read_samples(result.samples, 12, 32), reference)
        assert result.record["protocol"]["ref_split"] == split
        assert result.record["metrics"]["pixel_fd"]["value"] == pytest.approx(expected, rel=1e-9)
        # The first 12 train images are among the 64 it trained on (data.limit=64); valid images are held out.
        assert result.record["protocol"]["ref_trained_on"] == {"valid": 0, "train": 12}[split]
    beyond = evaluate_run(run, SampleOptions(), EvalOptions(num=12, ref_num=100, metrics=("pixel_fd",)), rt=CPU)
    assert beyond.record["protocol"]["ref_trained_on"] == 64  # of 100: the rest of the split it never saw


def test_a_reference_split_can_be_used_to_its_last_image(synthetic_data_dir):
    """--ref-num may take every image of a split (valid holds 13): only more than it holds is refused."""
    from dreamctl.errors import DataError
    from dreamctl.evaluation import check_reference

    check_reference(synthetic_data_dir, "valid", 13, 32)
    with pytest.raises(DataError, match="the evaluation needs 14 reference images but split valid of .* holds 13"):
        check_reference(synthetic_data_dir, "valid", 14, 32)


def test_a_run_that_did_not_record_its_data_says_nothing_of_which_reference_images_it_trained_on(
        synthetic_data_dir, tmp_path):
    """ref_trained_on counts reference images among those the run trained on only when run.json records the data's
    hash (the same data, checked): for an older run it is None, unknown, never a count it cannot vouch for."""
    from dreamctl.config import load_recipe
    from dreamctl.evaluation import trained_on
    from dreamctl.training.rundir import RunDir
    from run_folders import write_run

    recipe = load_recipe("tiny", ["data.limit=64"])
    older = RunDir(write_run(tmp_path, "older"))  # run.json without data_manifest_sha256
    recorded = RunDir(write_run(tmp_path, "recorded", info={"data_manifest_sha256": "a" * 64}))
    assert trained_on(recipe, older, synthetic_data_dir, "train", 12) is None
    assert trained_on(recipe, recorded, synthetic_data_dir, "train", 100) == 64
    assert trained_on(recipe, recorded, synthetic_data_dir, "valid", 12) == 0


def test_the_metrics_random_draws_follow_the_evaluations_seed(trained, tmp_path):
    """--seed fixes the images and the metrics' own random draws (SWD's projections here, KID's subsets, LPIPS's
    pairs), as the protocol's one seed says: the scores are those of evaluate_image_sets at that seed."""
    from dreamctl.data.loader import open_split
    from dreamctl.metrics.image_sets import evaluate_image_sets
    from dreamctl.sample_folder import read_samples

    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    result = evaluate_run(run, SampleOptions(seed=3), EvalOptions(num=8, ref_num=8, metrics=("swd",)), rt=CPU)
    with open_split(trained[1], "train", limit=8) as ref:
        reference = ref[torch.arange(8)].numpy()
    generated = read_samples(result.samples, 8, 32)
    by_seed = {s: evaluate_image_sets(generated, reference, ["swd"], seed=s)["metrics"]["swd"]["value"] for s in (0, 3)}
    assert by_seed[0] != by_seed[3]  # the seed matters to SWD, so the check below can tell
    assert result.record["metrics"]["swd"]["value"] == by_seed[3] and result.record["protocol"]["seed"] == 3


@pytest.mark.filterwarnings("ignore:FID from 16 generated images:dreamctl.errors.DreamctlWarning")  # tiny on purpose
def test_evaluate_pipeline_with_stand_in_network(trained, tmp_path):
    run, data = trained
    metrics = ("fid", "kid", "is", "swd", "pixel_fd")
    net = StandInFeatureNet()
    asked = EvalOptions(num=16, ref_num=20, metrics=metrics)
    result = evaluate_run(run, SampleOptions(), asked, rt=CPU, feature_net=net)
    rec, p = result.record, result.record["protocol"]
    assert rec["protocol_id"] == "ddim2-eta0-ema-n16-train20-clean-standin"
    manifest = json.loads((data / "manifest.json").read_text())
    expected = {"checkpoint_step": 4, "ema": True, "sampler": "ddim", "steps": 2, "eta": 0.0, "t_start": None,
                "num_generated": 16, "seed": 0, "ref_split": "train", "ref_num": 20,
                "ref_preprocessing": manifest["preprocessing"], "resize": RESIZE_CLEAN,
                "feature_network": net.name, "feature_network_sha256": net.weights_sha256,
                "feature_network_stand_in": True, "reference_cache": "written", "ref_trained_on": 20,
                "image_size": 32}  # compare splits one id's columns by it (protocol.DATA_FIELDS)
    assert {k: p[k] for k in expected} == expected
    sample_json = json.loads((result.samples / "sample.json").read_text())
    assert p["weights_sha256"] == sample_json["weights_sha256"] and len(p["weights_sha256"]) == 64
    assert "stand-in" in p["feature_network"] and "NOT Inception" in p["feature_network"]
    assert tuple(rec["metrics"]) == metrics
    for name in metrics:
        assert np.isfinite(rec["metrics"][name]["value"]), name
    assert "stand-in" in rec["metrics"]["fid"]["note"]
    assert net.last_input_shape[1:] == (3, 299, 299) and net.calls == 16 + 20
    assert {"torch", "clean-fid", "dreamctl"} <= set(rec["versions"]) and rec["wall_time_s"] > 0
    saved = run / "eval" / f"{rec['protocol_id']}.json"
    assert json.loads(saved.read_text()) == json.loads(json.dumps(rec))
    cache = list((data / "cache").glob("refstats-*.npz"))
    assert len(cache) == 1 and cache[0].parent.parent == data  # beside the shards

    # Second time: samples reused, reference statistics read from the cache (only 16 images go through the net).
    net2 = StandInFeatureNet()
    drawn = {p: p.stat().st_mtime_ns for p in result.samples.glob("0*.png")}
    again = evaluate_run(run, SampleOptions(), asked, rt=CPU, feature_net=net2)
    assert net2.calls == 16 and again.record["protocol"]["reference_cache"] == "hit"
    assert len(drawn) == 16 and {p: p.stat().st_mtime_ns for p in result.samples.glob("0*.png")} == drawn
    assert again.record["metrics"]["fid"]["value"] == pytest.approx(rec["metrics"]["fid"]["value"])

    # Asking for one metric keeps the others measured on the same samples.
    only = evaluate_run(run, SampleOptions(), EvalOptions(num=16, ref_num=20, metrics=("pixel_fd",)), rt=CPU,
                        feature_net=net2)
    assert set(only.record["metrics"]) == set(metrics)

    # An older checkpoint under the same protocol: the newest stays in <id>.json, each step gets <id>@step<N>.json.
    _older_checkpoint(run, 2)
    older = evaluate_run(run, SampleOptions(checkpoint=2), EvalOptions(num=16, ref_num=20, metrics=("swd",)), rt=CPU,
                         feature_net=net2)
    pid = rec["protocol_id"]
    assert older.record["protocol_id"] == pid and older.record["protocol"]["checkpoint_step"] == 2
    assert json.loads(saved.read_text())["protocol"]["checkpoint_step"] == 4
    assert {f.name for f in (run / "eval").glob(f"{pid}@step*.json")} == {f"{pid}@step2.json", f"{pid}@step4.json"}
    steps = sorted(r.checkpoint_step for r in read_evals(run / "eval") if r.protocol_id == pid)
    assert steps == [2, 4]
    checkpoint_path(run / "checkpoints", 2).unlink()


def test_explicit_fid_without_weights_fails_before_sampling(trained, offline, capsys):
    run, _ = trained
    before = set((run / "samples").iterdir())
    assert main(["evaluate", str(run), "--num", "8", "--metrics", "fid,swd", "--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert "inception-2015-12-05.pt" in err and "https://nvlabs-fi-cdn.nvidia.com/" in err
    assert str(offline / "inception-2015-12-05.pt") in err
    # A corrupt file is refused too, also before sampling.
    offline.mkdir(parents=True)
    (offline / "inception-2015-12-05.pt").write_bytes(b"not a TorchScript archive")
    assert main(["evaluate", str(run), "--num", "8", "--metrics", "fid", "--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert "is corrupt: not a TorchScript archive" in err and str(offline / "inception-2015-12-05.pt") in err
    # Defaults taken from the recipe are not strict, unless asked.
    assert main(["evaluate", str(run), "--num", "8", "--seed", "5", "--strict-weights"]) == 2
    err = capsys.readouterr().err
    assert "alexnet-owt-7be5be79.pth" in err and err.count("inception-2015-12-05.pt is corrupt") == 1  # fid, kid, is
    # A TorchScript that is not clean-fid's Inception (10 classes, not its 1008): refused, named once.
    write_fake_inception(offline, num_classes=10)
    assert main(["evaluate", str(run), "--num", "8", "--metrics", "fid,kid", "--seed", "5"]) == 2
    assert capsys.readouterr().err.count("should be (1008, 2048), found (10, 2048)") == 1
    # So is a reference split too small for --ref-num (valid holds 13 images).
    assert main(["evaluate", str(run), "--num", "8", "--ref", "valid", "--ref-num", "50", "--metrics", "swd",
                 "--seed", "5"]) == 2
    assert "needs 50 reference images but split valid of" in capsys.readouterr().err
    assert set((run / "samples").iterdir()) == before  # no sample folder was made
    assert not list(run.glob("eval/*-n8-*"))


def test_default_metrics_without_weights_are_reported_missing(trained, capsys):
    run, _ = trained
    assert main(["evaluate", str(run), "--num", "12", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    rec = json.loads((run / "eval" / "ddim2-eta0-ema-n12-train12-clean-seed7.json").read_text())
    assert list(rec["metrics"]) == ["fid", "kid", "is", "lpips", "swd"]  # the recipe's eval.metrics
    for name, file in (("fid", "inception-2015-12-05.pt"), ("kid", "inception-2015-12-05.pt"),
                       ("is", "inception-2015-12-05.pt"), ("lpips", "alexnet-owt-7be5be79.pth")):
        assert set(rec["metrics"][name]) == {"missing"} and file in rec["metrics"][name]["missing"], name
    assert np.isfinite(rec["metrics"]["swd"]["value"])
    assert rec["protocol"]["feature_network_sha256"] is None and rec["weights"] == {}
    assert "SWD x1e3 on Laplacian-pyramid 7x7 patches" in out  # the patch size the file records
    assert "missing" in out and "inception-2015-12-05.pt" in out
    flat = " ".join(out.split())
    assert flat.count("inception-2015-12-05.pt is missing") == 1 and "missing fid, kid, is: " in flat  # said once
    assert "missing lpips: " in flat and "comparable only within one protocol id" not in flat  # no FID, KID, IS
    assert "against the first 12 train images (all of them trained on: a score against training images" in flat
    assert "EMA, base seed 7: image i from seed 7*2**20+i)" in flat


def test_which_metrics_can_be_computed_is_decided_once(trained, tmp_path, offline, monkeypatch):
    """evaluate's refusal, its "missing" entries and evaluate_image_sets called alone give one reason per metric,
    from one decision (metric_inputs); and the Inception that decision loads is the one that scores: loaded once
    (evaluate_image_sets loaded it again, and named LPIPS's files otherwise, style review item 6)."""
    from dreamctl.errors import WeightsError
    from dreamctl.metrics.image_sets import evaluate_image_sets
    from dreamctl.metrics.inception import InceptionFeatureNet
    from dreamctl.sample_folder import read_samples

    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    defaults = EvalOptions(num=8, ref_num=12)  # the recipe's metrics: fid, kid, is, lpips, swd
    with pytest.raises(WeightsError) as refused:
        evaluate_run(run, SampleOptions(), EvalOptions(num=8, ref_num=12, strict_weights=True), rt=CPU)
    result = evaluate_run(run, SampleOptions(), defaults, rt=CPU)
    missing = {m: e["missing"] for m, e in result.record["metrics"].items() if "missing" in e}
    assert list(missing) == ["fid", "kid", "is", "lpips"]
    assert missing["fid"] == missing["kid"] == missing["is"]  # one file, one reason
    assert str(refused.value) == f"{missing['lpips']}; {missing['fid']}"  # the refusal names the same, each once
    images = read_samples(result.samples, 8, 32)
    alone = evaluate_image_sets(images, images[::-1].copy(), list(missing))["metrics"]
    assert {m: e["missing"] for m, e in alone.items()} == missing

    loads = []
    real_init = InceptionFeatureNet.__init__

    def counted(self, *args, **kwargs):
        loads.append(args)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(InceptionFeatureNet, "__init__", counted)
    write_fake_inception(offline)
    scored = evaluate_run(run, SampleOptions(), EvalOptions(num=10, ref_num=12, metrics=("kid", "is")), rt=CPU)
    assert all("value" in scored.record["metrics"][m] for m in ("kid", "is")) and len(loads) == 1
    # The file names the weights its numbers came from, by digest.
    from dreamctl.metrics import weights
    assert scored.record["weights"] == {weights.INCEPTION: weights.sha256_file(offline / weights.INCEPTION)}


def test_lpips_files_that_do_not_load_are_refused_before_drawing(trained, tmp_path, monkeypatch):
    """Intact files this lpips cannot load (another lpips version): the one reason, from metric_inputs, for a named
    metric a refusal before any sample is drawn; for a default one, {"missing": reason} beside the others."""
    from dreamctl.errors import WeightsError
    from dreamctl.metrics import inputs, lpips_diversity

    said = "alex.pth does not load into lpips 0.1.4's AlexNet: reinstall lpips==0.1.4"

    def no_load(*args, **kwargs):
        raise WeightsError(said)

    monkeypatch.setattr(inputs, "_file_problems", lambda metric, weights_dir: None)  # every file intact
    monkeypatch.setattr(lpips_diversity, "build_lpips", no_load)
    assert inputs.metric_inputs(["swd", "lpips"]).missing == {"lpips": said}
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    before = sorted(run.rglob("*"))
    with pytest.raises(WeightsError, match=re.escape(said)):
        evaluate_run(run, SampleOptions(), EvalOptions(num=8, ref_num=12, metrics=("lpips", "swd")), rt=CPU)
    assert sorted(run.rglob("*")) == before  # nothing drawn, nothing written
    kept = evaluate_run(run, SampleOptions(), EvalOptions(num=8, ref_num=12, metrics=None), rt=CPU).record["metrics"]
    assert kept["lpips"] == {"missing": said} and "value" in kept["swd"]


def test_evaluate_compiles_in_the_mode_asked_for(trained, tmp_path, monkeypatch):
    """--compile-mode reaches evaluate's sampling network as it reaches sample's."""
    import shutil

    from dreamctl import inference

    run = tmp_path / "run"
    shutil.copytree(trained[0], run)  # its own copy: this test's record stays out of the shared run
    asked = []
    monkeypatch.setattr(inference, "compile_for_sampling",
                        lambda model, mode, device_type: asked.append((mode, device_type)) or model)
    assert main(["evaluate", str(run), "--num", "4", "--metrics", "swd", "--compile-mode", "reduce-overhead"]) == 0
    assert asked == [("reduce-overhead", "cpu")]


def test_evaluate_finds_moved_data_with_data_option(trained, tmp_path, capsys):
    run, data = trained
    moved = tmp_path / "moved"
    data.rename(moved)
    try:
        args = ["evaluate", str(run), "--num", "4", "--metrics", "pixel_fd", "--seed", "7"]
        assert main(args) == 2
        assert "pass --data DIR" in capsys.readouterr().err
        assert main([*args, "--data", str(moved)]) == 0
    finally:
        moved.rename(data)
    shas = {r.protocol["ref_manifest_sha256"] for r in read_evals(run / "eval")
            if r.protocol.get("seed") == 7 and r.protocol.get("num_generated") == 4}
    assert shas == {manifest_sha256(read_manifest(data))}  # the same data, moved
    # Other data would overwrite the run's evaluation under the same protocol id: refused.
    other = tmp_path / "other"
    assert main(["prepare-data", "--source", "synthetic", "--count", "40", "--resolution", "32", "--seed", "3",
                 "--out", str(other)]) == 0
    capsys.readouterr()
    assert main([*args, "--data", str(other)]) == 2
    assert "holds other data than this run trained on" in capsys.readouterr().err
    # ... and so is the recorded folder itself once prepared again in place with other images.
    data.rename(tmp_path / "kept")
    other.rename(data)
    try:
        assert main(args) == 2
        assert "holds other data than this run trained on" in capsys.readouterr().err
    finally:
        data.rename(other)
        (tmp_path / "kept").rename(data)
    for flag, message in (("--num", "evaluate draws 2 (a covariance needs two)"),  # 0 is not "the default"
                          ("--ref-num", "evaluate needs at least 2 reference images")):
        assert main([*args, flag, "0"]) == 2
        assert f"{flag} 0: {message}" in capsys.readouterr().err


def test_the_evaluate_table_says_what_plus_minus_is(monkeypatch, capsys, tmp_path):
    """± after KID is a std over subsets, after LPIPS the std of single pair distances: one line says so,
    for a file that records "spread" and for one from before it did (KID here)."""
    from dreamctl import evaluation

    protocol = {"checkpoint_step": 4, "num_generated": 8, "sampler": "ddim", "steps": 2, "eta": 0.0, "ema": True,
                "seed": 0, "ref_num": 8, "ref_split": "train", "feature_network": "inception-2015-12-05", "resize": RESIZE_CLEAN,
                "kid": {"num_subsets": 7, "max_subset_size": 1000}}
    record = {"protocol_id": "p", "protocol": protocol, "metrics": {
        "kid": {"value": 0.02, "std": 0.001}, "lpips": {"value": 0.3, "std": 0.05, "spread": "pairs"},
        "swd": {"value": 4.0}}}
    monkeypatch.setattr(evaluation, "evaluate_run", lambda *a, **k: evaluation.Evaluation(record, (), tmp_path))
    assert main(["evaluate", str(tmp_path)]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the console may wrap
    assert "± is: kid std over random subsets; lpips std of single pair distances, not an error bar" in out
    assert "cubic kernel, 7 subsets" in out  # the settings the file records, not the code's defaults now


def test_a_damaged_reference_shard_stops_evaluate_before_it_draws(trained, tmp_path, capsys):
    """The reference shards are hashed before sampling: not found out after hours of drawing."""
    run, data = tmp_path / "run", tmp_path / "data"
    shutil.copytree(trained[0], run)
    shutil.copytree(trained[1], data)
    shard = sorted(data.glob("train-*.h5"))[0]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    drawn_before = sorted(p.name for p in (run / "samples").iterdir()) if (run / "samples").is_dir() else []
    assert main(["evaluate", str(run), "--num", "4", "--metrics", "swd", "--seed", "11", "--data", str(data)]) == 2
    assert f"{shard.name}" in capsys.readouterr().err
    drawn_after = sorted(p.name for p in (run / "samples").iterdir()) if (run / "samples").is_dir() else []
    assert drawn_after == drawn_before


def test_a_run_trained_before_eval_settings_were_checked_still_loads(trained, tmp_path, capsys):
    """Its recipe.yaml may hold eval.num 1 or an unknown metric: sample and compare work on it, and evaluate
    names the recipe's setting at fault, not a --num nobody gave."""
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    text = (run / "recipe.yaml").read_text()
    (run / "recipe.yaml").write_text(re.sub(r"(?m)^eval:\n  num: \d+$", "eval:\n  num: 1", text)
                                     .replace("  - swd\n", "  - swd\n  - fdi\n", 1))
    assert main(["compare", str(run)]) == 0
    assert main(["sample", str(run), "--num", "2", "--out", str(tmp_path / "s")]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--metrics", "swd"]) == 2
    assert "eval.num 1: evaluate draws 2 (a covariance needs two) to 1,048,576 images" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--num", "4"]) == 2
    assert "unknown metric(s) fdi in eval.metrics" in capsys.readouterr().err


def _two_rank_worker(rank: int, init: str, run: str, out: str, metrics: tuple[str, ...]) -> None:
    import torch.distributed as dist

    from dreamctl import evaluation
    from dreamctl.errors import CheckpointError
    from dreamctl.runtime import Runtime
    from dreamctl.training.rundir import RunDir

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    real = evaluation.metric_inputs
    if rank == 1 and not metrics:  # a node without the run folder
        def absent(self):
            raise CheckpointError(f"{self.recipe_file} not found")
        RunDir.recipe = absent
        metrics = ("swd",)

    def noted(*args, **kwargs):  # the call that loads Inception: each rank that makes it leaves a file
        Path(out, f"weights-checked-by-{rank}").touch()
        return real(*args, **kwargs)

    evaluation.metric_inputs = noted
    rt = Runtime(torch.device("cpu"), "fp32", rank=rank, world_size=2)
    try:
        result = evaluate_run(Path(run), SampleOptions(), EvalOptions(num=8, ref_num=12, metrics=metrics), rt=rt,
                              weights_dir=Path(out, "no-weights"))
        said = "record" if result is not None else "none"
    except Exception as err:
        said = type(err).__name__
    Path(out, f"rank-{rank}").write_text(said)
    dist.barrier()  # both done with the group before either destroys it (gloo can abort otherwise)
    dist.destroy_process_group()


def test_under_two_ranks_only_rank_0_loads_the_metric_networks(trained, tmp_path):
    """Only rank 0 scores; every rank loading Inception cost each GPU its memory (style review C5). A missing
    file asked for by name still stops every rank before drawing."""
    import torch.multiprocessing as mp

    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    for metrics, said in ((("swd",), ["record", "none"]), (("fid",), ["WeightsError", "StoppedWithMain"])):
        out = tmp_path / metrics[0]
        out.mkdir()
        mp.spawn(_two_rank_worker, args=(f"file://{out / 'store'}", str(run), str(out), metrics), nprocs=2)
        assert [(out / f"rank-{r}").read_text() for r in (0, 1)] == said
        assert sorted(p.name for p in out.glob("weights-checked-by-*")) == ["weights-checked-by-0"]


def test_a_run_folder_missing_on_one_node_is_its_error_not_a_lost_peer(trained, tmp_path):
    """Rank 0, the one that prints, said another process had crashed, and exited 1; the real error (exit 2) was
    only in torchrun's report (dist review F2)."""
    import torch.multiprocessing as mp

    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    before = sorted(run.rglob("*"))
    mp.spawn(_two_rank_worker, args=(f"file://{tmp_path / 'store'}", str(run), str(tmp_path), ()), nprocs=2)
    assert [(tmp_path / f"rank-{r}").read_text() for r in (0, 1)] == ["RunError", "CheckpointError"]
    assert sorted(run.rglob("*")) == before  # nothing drawn or written
