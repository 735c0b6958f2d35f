"""The shard loader: manifest checks, in-memory vs per-shard reads, batch order, resume, flips."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import shutil

import h5py
import numpy as np
import pytest
import torch

from dreamctl.data.loader import (
    BatchOrder,
    default_memory_budget,
    epoch_batches,
    flip_mask,
    open_split,
    steps_per_epoch,
    to_model_input,
)
from dreamctl.data.synthetic import draw_faces
from dreamctl.errors import DataError
from dreamctl.runtime import mix_seed


def edited_copy(source, tmp_path, edit):
    """A copy of prepared folder `source` whose manifest.json went through `edit(manifest)`."""
    data = tmp_path / "data"
    shutil.copytree(source, data)
    manifest = json.loads((data / "manifest.json").read_text())
    edit(manifest)
    (data / "manifest.json").write_text(json.dumps(manifest))
    return data


def test_open_split_holds_the_split_in_memory_in_shard_order(synthetic_data_dir):
    images = open_split(synthetic_data_dir, "train")
    assert images.images is not None and images.images.dtype == torch.uint8
    assert images.images.shape == (230, 32, 32, 3) and len(images) == 230
    assert np.array_equal(images.images.numpy(), draw_faces(230, 32, 0))
    assert images.names()[:2] == ["face-0000000", "face-0000001"] and len(images.names()) == 230
    assert len(images.manifest_sha256) == 64 and images.manifest.counts["valid"] == 13
    assert len(open_split(synthetic_data_dir, "test")) == 13


def test_shard_by_shard_reads_the_same_images(synthetic_data_dir):
    memory = open_split(synthetic_data_dir, "train")
    disk = open_split(synthetic_data_dir, "train", memory_budget=0)
    assert disk.images is None
    idx = torch.tensor([229, 0, 150, 99, 100, 0, 7])  # across all three shards, a repeat, out of order
    assert torch.equal(disk[idx], memory[idx])
    with pytest.raises(DataError, match="shard by shard"):
        disk.to("cpu")


def test_limit_keeps_the_first_images(synthetic_data_dir):
    images = open_split(synthetic_data_dir, "train", limit=150)
    assert len(images) == 150 and images.counts == [100, 50]
    assert torch.equal(images.images, open_split(synthetic_data_dir, "train").images[:150])
    with pytest.raises(DataError, match="limit 231 is outside 1..230"):
        open_split(synthetic_data_dir, "train", limit=231)


def test_damaged_or_mismatched_shards_name_the_shard_and_the_fix(synthetic_data_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synthetic_data_dir, data)
    shard = data / "train-00001.h5"
    shard.write_bytes(shard.read_bytes()[:5000])  # truncated
    with pytest.raises(DataError, match=r"train-00001\.h5 cannot be read.*prepare-data --verify"):
        open_split(data, "train")
    assert len(open_split(data, "train", limit=100)) == 100  # the intact first shard alone still opens
    shard.unlink()
    with pytest.raises(DataError, match=r"train-00001\.h5 is missing"):
        open_split(data, "train")
    shutil.copy(synthetic_data_dir / "train-00001.h5", shard)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][1]["count"] = 99
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"train-00001\.h5 holds \(100, 32, 32, 3\) uint8, the manifest says \(99, 32, 32, 3\)"):
        open_split(data, "train")
    with pytest.raises(DataError, match="manifest.json not found"):
        open_split(tmp_path / "nothing", "train")


def test_a_shard_changed_in_place_is_refused(synthetic_data_dir, tmp_path):
    """Same size, same layout, other pixels: only its sha256 tells, and training must not use it."""
    data = tmp_path / "data"
    shutil.copytree(synthetic_data_dir, data)
    with h5py.File(data / "train-00000.h5", "r+") as f:
        f["images"][0] = 255 - f["images"][0]
    with pytest.raises(DataError, match=r"train-00000\.h5 does not hash to the sha256 in the manifest"):
        open_split(data, "train")


def _read_in_child(images, idx, queue):
    pixels = images[idx].numpy()
    queue.put((pixels, images._pid == os.getpid()))  # it re-opened the shards for itself


def test_h5py_handles_belong_to_the_process_that_opened_them(synthetic_data_dir):
    disk = open_split(synthetic_data_dir, "train", memory_budget=0)
    idx = torch.tensor([5, 105, 205])
    expected = disk[idx].numpy()  # the parent now holds open handles
    assert disk._files
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(disk, idx, queue))
    child.start()
    got, reopened = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0 and reopened and np.array_equal(got, expected)
    assert disk._pid == os.getpid()
    clone = pickle.loads(pickle.dumps(disk))  # spawn-style workers get no handles, only paths
    assert clone._files == {} and torch.equal(clone[idx], disk[idx])


# --- batch order -----------------------------------------------------------------------


def test_epoch_batches_are_a_pure_function_of_seed_and_epoch():
    a = epoch_batches(100, 32, seed=3, epoch=2)
    assert len(a) == steps_per_epoch(100, 32) == 3 and all(len(b) == 32 for b in a)
    assert all(torch.equal(x, y) for x, y in zip(a, epoch_batches(100, 32, seed=3, epoch=2)))
    flat = torch.cat(a)
    assert len(set(flat.tolist())) == 96 and flat.max() < 100  # no repeats; the last 4 dropped
    assert not torch.equal(flat, torch.cat(epoch_batches(100, 32, seed=3, epoch=3)))
    assert not torch.equal(flat, torch.cat(epoch_batches(100, 32, seed=4, epoch=2)))


def test_two_ranks_cover_an_epoch_without_overlap_and_match_one_rank():
    one = epoch_batches(100, 32, seed=0, epoch=1)
    r0 = epoch_batches(100, 32, seed=0, epoch=1, rank=0, world_size=2)
    r1 = epoch_batches(100, 32, seed=0, epoch=1, rank=1, world_size=2)
    for g, a, b in zip(one, r0, r1):
        assert len(a) == len(b) == 16 and not set(a.tolist()) & set(b.tolist())
        assert torch.equal(torch.cat([a, b]), g)  # each global batch is the same whatever the world size
    assert len(set(torch.cat(r0 + r1).tolist())) == 96
    with pytest.raises(DataError, match=r"train.batch_size 32 \(the global batch\) must split evenly over 3 processes: "
                       r"run on a number of processes that divides it \(1, 2, 4, 8, 16, 32\), or, for a new run, "
                       r"set it to a multiple of 3"):
        epoch_batches(100, 32, seed=0, epoch=0, rank=0, world_size=3)
    with pytest.raises(DataError, match=r"train\.batch_size 128 must be between 1 and the number of training images \(100\): lower it"):
        steps_per_epoch(100, 128)


def test_a_restored_order_sees_exactly_the_remaining_batches():
    order = BatchOrder(50, 16, seed=7, rank=1, world_size=2)  # 3 steps per epoch
    full = [next(order) for _ in range(8)]  # crosses two epoch boundaries
    assert [(b.epoch, b.index) for b in full[:4]] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    first = BatchOrder(50, 16, seed=7, rank=1, world_size=2)
    for _ in range(4):
        next(first)
    state = first.state_dict()
    assert (state["epoch"], state["batch_index"]) == (1, 1)
    resumed = BatchOrder(50, 16, seed=7, rank=1, world_size=2)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # survives a checkpoint round trip
    for want in full[4:]:
        got = next(resumed)
        assert (got.epoch, got.index) == (want.epoch, want.index)
        assert torch.equal(got.indices, want.indices) and torch.equal(got.flip, want.flip)
    with pytest.raises(DataError, match="seed=7, this run has 8"):
        BatchOrder(50, 16, seed=8).load_state_dict(state)


def test_flips_are_deterministic_balanced_and_split_like_the_batch():
    full = flip_mask(1, 2, 3, 64)
    assert torch.equal(full, flip_mask(1, 2, 3, 64)) and 16 < int(full.sum()) < 48
    assert torch.equal(torch.cat([flip_mask(1, 2, 3, 64, r, 4) for r in range(4)]), full)
    assert not torch.equal(full, flip_mask(1, 2, 4, 64))
    state = torch.get_rng_state()
    next(BatchOrder(64, 64, seed=0))
    assert torch.equal(state, torch.get_rng_state())  # no global RNG touched


def test_to_model_input_scales_and_flips():
    images = torch.randint(0, 256, (3, 4, 5, 3), dtype=torch.uint8)
    images[0, 0, 0] = torch.tensor([0, 255, 128], dtype=torch.uint8)
    x = to_model_input(images)
    assert x.dtype == torch.float32 and x.shape == (3, 3, 4, 5) and x.is_contiguous()
    assert x[0, :, 0, 0].tolist() == [-1.0, 1.0, pytest.approx(1 / 255, abs=1e-6)]
    assert torch.equal(x, images.permute(0, 3, 1, 2).float() / 127.5 - 1)
    flipped = to_model_input(images, flip=torch.tensor([True, False, True]))
    assert torch.equal(flipped[0], x[0].flip(-1)) and torch.equal(flipped[1], x[1]) and torch.equal(flipped[2], x[2].flip(-1))


def test_data_bench_measures_both_loaders_on_the_same_images(tmp_path):
    from dreamctl.bench.data import run_data_bench

    result = run_data_bench(count=64, resolution=16, batch_size=16, workers=1, work_dir=tmp_path, min_seconds=0.05, repeats=1)
    assert result["images"] == 64 and result["prepare_img_per_s_per_worker"] > 0
    assert result["shard_loader_img_per_s_per_core"] > result["imagefolder_img_per_s_per_core"] > 0
    # the speedup is rounded from the unrounded rates: it matches the rounded ones to within rounding
    ratio = result["shard_loader_img_per_s_per_core"] / result["imagefolder_img_per_s_per_core"]
    assert result["speedup_per_core"] == pytest.approx(ratio, abs=0.06)
    assert list(tmp_path.iterdir()) == []  # the originals and shards were temporary


def test_a_saved_position_at_the_end_of_an_epoch_is_refused():
    """A position is the NEXT batch, always wrapped into the next epoch: batch_index == steps is a damaged state."""
    order = BatchOrder(50, 16, seed=7)  # 50 // 16 = 3 steps per epoch: valid batch_index 0, 1, 2
    order.load_state_dict({"epoch": 1, "batch_index": 2, "n": 50, "batch_size": 16, "seed": 7})
    assert (next(order).epoch, next(order).epoch) == (1, 2)  # batch 2 ends epoch 1
    with pytest.raises(DataError, match=r"batch_index=3 is outside 0\.\.2"):
        BatchOrder(50, 16, seed=7).load_state_dict({"epoch": 1, "batch_index": 3, "n": 50, "batch_size": 16, "seed": 7})
    with pytest.raises(DataError, match=r"batch_index=-1 is outside"):
        BatchOrder(50, 16, seed=7).load_state_dict({"epoch": 1, "batch_index": -1, "n": 50, "batch_size": 16, "seed": 7})


def test_batch_order_flips_are_those_of_its_epoch_and_batch_index():
    """Flips are keyed (seed, epoch, batch index) in that order: epoch 1's batch 2 is not epoch 2's batch 1."""
    order = BatchOrder(64, 16, seed=5, rank=1, world_size=2)  # 4 steps per epoch
    batches = [next(order) for _ in range(12)]
    for b in batches:
        assert torch.equal(b.flip, flip_mask(5, b.epoch, b.index, 16, 1, 2))
    e1b2 = next(b for b in batches if (b.epoch, b.index) == (1, 2))
    e2b1 = next(b for b in batches if (b.epoch, b.index) == (2, 1))
    assert not torch.equal(e1b2.flip, flip_mask(5, 2, 1, 16, 1, 2))  # 8 coin flips: a clash is a 1/256 fluke
    assert not torch.equal(e1b2.flip, e2b1.flip)


def test_seed_and_epoch_are_not_interchangeable():
    """Run seed 1's first epoch must not replay seed 0's second: the seed's parts are mixed in order."""
    assert mix_seed(1, 0, 2) != mix_seed(0, 1, 2) and mix_seed(1, 2) != mix_seed(2, 1)
    a, b = epoch_batches(100, 32, seed=0, epoch=1), epoch_batches(100, 32, seed=1, epoch=0)
    assert not torch.equal(torch.cat(a), torch.cat(b))
    assert not torch.equal(flip_mask(0, 1, 0, 64), flip_mask(1, 0, 0, 64))


