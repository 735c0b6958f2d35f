"""Procedurally drawn faces: a CelebA stand-in that needs no download.

Face i is a pure function of (seed, i) via ``numpy.random.default_rng([seed, i])``,
so any slice of a data set can be redrawn in any process. Faces are drawn with
Pillow at ``SUPERSAMPLE`` times the target size and reduced with LANCZOS, which
anti-aliases every edge. Geometry is in unit coordinates (0..1 of the image) and goes
through one pose transform, so rotation, offset and scale move every part alike.
Layout follows aligned CelebA: face centred, eyes at ~44% of the height, mouth ~70%.
"""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from dreamctl.errors import DataError

SUPERSAMPLE = 4
HAIR_STYLES = ("short", "long", "bald", "bangs", "curly")
MOUTHS = ("smile", "neutral", "open")
CY = 0.56  # vertical centre of the face ellipse

_SKIN = np.array([[255, 224, 196], [241, 194, 160], [224, 172, 130], [198, 134, 92], [141, 85, 54], [95, 58, 38]])
_HAIR = np.array([[25, 20, 18], [60, 40, 25], [105, 70, 40], [160, 115, 65], [215, 185, 120],
                  [150, 65, 35], [175, 170, 165]])
_IRIS = np.array([[70, 45, 25], [110, 75, 40], [70, 110, 160], [80, 120, 80], [35, 28, 22]])


@dataclass(frozen=True)
class Traits:
    """Everything random about one face; drawing is deterministic given these."""

    skin: tuple
    hair: tuple
    hair_style: str
    iris: tuple
    shirt: tuple
    bg: tuple  # two colours; equal for a flat background
    bg_angle: float
    w: float  # half-width of the face, unit coordinates
    h: float  # half-height of the face
    chin: float  # how much the jaw narrows towards the chin
    eye_gap: float  # half the distance between the eyes
    eye_size: float
    brow_tilt: float
    mouth: str
    mouth_w: float
    glasses: bool
    beard: bool
    pose: tuple  # (dx, dy, angle in radians, scale)
    light: float  # signed strength of the left/right shading


def _rgb(a) -> tuple:
    return tuple(np.clip(a, 0, 255).astype(int).tolist())


def _shade(rgb, f) -> tuple:
    return _rgb(np.array(rgb) * f)


def _sample_traits(rng: np.random.Generator) -> Traits:
    skin = _SKIN[rng.integers(len(_SKIN))] * rng.uniform(0.93, 1.05) + rng.normal(0, 5, 3)
    grey = rng.uniform(40, 220)  # backgrounds are muted, as in photos
    bg0, bg1 = (grey + (rng.uniform(0, 255, 3) - grey) * rng.uniform(0.1, 0.6) for _ in range(2))
    shirt = rng.uniform(15, 230) + (rng.uniform(0, 255, 3) - 128) * rng.uniform(0, 0.6)
    return Traits(
        skin=_rgb(skin), hair=_shade(_HAIR[rng.integers(len(_HAIR))], rng.uniform(0.8, 1.15)),
        hair_style=HAIR_STYLES[rng.integers(len(HAIR_STYLES))],
        iris=_rgb(_IRIS[rng.integers(len(_IRIS))]), shirt=_rgb(shirt),
        bg=(_rgb(bg0), _rgb(bg0 if rng.random() < 0.35 else bg1)), bg_angle=rng.uniform(0, 2 * np.pi),
        w=rng.uniform(0.23, 0.29), h=rng.uniform(0.31, 0.37), chin=rng.uniform(0.1, 0.45),
        eye_gap=rng.uniform(0.105, 0.125), eye_size=rng.uniform(0.03, 0.042), brow_tilt=rng.uniform(-0.015, 0.02),
        mouth=MOUTHS[rng.integers(len(MOUTHS))], mouth_w=rng.uniform(0.07, 0.10),
        glasses=rng.random() < 0.2, beard=rng.random() < 0.12,
        pose=(rng.normal(0, 0.025), rng.normal(0, 0.015), rng.normal(0, 0.06), rng.uniform(0.9, 1.08)),
        light=rng.uniform(-0.35, 0.35),
    )


@lru_cache(maxsize=None)
def _circle(n: int) -> tuple:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.cos(t), np.sin(t)


class _Pen:
    """Maps unit coordinates through the pose into supersampled pixels and draws."""

    def __init__(self, draw: ImageDraw.ImageDraw, size: int, pose: tuple):
        dx, dy, angle, scale = pose
        self.draw, self.size = draw, size
        # One affine map: rotate/scale about the image centre, then shift, then to pixels.
        c, s = np.cos(angle) * scale * size, np.sin(angle) * scale * size
        self.m = np.array([[c, -s], [s, c]])
        self.o = (np.array([0.5 + dx, 0.5 + dy]) - self.m @ [0.5, 0.5] / size) * size

    def pts(self, x, y) -> list:
        p = np.stack(np.broadcast_arrays(x, y), -1) @ self.m.T + self.o
        return list(map(tuple, p.tolist()))

    def ellipse(self, cx, cy, rx, ry, fill=None, outline=None, width=0.01, n=24):
        cos, sin = _circle(n)
        p = self.pts(cx + rx * cos, cy + ry * sin)
        if fill is not None:
            self.draw.polygon(p, fill=fill)
        if outline is not None:
            self.draw.line(p + p[:1], fill=outline, width=max(1, round(width * self.size)), joint="curve")

    def polygon(self, x, y, fill):
        self.draw.polygon(self.pts(x, y), fill=fill)

    def line(self, x, y, fill, width):
        self.draw.line(self.pts(x, y), fill=fill, width=max(1, round(width * self.size)), joint="curve")


