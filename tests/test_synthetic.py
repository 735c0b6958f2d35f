"""Synthetic faces: deterministic per (seed, index), varied, anti-aliased, face-shaped."""

import dataclasses
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dreamctl.data import synthetic
from dreamctl.data.synthetic import draw_face, draw_faces
from dreamctl.errors import DataError


def test_shape_dtype_and_draw_face_matches_batch():
    faces = draw_faces(3, 16, seed=0)
    assert faces.shape == (3, 16, 16, 3) and faces.dtype == np.uint8
    image = draw_face(2, 16, seed=0)
    assert image.mode == "RGB" and image.size == (16, 16)
    np.testing.assert_array_equal(np.asarray(image), faces[2])
    assert draw_faces(0, 16, seed=0).shape == (0, 16, 16, 3)


def test_deterministic_and_depends_only_on_seed_and_index():
    a, b = draw_faces(20, 16, seed=3), draw_faces(20, 16, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(draw_faces(10, 16, seed=3, start=5), a[5:15])


def test_same_faces_in_a_fresh_process():
    code = ("import hashlib; from dreamctl.data.synthetic import draw_faces; "
            "print(hashlib.sha256(draw_faces(8, 16, seed=11).tobytes()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[1])  # the working tree imports even when not installed
    assert out.stdout.strip() == hashlib.sha256(draw_faces(8, 16, seed=11).tobytes()).hexdigest()


def test_different_seeds_and_indices_differ():
    a, b = draw_faces(8, 16, seed=0), draw_faces(8, 16, seed=1)
    assert all(not np.array_equal(x, y) for x, y in zip(a, b))
    flat = a.reshape(8, -1)
    assert len({row.tobytes() for row in flat}) == 8


def test_variety_across_faces():
    faces = draw_faces(64, 16, seed=5).astype(np.float32)
    means = faces.mean(axis=(1, 2))  # (64, 3) mean colour per face
    assert means.std(axis=0).min() > 8  # backgrounds, skin and hair vary in every channel
    centre = faces[:, 6:10, 6:10].mean(axis=(1, 2))  # mostly skin
    assert centre.mean(axis=1).max() - centre.mean(axis=1).min() > 80  # light and dark skin


def test_traits_cover_every_style_at_sensible_rates():
    traits = [synthetic._sample_traits(np.random.default_rng([0, i])) for i in range(1000)]
    assert {t.hair_style for t in traits} == set(synthetic.HAIR_STYLES)
    assert {t.mouth for t in traits} == set(synthetic.MOUTHS)
    assert 0.14 < np.mean([t.glasses for t in traits]) < 0.26
    assert 0.2 < np.mean([t.bg[0] == t.bg[1] for t in traits]) < 0.5  # flat and gradient backgrounds
    assert np.std([t.pose[2] for t in traits]) > 0.03  # some rotation, not much
    assert np.abs([t.pose[2] for t in traits]).max() < 0.4


def _flat_lit(index: int) -> synthetic.Traits:
    """A face with a flat background and no lighting: only drawing adds colours."""
    t = synthetic._sample_traits(np.random.default_rng([0, index]))
    return dataclasses.replace(t, bg=(t.bg[0], t.bg[0]), light=0.0)


def _colours(image: np.ndarray) -> int:
    return len(np.unique(image.reshape(-1, 3), axis=0))


def test_edges_are_anti_aliased(monkeypatch):
    traits = [_flat_lit(i) for i in range(4)]
    smooth = [_colours(synthetic._render(t, 32)) for t in traits]
    # Without supersampling the same drawing has only its ~30 fill colours: the control
    # shows that the count measures anti-aliasing, not the palette.
    monkeypatch.setattr(synthetic, "SUPERSAMPLE", 1)
    hard = [_colours(synthetic._render(t, 32)) for t in traits]
    assert max(hard) < 40
    assert min(smooth) > 3 * max(hard)


def test_mean_face_has_skin_centre_eyes_and_mouth():
    mean = draw_faces(200, 32, seed=9).astype(np.float32).mean(axis=0)
    warmth = mean[..., 0] - mean[..., 2]  # skin is redder than blue; random backgrounds are not
    corners = np.concatenate([warmth[:4, :4], warmth[:4, -4:]]).mean()
    assert warmth[12:22, 10:22].mean() > corners + 40
    lum = mean.mean(axis=-1)
    eye_row = lum[13:16]  # eyes at ~44% of the height, ~0.11 either side of centre
    eyes = (eye_row[:, 11:13].mean() + eye_row[:, 19:21].mean()) / 2
    assert eyes < eye_row[:, 15:17].mean() - 10  # darker than the bridge of the nose between them
    assert lum[21:23, 14:18].mean() < lum[18:20, 14:18].mean() - 10  # mouth darker than above it
    assert abs(warmth[:, :16].mean() - warmth[:, 16:].mean()) < 5  # centred, left/right balanced


@pytest.mark.parametrize("kwargs", [dict(resolution=4, seed=0), dict(resolution=16, seed=-1)])
def test_bad_arguments_raise_data_error(kwargs):
    with pytest.raises(DataError):
        draw_faces(2, **kwargs)
    with pytest.raises(DataError):
        draw_faces(2, 16, 0, start=-1)