@pytest.mark.parametrize("field, edit", [
    ("splits.train.shards.0.sha256", lambda m: m["splits"]["train"]["shards"][0].update(sha256=None)),
    ("image_shape", lambda m: m.update(image_shape="x")),
    ("image_shape.0", lambda m: m.update(image_shape=["32", 32, 3])),
    ("splits.train.shards.1.count", lambda m: m["splits"]["train"]["shards"][1].update(count=True)),
    ("splits.valid.shards", lambda m: m["splits"]["valid"].pop("shards")),
    ("skipped", lambda m: m.update(skipped={})),
])
def test_an_edited_manifest_names_the_field_and_the_fix(synthetic_data_dir, tmp_path, field, edit):
    """Training reads image_shape and every shard's record: a wrong type is one DataError, not a TypeError."""
    data = edited_copy(synthetic_data_dir, tmp_path, edit)
    with pytest.raises(DataError, match=rf"manifest\.json: field {field}: .*restore manifest\.json, or re-run prepare-data with --overwrite") as err:
        open_split(data, "train")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["../outside.h5", "sub/train-00000.h5"])
def test_a_manifest_naming_a_shard_outside_its_folder_is_refused(synthetic_data_dir, tmp_path, name):
    """A manifest names files inside its own folder; a path that leads out of it (even to a valid shard) is refused."""
    data = tmp_path / "data"
    shutil.copytree(synthetic_data_dir, data)
    manifest = json.loads((data / "manifest.json").read_text())
    shard = manifest["splits"]["train"]["shards"][0]
    target = (data / name).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data / shard["file"], target)  # an intact copy: only the path is wrong
    shard["file"] = name
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="outside the folder"):
        open_split(data, "train", limit=100)
    with pytest.raises(DataError, match="outside the folder"):
        open_split(data, "train", memory_budget=0)