def _face_outline(t: Traits, n: int = 40) -> tuple:
    """An ellipse whose lower half narrows towards the chin."""
    cos, sin = _circle(n)
    return 0.5 + t.w * cos * (1 - t.chin * np.clip(sin, 0, None) ** 2), CY + t.h * sin


def _draw_hair_back(pen: _Pen, t: Traits) -> None:
    """The hair mass behind the head that frames the face."""
    w, h = t.w, t.h
    if t.hair_style == "long":  # falls past the jaw and widens onto the shoulders
        pen.polygon([0.5 - w * 1.15, 0.5 + w * 1.15, 0.5 + w * 1.5, 0.5 + w * 1.1, 0.5 - w * 1.1, 0.5 - w * 1.5],
                    [CY - 0.1, CY - 0.1, 1.0, 1.05, 1.05, 1.0], _shade(t.hair, 0.85))
    if t.hair_style == "bald":  # receding: a band round the sides, none on top
        pen.ellipse(0.5, CY - 0.15 * h, w * 1.13, h * 0.5, fill=t.hair, n=24)
    else:
        grow = 1.3 if t.hair_style == "curly" else 1.12
        pen.ellipse(0.5, CY - 0.02, w * grow, h * (grow - 0.02), fill=t.hair, n=32)


def _draw_hair_front(pen: _Pen, t: Traits) -> None:
    """Hair over the forehead; the hairline height is what tells styles apart."""
    w, h, style = t.w, t.h, t.hair_style
    if style == "bald":
        return
    a = np.linspace(np.pi * 0.95, np.pi * 2.05, 22)
    cap_x, cap_y = 0.5 + w * 1.1 * np.cos(a), CY - 0.02 + h * 1.08 * np.sin(a)
    line_y = CY - h * {"short": 0.68, "long": 0.62, "bangs": 0.42, "curly": 0.66}[style]
    u = np.linspace(1, -1, 15)
    arch = 0.0 if style == "bangs" else 0.12 * h  # a parted hairline rises in the middle
    ys = line_y - arch * (1 - u**2) + 0.25 * h * u**4
    if style == "bangs":  # a ragged fringe
        ys = ys + 0.02 * (np.arange(15) % 2)
    pen.polygon(np.concatenate([cap_x, 0.5 + w * 1.05 * u]), np.concatenate([cap_y, ys]), t.hair)
    if style == "curly":
        for a in np.linspace(np.pi * 0.85, np.pi * 2.15, 15):
            pen.ellipse(0.5 + w * 1.25 * np.cos(a), CY - 0.02 + h * 1.2 * np.sin(a), 0.05, 0.05,
                        fill=_shade(t.hair, 1.15), n=10)


def _draw_head(pen: _Pen, t: Traits) -> None:
    """Neck (shaded: it sits under the jaw), ears, then the face over both."""
    pen.polygon([0.45, 0.55, 0.55, 0.45], [CY, CY, 0.98, 0.98], _shade(t.skin, 0.82))
    for side in (-1, 1):
        pen.ellipse(0.5 + side * t.w * 0.98, CY - 0.18 * t.h, 0.03, 0.055, fill=_shade(t.skin, 0.9), n=12)
    pen.polygon(*_face_outline(t), fill=t.skin)


def _draw_eyes(pen: _Pen, t: Traits) -> None:
    """Whites, iris, pupil and upper lid; brows above; glasses on some."""
    y, r = CY - 0.32 * t.h, t.eye_size
    frame = _shade(t.hair, 0.5) if t.hair_style != "bald" else (30, 30, 30)
    for side in (-1, 1):
        x = 0.5 + side * t.eye_gap
        pen.ellipse(x, y, r * 1.35, r * 0.75, fill=(240, 238, 232), n=16)
        pen.ellipse(x, y, r * 0.65, r * 0.65, fill=t.iris, n=12)
        pen.ellipse(x, y, r * 0.3, r * 0.3, fill=(12, 10, 10), n=8)
        pen.line([x - r * 1.35, x, x + r * 1.35], [y, y - r * 0.8, y], _shade(t.skin, 0.45), 0.008)  # upper lid
        brow_y = y - r * 1.9
        pen.line([x - side * r * 1.2, x + side * r * 0.4, x + side * r * 1.5],
                 [brow_y, brow_y - 0.01, brow_y - t.brow_tilt], _shade(t.hair, 0.75), 0.02)
        if t.glasses:
            pen.ellipse(x, y, r * 2.1, r * 1.6, outline=frame, width=0.013, n=20)
    if t.glasses:
        pen.line([0.5 - t.eye_gap + r * 2.1, 0.5 + t.eye_gap - r * 2.1], [y, y], frame, 0.013)


