"""sample on a tiny trained run: the same images at any batch size, on any rank, after a stop, and
compiled; what is refused. Evaluation is in test_evaluate_run.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import dead_pid
from dreamctl import generate, inference, sample_folder
from dreamctl.cli import main
from dreamctl.config import load_recipe
from dreamctl.errors import DataError, RunError
from dreamctl.inference import SampleOptions, load_for_inference
from dreamctl.runtime import Runtime
from dreamctl.sample_folder import read_samples, sample_to_folder
from dreamctl.training.rundir import RunDir
from tiny_runs import CPU, trained_for_sampling


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_data_dir) -> tuple[Path, Path]:
    return trained_for_sampling(tmp_path_factory.mktemp("sample"), synthetic_data_dir)


def _draw(run: Path, folder: Path, num: int, rt: Runtime = CPU, **opts) -> np.ndarray:
    seed = opts.pop("seed", 0)
    model = load_for_inference(RunDir(run), SampleOptions(**opts), rt)
    sample_to_folder(model, folder, num, seed=seed, rt=rt)
    return read_samples(folder, num, model.image_size)


def test_sampling_loads_the_ema_weights_unless_told_otherwise(trained):
    from dreamctl.training.checkpoints import list_checkpoints, load_checkpoint

    run, _ = trained
    ckpt = load_checkpoint(list_checkpoints(run / "checkpoints")[-1])
    for opts, part, other in ((SampleOptions(), "ema", "model"), (SampleOptions(use_ema=False), "model", "ema")):
        weights = load_for_inference(RunDir(run), opts, CPU).net.net.state_dict()
        assert all(torch.equal(weights[k], ckpt[part][k]) for k in ckpt[part])
        assert not all(torch.equal(weights[k], ckpt[other][k]) for k in ckpt[other])


def test_same_seeds_same_images_at_any_batch_size(trained, tmp_path):
    run, _ = trained
    # eta = 1: every DDIM step draws noise too, from each image's own generator.
    one = _draw(run, tmp_path / "b1", 9, eta=1.0, batch_size=1)
    seven = _draw(run, tmp_path / "b7", 9, eta=1.0, batch_size=7)
    assert one.shape == (9, 32, 32, 3) and one.std() > 0
    # The same noise; the network's sums may round otherwise at another batch size (one 8-bit level).
    assert np.abs(one.astype(int) - seven).max() <= 1
    assert not np.array_equal(one[0], one[1])
    # Another base seed draws another set: no image of seed 1 is one of seed 0's (with seed + i it
    # would be shifted by one), and image i is seed * 2**20 + i, the grid's seeds for seed 0.
    other = _draw(run, tmp_path / "s1", 9, eta=1.0, seed=1, batch_size=4)
    assert not any(np.array_equal(a, b) for a in other for b in one)
    assert generate.image_seeds(1, [0, 8]) == [2**20, 2**20 + 8] and generate.image_seeds(0, range(3)) == [0, 1, 2]


def test_stop_and_rerun_keeps_finished_images(trained, tmp_path, monkeypatch, capsys):
    run, _ = trained
    reference = _draw(run, tmp_path / "straight", 10, batch_size=4)
    out = tmp_path / "stopped"
    calls = {"n": 0}
    real_generate = sample_folder.generate

    def stop_after_one_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the run
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(sample_folder, "generate", stop_after_one_batch)
    assert main(["sample", str(run), "--num", "10", "--batch-size", "4", "--out", str(out)]) == 130
    assert "rerun the same command" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:06d}.png" for i in range(4)]
    # A batch scheduler's SIGTERM stops it the same way, and says so with 128 + 15.
    calls["n"] = 0

    def terminated_in_second_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(sample_folder, "generate", terminated_in_second_batch)
    assert main(["sample", str(run), "--num", "10", "--batch-size", "3", "--out", str(out)]) == 143
    assert "rerun the same command" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:06d}.png" for i in range(7)]  # one batch more
    assert json.loads((out / "sample.json").read_text())["complete"] is False
    monkeypatch.setattr(sample_folder, "generate", real_generate)
    assert main(["sample", str(run), "--num", "10", "--batch-size", "4", "--out", str(out), "--npz"]) == 0
    np.testing.assert_array_equal(read_samples(out, 10, 32), reference)

    # Delete two images and damage one; everything else must be left untouched.
    for i in (2, 8):
        sample_folder.png_path(out, i).unlink()
    sample_folder.png_path(out, 5).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    old = 1_000_000_000
    for p in out.glob("*.png"):
        os.utime(p, ns=(old, old))
    # What a kill mid-write leaves (its writer gone) is cleared; a write under way (a live pid's) is not.
    host, dead = socket.gethostname(), dead_pid()
    killed = [out / f".000005.png.{dead}@{host}.tmp", out / f".samples-10.npz.{dead}@{host}.tmp"]
    running = out / f".000008.png.{os.getppid()}@{host}.tmp"
    for p in [*killed, running]:
        p.write_bytes(b"half")
    capsys.readouterr()
    assert main(["sample", str(run), "--num", "10", "--batch-size", "3", "--out", str(out)]) == 0
    assert not any(p.exists() for p in killed) and running.exists()
    running.unlink()
    assert f"samples: {out} (7 of 10 already there, kept)" in capsys.readouterr().out  # the folder's count
    np.testing.assert_array_equal(read_samples(out, 10, 32), reference)
    redrawn = {i for i in range(10) if sample_folder.png_path(out, i).stat().st_mtime_ns != old}
    assert redrawn == {2, 5, 8}
    record = json.loads((out / "sample.json").read_text())
    assert record["drawn_now"] == 3 and record["complete"] and record["num"] == 10
    assert {k: record[k] for k in ("checkpoint_step", "ema", "sampler", "steps", "eta", "t_start", "seed")} == \
        {"checkpoint_step": 4, "ema": True, "sampler": "ddim", "steps": 2, "eta": 0.0, "t_start": None, "seed": 0}
    assert (out / "grid.png").is_file() and "dreamctl_version" in record
    np.testing.assert_array_equal(np.load(out / "samples-10.npz")["images"], reference)
    # Asked again for fewer: nothing drawn, said so, and sample.json keeps what drawing took (UX review 3.7)
    assert main(["sample", str(run), "--num", "4", "--out", str(out)]) == 0
    assert "(0 drawn now" in capsys.readouterr().out
    again = json.loads((out / "sample.json").read_text())
    assert {k: again[k] for k in ("created", "wall_time_s", "drawn_now", "num")} == \
        {k: record[k] for k in ("created", "wall_time_s", "drawn_now", "num")}
    # Asking for fewer later draws nothing and leaves the record of what the folder holds.
    capsys.readouterr()
    assert main(["sample", str(run), "--num", "4", "--out", str(out)]) == 0
    assert json.loads((out / "sample.json").read_text())["num"] == 10
    assert f"10 images in {out} (0 drawn now" in capsys.readouterr().out  # what the folder holds, not --num


def test_a_batch_that_runs_out_of_gpu_memory_is_drawn_again_at_half_the_size(trained, tmp_path, monkeypatch):
    """--batch-size too large for the GPU: the batch is halved until it fits and the same images are drawn
    (each image's noise comes from its own seed); at batch size 1 the error is the GPU's, not a loop.
    The GPU is stood in for by a generate that runs out of memory above 2 images."""
    run, _ = trained
    reference = _draw(run, tmp_path / "straight", 5, batch_size=5)
    real_generate, sizes = sample_folder.generate, []

    def small_gpu(net, schedule, seeds, **kw):
        sizes.append(len(seeds))
        if len(seeds) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (stand-in)")
        return real_generate(net, schedule, seeds, **kw)

    monkeypatch.setattr(sample_folder, "generate", small_gpu)
    np.testing.assert_array_equal(_draw(run, tmp_path / "halved", 5, batch_size=8), reference)
    assert sizes == [5, 4, 2, 2, 1]  # 8 -> 4 -> 2, then the rest at 2

    tries = []

    def no_gpu_memory(net, schedule, seeds, **kw):
        tries.append(len(seeds))
        assert len(tries) <= 3, f"batch sizes tried: {tries}"  # halving past 1 would loop on empty batches
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (stand-in)")

    monkeypatch.setattr(sample_folder, "generate", no_gpu_memory)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        _draw(run, tmp_path / "none", 2, batch_size=2)
    assert tries == [2, 1]


def test_ranks_draw_their_own_slices(trained, tmp_path):
    run, _ = trained
    reference = _draw(run, tmp_path / "one", 7)
    folder = tmp_path / "two"
    model = load_for_inference(RunDir(run), SampleOptions(), CPU)
    rank0, rank1 = (Runtime(torch.device("cpu"), "fp32", rank=r, world_size=2) for r in (0, 1))
    # Without a process group the barriers are skipped, so the ranks run one after the other:
    # rank 0 has recorded the settings (its part before the first barrier) when rank 1 starts.
    sample_folder.open_folder(model, folder, 0, rank0)
    sample_to_folder(model, folder, 7, seed=0, rt=rank1)
    assert sorted(int(p.stem) for p in folder.glob("*.png")) == [1, 3, 5]
    assert not (folder / "grid.png").exists()
    sample_to_folder(model, folder, 7, seed=0, rt=rank0)
    np.testing.assert_array_equal(read_samples(folder, 7, 32), reference)
    assert (folder / "grid.png").is_file()


def _top_up_worker(rank: int, init: str, run: str, folder: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    rt = Runtime(torch.device("cpu"), "fp32", rank=rank, world_size=2)
    events = []
    model = load_for_inference(RunDir(run), SampleOptions(), rt)
    record = sample_to_folder(model, Path(folder), 6, seed=0, rt=rt, on_event=lambda kind, p: events.append((kind, p)))
    start = next(p for kind, p in events if kind == "sample_start")
    Path(out, f"rank-{rank}").write_text(json.dumps([start["held"], start["kept"], record["drawn_now"]]))
    dist.barrier()  # both done with the group before either destroys it (gloo can abort otherwise)
    dist.destroy_process_group()


def test_under_two_ranks_the_kept_and_drawn_counts_are_the_folders(trained, tmp_path):
    """A folder holding 4 of 6 images, topped up by two ranks that draw one each: every rank's start line says
    4 kept (not the 5 its own share would suggest), and sample.json says 2 drawn now."""
    import torch.multiprocessing as mp

    run, _ = trained
    folder = tmp_path / "s"
    reference = _draw(run, tmp_path / "straight", 6)
    _draw(run, folder, 4)
    mp.spawn(_top_up_worker, args=(f"file://{tmp_path / 'store'}", str(run), str(folder), str(tmp_path)), nprocs=2)
    assert [json.loads((tmp_path / f"rank-{r}").read_text()) for r in (0, 1)] == [[6, 4, 2]] * 2
    np.testing.assert_array_equal(read_samples(folder, 6, 32), reference)


def test_sample_refuses_what_the_recipe_schema_refuses(trained, tmp_path, capsys):
    run, _ = trained
    for args, key in ((["--sampler", "ddpm", "--steps", "5"], "no --steps or --t-start with --sampler ddpm"),
                      (["--steps", "5000"], "sample.steps"), (["--t-start", "1000"], "sample.t_start"),
                      (["--eta", "1.5"], "sample.eta"),  # was clamped inside the step without a word
                      (["--sampler", "euler"], "sample.sampler"), (["--checkpoint", "3"], "no checkpoint for step 3"),
                      (["--device", "tpu"], "--device tpu: expected cpu or cuda")):
        assert main(["sample", str(run), "--num", "2", "--out", str(tmp_path / "x"), *args]) == 2, args
        assert key in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    # The source reads as what it is: the run's sample section, on the checkpoint's schedule, with the flags.
    assert main(["sample", str(run), "--num", "2", "--out", str(tmp_path / "x"), "--steps", "5000"]) == 2
    assert (f"{run / 'recipe.yaml'} (sample section, on the schedule of step-00000004.pt) with --steps 5000: "
            "sample.steps") in capsys.readouterr().err
    # A folder holding images drawn with other settings is never topped up.
    assert main(["sample", str(run), "--num", "2", "--out", str(tmp_path / "y")]) == 0
    assert main(["sample", str(run), "--num", "3", "--eta", "1", "--out", str(tmp_path / "y")]) == 2
    assert "eta=0.0" in capsys.readouterr().err and not (tmp_path / "y" / "000002.png").exists()
    (tmp_path / "a-file").write_text("keep me")
    for args, needle in ((["--out", str(tmp_path / "a-file")], f"--out {tmp_path / 'a-file'} is a file, not a folder"),
                         (["--out", str(tmp_path / "z"), "--seed", "4096"], "seed 4096 is outside 0..4095"),
                         (["--out", str(tmp_path / "z"), "--seed", "-1"], "seed -1 is outside")):
        assert main(["sample", str(run), "--num", "2", *args]) == 2, args
        assert needle in capsys.readouterr().err
    for num, said in ((0, "--num 0: draw at least 1 image"),  # not "draw fewer"
                      (2**20 + 1, "--num 1048577: a set holds 1 to 1,048,576 images")):  # before the first image
        assert main(["sample", str(run), "--num", str(num), "--out", str(tmp_path / "z")]) == 2, num
        assert said in capsys.readouterr().err
    assert (tmp_path / "a-file").read_text() == "keep me" and not (tmp_path / "z").exists()


def test_a_folder_of_another_runs_images_is_not_topped_up(trained, tmp_path, capsys):
    run, _ = trained
    twin = tmp_path / "twin"  # the same checkpoint and settings, but another run (as a retrained one would be)
    shutil.copytree(run, twin, ignore=shutil.ignore_patterns("samples", "eval"))
    info = json.loads((twin / "run.json").read_text())
    (twin / "run.json").write_text(json.dumps({**info, "run_id": "another"}))
    from dreamctl.training.checkpoints import list_checkpoints, load_checkpoint
    for path in list_checkpoints(twin / "checkpoints"):  # its own checkpoints, as a retrained run's are
        torch.save({**load_checkpoint(path), "run_id": "another"}, path)
    assert main(["sample", str(run), "--num", "2", "--out", str(tmp_path / "s")]) == 0
    assert main(["sample", str(twin), "--num", "3", "--out", str(tmp_path / "s")]) == 2
    assert "run_id=" in capsys.readouterr().err and not (tmp_path / "s" / "000002.png").exists()
    record = json.loads((tmp_path / "s" / "sample.json").read_text())
    del record["run_id"]  # a folder drawn before run_id (and before today's seed rule)
    (tmp_path / "s" / "sample.json").write_text(json.dumps(record))
    assert main(["sample", str(run), "--num", "3", "--out", str(tmp_path / "s")]) == 2
    assert "drawn by an earlier dreamctl" in capsys.readouterr().err


@pytest.mark.parametrize("theirs", ["grid.png", "samples-2.npz", "000001.png", "thesis.tex"])
def test_a_folder_without_sample_json_is_refused_and_kept(trained, tmp_path, theirs, capsys):
    """A user's grid.png or npz in --out was replaced without a word; other files of theirs got thousands
    of PNGs beside them. Samples go into a new or empty folder."""
    run, _ = trained
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / theirs).write_bytes(b"my own figure")
    assert main(["sample", str(run), "--num", "2", "--npz", "--out", str(folder)]) == 2
    assert f"{folder} holds {theirs} but no sample.json: not a sample folder" in capsys.readouterr().err
    assert [p.name for p in folder.iterdir()] == [theirs] and (folder / theirs).read_bytes() == b"my own figure"
    (folder / theirs).unlink()  # an empty folder is taken, and one empty in practice
    (folder / ".gitkeep").write_text("")
    (folder / "lost+found").mkdir()
    assert main(["sample", str(run), "--num", "2", "--out", str(folder)]) == 0


def test_a_sample_json_whose_count_is_not_a_number_is_one_error(trained, tmp_path, capsys):
    run, _ = trained
    folder = tmp_path / "s"
    assert main(["sample", str(run), "--num", "2", "--out", str(folder)]) == 0
    record = json.loads((folder / "sample.json").read_text())
    for count in ("x", -1):  # a negative count is no count either: it would pass for "none held" unnoticed
        (folder / "sample.json").write_text(json.dumps({**record, "num": count}))
        assert main(["sample", str(run), "--num", "2", "--out", str(folder)]) == 2
        assert f"sample.json says num {count!r}, not a count of images" in capsys.readouterr().err


def test_sampling_builds_the_network_the_checkpoint_was_trained_with(trained, tmp_path, capsys):
    run, _ = trained
    edited = tmp_path / "edited"
    shutil.copytree(run, edited, ignore=shutil.ignore_patterns("samples", "eval"))
    recipe = (edited / "recipe.yaml").read_text()
    assert "schedule: cosine" in recipe
    (edited / "recipe.yaml").write_text(recipe.replace("schedule: cosine", "schedule: linear"))
    with pytest.warns(UserWarning, match="differs from the recipe step-00000004.pt was trained with"):
        changed = _draw(edited, tmp_path / "b", 3)
    np.testing.assert_array_equal(changed, _draw(run, tmp_path / "a", 3))  # the cosine schedule, as trained
    # So is an edited data.resolution: the network draws at the size it was trained at, and says so.
    (edited / "recipe.yaml").write_text(recipe.replace("  resolution: 32\n", "  resolution: 16\n", 1))
    with pytest.warns(UserWarning, match="differs from the recipe step-00000004.pt was trained with in its model, "
                                         "diffusion or data.resolution section"):
        resized = _draw(edited, tmp_path / "c", 3)
    np.testing.assert_array_equal(resized, _draw(run, tmp_path / "a", 3))  # 32 px, as trained



def test_a_folder_drawn_from_other_weights_of_the_same_step_is_not_added_to(trained, tmp_path, capsys):
    """Resume past a corrupt checkpoint writes its step again, maybe with other weights; a `--out` folder
    (not set aside as the run's own are) drawn from the old ones must not be finished with the new."""
    from dreamctl.training.checkpoints import list_checkpoints, load_checkpoint

    run, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("samples", "eval"))
    out = tmp_path / "out"
    assert main(["sample", str(copy), "--num", "2", "--out", str(out)]) == 0
    assert main(["sample", str(copy), "--num", "3", "--out", str(out)]) == 0  # the same weights: kept, one more
    newest = list_checkpoints(copy / "checkpoints")[-1]
    ckpt = load_checkpoint(newest)
    ckpt["ema"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in ckpt["ema"].items()}
    torch.save(ckpt, newest)  # what a resume with another lr would write under the same step
    capsys.readouterr()
    assert main(["sample", str(copy), "--num", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out} holds samples drawn from other weights than checkpoint step {ckpt['step']} holds now" in err
    assert not (out / "000003.png").exists()
    record = json.loads((out / "sample.json").read_text())  # an earlier dreamctl's folder: its step is all it says
    del record["weights_sha256"]
    (out / "sample.json").write_text(json.dumps(record))
    assert main(["sample", str(copy), "--num", "4", "--out", str(out)]) == 0

def test_sampling_settings_are_checked_against_the_trained_schedule(trained, tmp_path, capsys):
    """recipe.yaml edited to a longer schedule with as many sampling steps: the checkpoint's T is what
    sampling uses, so its steps are refused there with one line, not a traceback from the sampler."""
    run, _ = trained
    edited = tmp_path / "edited"
    shutil.copytree(run, edited, ignore=shutil.ignore_patterns("samples", "eval"))
    recipe = yaml.safe_load((edited / "recipe.yaml").read_text())
    trained_T = recipe["diffusion"]["num_timesteps"]
    recipe["diffusion"]["num_timesteps"] = 2 * trained_T
    recipe["sample"]["steps"] = trained_T + 1
    (edited / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["sample", str(edited), "--num", "1", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "differs from the recipe step-00000004.pt was trained with" in err  # the warning, then the error
    assert f"sample.steps ({trained_T + 1}) exceeds diffusion.num_timesteps" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()
    # An option that fixes the setting is applied before the check, as with any recipe.
    assert main(["sample", str(edited), "--num", "1", "--steps", "2", "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "000000.png").is_file() and not (tmp_path / "s" / "000001.png").exists()



def test_compiled_sampling_draws_the_same_images(trained, tmp_path):
    """--compile (sample.compile) wraps the network in torch.compile; the images agree up to rounding."""
    run, _ = trained
    model = load_for_inference(RunDir(run), SampleOptions(compile=True), CPU)
    assert model.cfg.compile and isinstance(model.net.net, torch._dynamo.eval_frame.OptimizedModule)
    assert not load_for_inference(RunDir(run), SampleOptions(), CPU).cfg.compile  # the recipe's default
    eager = _draw(run, tmp_path / "eager", 2)
    compiled = _draw(run, tmp_path / "compiled", 2, compile=True)
    assert np.abs(eager.astype(int) - compiled.astype(int)).max() <= 1
    # CUDA graphs asked for on the CPU: there are none to record, so it draws as the default mode does.
    graphs = _draw(run, tmp_path / "graphs", 2, compile_mode="reduce-overhead")
    assert np.abs(eager.astype(int) - graphs.astype(int)).max() <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs are recorded on CUDA only")
def test_cuda_graphs_draw_the_images_eager_draws(trained, tmp_path):
    """Replays overwrite the graph's outputs: had the sampler kept one across steps, the images would differ."""
    run, _ = trained
    cuda = Runtime(torch.device("cuda"), "fp32")
    eager = _draw(run, tmp_path / "eager", 3, rt=cuda)
    graphs = _draw(run, tmp_path / "graphs", 3, rt=cuda, compile_mode="reduce-overhead")
    assert np.abs(eager.astype(int) - graphs.astype(int)).max() <= 1


def test_no_compile_overrides_a_recipes_compile_mode():
    """--no-compile over a recipe that asks for CUDA graphs samples eager, rather than being refused."""
    recipe = load_recipe("tiny", ["sample.compile=true", "sample.compile_mode=reduce-overhead"])
    cfg = inference.sample_config(recipe, SampleOptions(compile=False), "tiny")
    assert (cfg.compile, cfg.compile_mode) == (False, "default")


def test_compile_mode_asks_for_compile_and_is_refused_without_it(trained, tmp_path, monkeypatch, capsys):
    """--compile-mode alone compiles in that mode (CUDA graphs on CUDA; elsewhere torch's default mode);
    beside --no-compile it is refused, nothing drawn."""
    run, _ = trained
    asked, modes = [], []
    monkeypatch.setattr(inference, "compile_for_sampling",
                        lambda model, mode, device_type: asked.append((mode, device_type)) or model)
    model = load_for_inference(RunDir(run), SampleOptions(compile_mode="reduce-overhead"), CPU)
    assert (model.cfg.compile, model.cfg.compile_mode, asked) == (True, "reduce-overhead", [("reduce-overhead", "cpu")])
    monkeypatch.undo()
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: modes.append(mode) or model)
    for device_type in ("cuda", "cpu"):
        inference.compile_for_sampling(torch.nn.Identity(), "reduce-overhead", device_type)
    inference.compile_for_sampling(torch.nn.Identity(), "default", "cuda")
    assert modes == ["reduce-overhead", "default", "default"]
    for args, needle in ((["--no-compile", "--compile-mode", "reduce-overhead"], "needs compile: true (or --compile)"),
                         (["--compile-mode", "max-autotune"], "sample.compile_mode: Input should be 'default' or "
                                                               "'reduce-overhead'")):
        assert main(["sample", str(run), "--num", "2", "--out", str(tmp_path / "x"), *args]) == 2, args
        assert needle in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_stop_before_the_npz_is_finished_by_the_same_command(trained, tmp_path, monkeypatch):
    """--grid is never replaced, so it is written after the npz: a rerun of a command stopped in between
    finishes it instead of refusing the grid it had already written."""
    run, _ = trained
    args = ["sample", str(run), "--num", "4", "--out", str(tmp_path / "s"), "--grid", str(tmp_path / "g.png"), "--npz"]

    def stopped(*a, **kw):
        raise RuntimeError("killed")  # stands for a kill while the npz is written

    monkeypatch.setattr(sample_folder, "write_npz", stopped)
    with pytest.raises(RuntimeError, match="killed"):
        main(args)
    monkeypatch.undo()
    assert main(args) == 0
    assert (tmp_path / "g.png").is_file() and (tmp_path / "s" / "samples-4.npz").is_file()


def test_the_folders_grid_shows_its_first_images_only(trained, tmp_path, monkeypatch):
    """grid.png is a preview of the first GRID_MAX images, not a picture of all 50,000 (memory, and a PNG no
    viewer opens). GRID_MAX lowered to 2 so that three images show it."""
    from PIL import Image

    run, _ = trained
    monkeypatch.setattr(sample_folder, "GRID_MAX", 2)
    images = _draw(run, tmp_path / "s", 3)
    generate.save_grid(images[:2], tmp_path / "first-two.png")
    with Image.open(tmp_path / "s" / "grid.png") as got, Image.open(tmp_path / "first-two.png") as expected:
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_a_png_of_another_size_counts_as_missing_not_kept(tmp_path):
    """A folder image of the wrong size (another resolution's run, a resized copy) must be redrawn:
    kept, it would break read_samples' (num, size, size, 3) array later."""
    from PIL import Image

    good, small = np.full((32, 32, 3), 7, np.uint8), np.full((16, 16, 3), 7, np.uint8)
    Image.fromarray(good).save(sample_folder.png_path(tmp_path, 0))
    Image.fromarray(small).save(sample_folder.png_path(tmp_path, 1))
    np.testing.assert_array_equal(sample_folder.read_png(sample_folder.png_path(tmp_path, 0), 32), good)
    assert sample_folder.read_png(sample_folder.png_path(tmp_path, 1), 32) is None
    with pytest.raises(DataError, match="000001.png is missing or unreadable"):
        read_samples(tmp_path, 2, 32)


def test_the_largest_base_seed_names_the_last_images_a_32_bit_seed_can_hold():
    """--seed 4095 is the last base seed the schema allows (2**32 / 2**20 - 1); 4096 is refused."""
    assert generate.image_seeds(4095, [0, 2**20 - 1]) == [4095 * 2**20, 2**32 - 1]
    with pytest.raises(generate.ConfigError, match="seed 4096 is outside 0..4095"):
        generate.image_seeds(4096, [0])
    with pytest.raises(generate.ConfigError, match="seed -1 is outside"):
        generate.image_seeds(-1, [0])


def test_a_base_seed_holds_exactly_2_to_the_20_images():
    """Image 2**20 - 1 is base 0's last; image 2**20 would be base 1's first image and is refused."""
    assert generate.image_seeds(0, [2**20 - 1]) == [2**20 - 1]
    assert generate.image_seeds(2, [2**20 - 1]) == [3 * 2**20 - 1]
    with pytest.raises(generate.ConfigError, match="a base seed names at most 1,048,576 images"):
        generate.image_seeds(0, [2**20])
    with pytest.raises(generate.ConfigError, match="at most 1,048,576 images"):
        generate.image_seeds(2, [5, 2**20])


def test_images_drawn_in_bf16_are_kept_apart_from_fp32_ones(trained, tmp_path, capsys):
    """bf16 autocast (the default on a GPU) draws other images from the same seeds than fp32: they get
    their own default folder, and a folder is never topped up in the other precision."""
    from dreamctl.sample_folder import folder_name

    run, _ = trained
    bf16 = Runtime(torch.device("cpu"), "bf16")
    model = load_for_inference(RunDir(run), SampleOptions(), bf16)
    assert folder_name(model, 0).endswith("-seed0-bf16") and not folder_name(
        load_for_inference(RunDir(run), SampleOptions(), CPU), 0).endswith("bf16")
    _draw(run, tmp_path / "s", 2)  # fp32
    assert json.loads((tmp_path / "s" / "sample.json").read_text())["precision"] == "fp32"
    with pytest.raises(RunError, match="precision='fp32' \\(asked 'bf16'\\)"):
        sample_to_folder(model, tmp_path / "s", 3, seed=0, rt=bf16)
    assert not (tmp_path / "s" / "000002.png").exists()
    # A sample.json without the field (written before precision was recorded) may hold bf16 images drawn on a
    # GPU: only weights_sha256 is taken as absent-means-same (ADDED_KEYS); a missing precision is a clash.
    record = json.loads((tmp_path / "s" / "sample.json").read_text())
    del record["precision"]
    (tmp_path / "s" / "sample.json").write_text(json.dumps(record))
    fp32 = load_for_inference(RunDir(run), SampleOptions(), CPU)
    with pytest.raises(RunError, match="precision=None \\(asked 'fp32'\\)"):
        sample_to_folder(fp32, tmp_path / "s", 3, seed=0, rt=CPU)
    assert not (tmp_path / "s" / "000002.png").exists()


def test_a_grid_not_named_png_is_refused_before_drawing(trained, tmp_path, capsys):
    """--grid out.jpg wrote PNG bytes under a .jpg name."""
    run, _ = trained
    assert main(["sample", str(run), "--num", "2", "--out", str(tmp_path / "s"), "--grid", str(tmp_path / "g.jpg")]) == 2
    assert f"--grid {tmp_path / 'g.jpg'}: the grid is written as PNG" in capsys.readouterr().err
    assert not (tmp_path / "s").exists() and not (tmp_path / "g.jpg").exists()


def _checkpoint_worker(rank: int, init: str, run: str, out: str, gone: bool) -> None:
    import torch.distributed as dist

    from dreamctl.errors import CheckpointError
    from dreamctl.training.checkpoints import checkpoint_path

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    rt = Runtime(torch.device("cpu"), "fp32", rank=rank, world_size=2)
    if rank == 1:  # its listing was made before step 8 landed: left to itself it would sample step 4
        stale = checkpoint_path(Path(run) / "checkpoints", 4)
        inference.list_checkpoints = lambda folder: [stale]
        if gone:  # rotated away between rank 0's choice and this rank's load
            def rotated(run, step):
                raise CheckpointError(f"no checkpoint for step {step}")
            inference.choose_checkpoint = rotated
    try:
        said = str(load_for_inference(RunDir(run), SampleOptions(), rt).step)
    except Exception as err:  # every rank stops, none waits in a collective for the other
        said = type(err).__name__
    Path(out, f"rank-{rank}").write_text(said)
    dist.barrier()  # both done with the group before either destroys it (gloo can abort otherwise)
    dist.destroy_process_group()


def test_every_rank_samples_the_checkpoint_rank_0_chose(trained, tmp_path):
    """A run still training writes (or rotates) checkpoints between two ranks' listings: ranks on two steps
    would draw into two folders, each half filled. Rank 0 picks the step; every rank loads that one."""
    import torch.multiprocessing as mp

    from dreamctl.training.checkpoints import checkpoint_path, load_checkpoint

    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    newer = load_checkpoint(checkpoint_path(run / "checkpoints", 4))
    newer["step"] = 8
    torch.save(newer, checkpoint_path(run / "checkpoints", 8))
    for gone, said in ((False, ["8", "8"]), (True, ["RunError", "CheckpointError"])):
        mp.spawn(_checkpoint_worker, args=(f"file://{tmp_path / f'store-{gone}'}", str(run), str(tmp_path), gone),
                 nprocs=2)
        assert [(tmp_path / f"rank-{r}").read_text() for r in (0, 1)] == said


def test_a_damaged_newest_checkpoint_is_refused_not_replaced_by_an_older_one(trained, tmp_path, capsys):
    """sample and evaluate of a run mean its newest checkpoint: drawing quietly from an older one (as resume goes
    on from it) wrote an evaluation of another model under the run's protocol, with one warning (UX review 3.2).
    Named with --checkpoint, the older one is used."""
    from dreamctl.training.checkpoints import checkpoint_path, load_checkpoint

    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    newest = checkpoint_path(run / "checkpoints", 4)
    older = load_checkpoint(newest)
    older["step"] = 2
    torch.save(older, checkpoint_path(run / "checkpoints", 2))  # an older readable one
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    args = ["sample", str(run), "--num", "2", "--out", str(tmp_path / "s")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {newest} cannot be read" in err and "it is the newest; `dreamctl resume" in err
    assert "--checkpoint STEP draws from another one (steps there: 2)" in err and "\n" not in err.strip()
    assert not (tmp_path / "s").exists() and newest.read_bytes() == data[: len(data) // 2]  # nothing moved
    evaluated = sorted((run / "eval").glob("*.json"))
    assert main(["evaluate", str(run), "--num", "2", "--metrics", "swd"]) == 2  # evaluate alike, before drawing
    assert "it is the newest; `dreamctl resume" in capsys.readouterr().err
    assert sorted((run / "eval").glob("*.json")) == evaluated
    assert main([*args, "--checkpoint", "2"]) == 0
    assert json.loads((tmp_path / "s" / "sample.json").read_text())["checkpoint_step"] == 2
    assert main([*args, "--checkpoint", "4"]) == 2  # named, it gets the fix too (crash audit 6)
    err = capsys.readouterr().err
    assert "--checkpoint STEP draws from another one (steps there: 2)" in err and "it is the newest" not in err


def test_sample_and_evaluate_refuse_another_runs_checkpoint_and_name_lost_ones(trained, tmp_path, capsys):
    """resume refused a checkpoint copied in from another run, sample and evaluate drew from it under this run's
    name; with the checkpoints gone, sample said the run had written none yet and sent the user to resume, which
    refused (crash audit 2, 5)."""
    from dreamctl.training.checkpoints import checkpoint_path, load_checkpoint

    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    path = checkpoint_path(run / "checkpoints", 4)
    foreign = load_checkpoint(path)
    foreign["run_id"] = "0" * 32
    torch.save(foreign, path)
    for command in (["sample", str(run), "--num", "2"], ["evaluate", str(run), "--num", "2", "--metrics", "swd"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"checkpoint {path} was written by run {'0' * 32}, not by this one" in err, command
    assert not (run / "samples").exists() or not any((run / "samples").glob("*/*.png"))
    path.unlink()
    assert main(["sample", str(run), "--num", "2"]) == 2
    err = capsys.readouterr().err
    assert "says the run reached step 4 but" in err and "put the checkpoint files back" in err


def test_clip_x0_is_a_flag_of_sample_and_evaluate_and_names_its_folder(trained, tmp_path, capsys):
    """x0 clipping (diffusers' DDPMScheduler default) could be set only in a run's recipe.yaml: to match
    another codebase's sampler a user had to edit the run (numbers review #4)."""
    run, _ = trained
    assert main(["sample", str(run), "--num", "2", "--clip-x0", "--eta", "1", "--out", str(tmp_path / "c")]) == 0
    assert json.loads((tmp_path / "c" / "sample.json").read_text())["clip_x0"] is True
    model = load_for_inference(RunDir(run), SampleOptions(clip_x0=True, eta=1.0), CPU)
    assert model.cfg.clip_x0 and sample_folder.folder_name(model, 0).endswith("-clip")
    clipped, plain = read_samples(tmp_path / "c", 2, 32), _draw(run, tmp_path / "p", 2, eta=1.0)
    assert not np.array_equal(clipped, plain)  # an untrained net's x0 estimate leaves [-1, 1]: clipping changes it
    assert main(["evaluate", "--help"]) == 0 and "--clip-x0" in capsys.readouterr().out


def test_the_sampling_flags_reach_the_folder_as_typed(trained, tmp_path):
    """Every sampling flag of `sample` through the command line into what sample.json records of the draw."""
    run, _ = trained
    out = tmp_path / "s"
    assert main(["sample", str(run), "--num", "2", "--out", str(out), "--no-ema", "--steps", "3", "--eta", "1",
                 "--t-start", "900", "--clip-x0", "--seed", "3", "--checkpoint", "4", "--batch-size", "1"]) == 0
    record = json.loads((out / "sample.json").read_text())
    assert {k: record[k] for k in ("ema", "sampler", "steps", "eta", "t_start", "clip_x0", "seed", "checkpoint_step")} \
        == {"ema": False, "sampler": "ddim", "steps": 3, "eta": 1.0, "t_start": 900, "clip_x0": True, "seed": 3,
            "checkpoint_step": 4}


def test_sample_and_evaluate_turn_their_flags_into_sample_options_alike():
    """Both commands take every SampleOptions field as a parameter of the field's name, and options.sample_options
    builds the record from typer's ctx.params by those names: each field gets its own flag's value, and a new
    sampling setting that one command lacks fails here."""
    import inspect
    from dataclasses import asdict

    from dreamctl.cli import evaluate, options, sample

    for command in (sample.command, evaluate.command):
        params = {name: f"<{name}>" for name in inspect.signature(command).parameters}
        got = asdict(options.sample_options(params))
        assert got == {field: f"<{field}>" for field in got}, command.__module__