def test_a_shard_without_its_names_dataset_is_named_not_a_crash(synthetic_data_dir, tmp_path):
    """A shard holding images but no names is damaged: one DataError naming the shard, not an AttributeError."""
    data = tmp_path / "data"
    shutil.copytree(synthetic_data_dir, data)
    with h5py.File(data / "train-00000.h5", "r+") as f:
        del f["names"]
    with pytest.raises(DataError, match=r"train-00000\.h5 lacks its `images` or `names` dataset"):
        open_split(data, "train")


def test_a_json_file_of_another_format_is_not_taken_for_a_manifest(synthetic_data_dir, tmp_path):
    """A manifest from another tool (or a future layout) is refused by its format, with the fix."""
    data = edited_copy(synthetic_data_dir, tmp_path, lambda m: m.update(format="dreamctl-shards/0"))
    with pytest.raises(DataError, match=r"manifest\.json is not a dreamctl-shards/1 manifest; re-run prepare-data"):
        open_split(data, "train")


def test_a_manifest_of_binary_garbage_is_a_data_error(synthetic_data_dir, tmp_path):
    """Bytes that are not UTF-8 (a damaged disk, a wrong file copied in) are reported like bad JSON."""
    data = tmp_path / "data"
    shutil.copytree(synthetic_data_dir, data)
    (data / "manifest.json").write_bytes(b"\xff\xfe\x00garbage\x80")
    with pytest.raises(DataError, match=r"manifest\.json is not valid JSON"):
        open_split(data, "train")


def test_a_split_the_folder_lacks_is_named_with_the_ones_it_has(synthetic_data_dir, tmp_path):
    """A folder prepared without a valid split: asking for it says which splits exist, not a KeyError."""
    data = edited_copy(synthetic_data_dir, tmp_path, lambda m: m["splits"].pop("valid"))
    with pytest.raises(DataError, match=r"manifest\.json has no split 'valid'; it has (train, test|test, train)$"):
        open_split(data, "valid")


def test_the_processes_of_a_node_share_the_memory_budget_for_the_data(monkeypatch):
    """Each of torchrun's processes holds its own copy of a split it keeps in memory: 8 copies of a split
    that fits half the memory would not fit."""
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    alone = default_memory_budget()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert default_memory_budget() == alone // 8 > 0