def _draw_nose_mouth(pen: _Pen, t: Traits) -> None:
    skin, w, y = np.array(t.skin), t.mouth_w, CY + 0.4 * t.h
    dark, lip = _shade(skin, 0.7), _rgb(skin * (0.8, 0.55, 0.55) + (30, 0, 0))
    nose_y = CY + 0.1 * t.h
    pen.line([0.49, 0.475, 0.5, 0.525], [CY - 0.12 * t.h, nose_y, nose_y + 0.012, nose_y], dark, 0.012)
    if t.beard:
        bx, by = _face_outline(t)
        low = by > y - 0.05
        pen.polygon(bx[low], by[low], _shade(t.hair, 0.9))
    if t.mouth == "open":
        pen.ellipse(0.5, y, w * 0.75, w * 0.5, fill=(70, 20, 25), n=20)
        pen.ellipse(0.5, y - w * 0.25, w * 0.55, w * 0.18, fill=(240, 240, 232), n=14)  # teeth
    else:
        xs = np.linspace(-1, 1, 11)
        lift = 0.3 if t.mouth == "smile" else 0.06  # corners rise above the middle
        mid = y + lift * w * (0.5 - xs**2)
        bulge = w * (1 - xs**2)  # lips are fuller in the middle, the lower one more so
        pen.polygon(0.5 + w * np.r_[xs, xs[::-1]], np.r_[mid - 0.12 * bulge, (mid + 0.22 * bulge)[::-1]], lip)
        pen.line(0.5 + w * xs, mid, _shade(lip, 0.55), 0.008)


def _background(t: Traits, resolution: int) -> Image.Image:
    """A linear gradient between two colours, computed at the output size and blown up
    with NEAREST: the downscale averages each block back, and it is 10x cheaper."""
    u = np.linspace(-0.5, 0.5, resolution, dtype=np.float32)
    proj = np.clip(np.cos(t.bg_angle) * u[None, :] + np.sin(t.bg_angle) * u[:, None] + 0.5, 0, 1)
    c0, c1 = np.array(t.bg[0], np.float32), np.array(t.bg[1], np.float32)
    img = Image.fromarray((c0 + proj[..., None] * (c1 - c0)).astype(np.uint8))
    return img.resize((resolution * SUPERSAMPLE,) * 2, Image.NEAREST)


def _lighting(t: Traits, resolution: int) -> np.ndarray:
    """Gain per pixel: a key light from one side, darker towards the shadow-side cheek."""
    u = np.linspace(0, 1, resolution, dtype=np.float32)
    x = (u[None, :] - 0.5 - t.pose[0]) / t.w
    y = (u[:, None] - CY - t.pose[1]) / t.h
    inside = np.clip(1.2 - np.hypot(x, y), 0, 1)  # soft face-sized disc, no hard edge
    side = np.clip(-np.sign(t.light) * x, 0, None) ** 2
    gain = 1 + t.light * (u[None, :] - 0.5) - 0.3 * abs(t.light) * inside * side
    return gain[..., None]


def _render(t: Traits, resolution: int) -> np.ndarray:
    im = _background(t, resolution)
    pen = _Pen(ImageDraw.Draw(im), resolution * SUPERSAMPLE, t.pose)
    pen.ellipse(0.5, 1.1, 0.46, 0.22, fill=t.shirt, n=32)  # shoulders
    _draw_hair_back(pen, t)
    _draw_head(pen, t)
    _draw_hair_front(pen, t)
    _draw_eyes(pen, t)
    _draw_nose_mouth(pen, t)
    # reducing_gap: a box reduce to 2x first, then LANCZOS; half the cost, same look.
    out = np.asarray(im.resize((resolution,) * 2, Image.LANCZOS, reducing_gap=2.0), dtype=np.float32)
    return np.clip(out * _lighting(t, resolution), 0, 255).astype(np.uint8)


def check(resolution: int, seed: int, start: int = 0, count: int = 0) -> None:
    """Refuse settings the faces cannot be drawn with, naming the setting."""
    for name, value, low in [("resolution", resolution, 8), ("seed", seed, 0),
                             ("index", start, 0), ("count", count, 0)]:
        if value < low:
            raise DataError(f"synthetic faces: {name} {value} is below {low}; pass {name} >= {low}")


def draw_face(index: int, resolution: int, seed: int) -> Image.Image:
    """Face number ``index`` of the synthetic set ``seed``; depends only on (seed, index)."""
    check(resolution, seed, index)
    return Image.fromarray(_render(_sample_traits(np.random.default_rng([seed, index])), resolution))


def draw_faces(count: int, resolution: int, seed: int, start: int = 0) -> np.ndarray:
    """Faces ``start .. start+count-1`` as uint8 of shape (count, resolution, resolution, 3)."""
    check(resolution, seed, start, count)
    out = np.empty((count, resolution, resolution, 3), dtype=np.uint8)
    for i in range(count):
        out[i] = _render(_sample_traits(np.random.default_rng([seed, start + i])), resolution)
    return out
