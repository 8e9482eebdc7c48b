"""Scenes for the synthetic corpus: what a scene is and how it is drawn, numpy + Pillow only.

A `Scene` is one, two or three identical shapes (colour, shape, size) grouped at one position;
`render_scene` draws it on a plain or lightly textured grey background as np.uint8 [S, S, 3],
anti-aliased by drawing the mask at 2x and box-filtering it down. All jitter comes from the
`rng` passed in, so a scene drawn with the same generator state is the same image.
Captions, splits and datasets built on these live in `clippo.data.synthetic`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "diamond",
    "cross",
    "heart",
    "crescent",
)
# RGB, chosen to stay distinct from each other and from the grey backgrounds (115..185).
COLOURS: Mapping[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 30),
    "green": (40, 165, 55),
    "blue": (35, 75, 215),
    "purple": (135, 50, 175),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
}
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "centre")
COUNTS: tuple[int, ...] = (1, 2, 3)

# Object radius as a fraction of the image side; a group of three large shapes still fits.
_RADIUS = {"small": 0.06, "large": 0.11}
# Group centre (x, y) as fractions, and the axis along which a group of several shapes lies.
_ANCHOR = {
    "left": (0.25, 0.5, "vertical"),
    "right": (0.75, 0.5, "vertical"),
    "top": (0.5, 0.24, "horizontal"),
    "bottom": (0.5, 0.76, "horizontal"),
    "centre": (0.5, 0.5, "horizontal"),
}
_SUPERSAMPLE = 2  # masks are drawn at 2x and box-filtered down: cheap anti-aliasing


@dataclass(frozen=True)
class Scene:
    """`count` identical shapes (`colour`, `shape`, `size`) grouped at `position`."""

    colour: str
    shape: str
    size: str
    position: str
    count: int


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _outline(shape: str) -> np.ndarray:
    """Polygon of a shape of radius ~1 around the origin, float [P, 2] (x, y; y down)."""
    if shape == "square":
        return np.array([[-0.82, -0.82], [0.82, -0.82], [0.82, 0.82], [-0.82, 0.82]])
    if shape == "triangle":
        a = np.deg2rad([-90.0, 30.0, 150.0])
        return 1.05 * np.stack([np.cos(a), np.sin(a) + 0.15], axis=1)
    if shape == "star":
        a = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        rad = np.where(np.arange(10) % 2 == 0, 1.05, 0.45)
        return np.stack([rad * np.cos(a), rad * np.sin(a) + 0.08], axis=1)
    if shape == "diamond":
        return np.array([[0.0, -1.05], [0.72, 0.0], [0.0, 1.05], [-0.72, 0.0]])
    if shape == "cross":
        w, e = 0.32, 0.95
        return np.array(
            [
                [-w, -e],
                [w, -e],
                [w, -w],
                [e, -w],
                [e, w],
                [w, w],
                [w, e],
                [-w, e],
                [-w, w],
                [-e, w],
                [-e, -w],
                [-w, -w],
            ]
        )
    if shape == "heart":
        t = np.linspace(0.0, 2 * np.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = np.stack([x, y], axis=1)
        pts -= (pts.max(0) + pts.min(0)) / 2
        return pts / np.abs(pts).max() * 1.0
    if shape == "crescent":
        # Unit disc minus a disc of radius r2 centred at (d, 0): outer arc, then inner arc back.
        d, r2 = 0.5, 0.85
        xi = (d * d + 1 - r2 * r2) / (2 * d)
        yi = math.sqrt(1 - xi * xi)
        t1 = math.atan2(yi, xi)
        outer = np.linspace(t1, 2 * np.pi - t1, 24)
        phi = math.atan2(yi, xi - d)
        inner = np.linspace(2 * np.pi - phi, phi, 24)
        pts = np.concatenate(
            [
                np.stack([np.cos(outer), np.sin(outer)], axis=1),
                np.stack([d + r2 * np.cos(inner), r2 * np.sin(inner)], axis=1),
            ]
        )
        return pts * 1.05 + np.array([0.12, 0.0])
    raise ValueError(f"unknown shape {shape!r}")


def _background(size: int, rng: np.random.Generator, textured: bool) -> np.ndarray:
    """np.uint8 [size, size, 3]: neutral grey with a slight tint, maybe noise or a gradient."""
    base = (rng.uniform(115.0, 185.0) + rng.uniform(-8.0, 8.0, size=3)).astype(np.float32)
    kind = rng.integers(3) if textured else 0
    if kind == 0:  # plain
        return np.broadcast_to(np.rint(base).astype(np.uint8), (size, size, 3)).copy()
    if kind == 1:  # fine grey noise
        shade = rng.normal(0.0, 5.0, size=(size, size, 1)).astype(np.float32)
    else:  # soft linear gradient in a random direction
        a = rng.uniform(0, 2 * np.pi)
        ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)
        g = math.cos(a) * ramp[None, :] + math.sin(a) * ramp[:, None]
        shade = (np.float32(rng.uniform(8.0, 18.0)) * g)[:, :, None]
    return np.clip(shade + base, 0, 255).astype(np.uint8)


def render_scene(
    scene: Scene, image_size: int, rng: np.random.Generator, textured: bool = True
) -> np.ndarray:
    """Draw a scene: np.uint8 [image_size, image_size, 3]. Jitter comes from `rng`."""
    s = image_size
    img = _background(s, rng, textured)
    ss = s * _SUPERSAMPLE
    mask = Image.new("L", (ss, ss), 0)
    draw = ImageDraw.Draw(mask)
    ax, ay, axis = _ANCHOR[scene.position]
    radius = _RADIUS[scene.size] * rng.uniform(0.92, 1.08)
    gx, gy = ax + rng.uniform(-0.03, 0.03), ay + rng.uniform(-0.03, 0.03)
    step = 2.7 * _RADIUS[scene.size]  # shapes reach <= 1.05 radii: groups never touch
    outline = _outline(scene.shape) if scene.shape != "circle" else None
    for k in range(scene.count):
        off = (k - (scene.count - 1) / 2) * step
        cx = gx + (off if axis == "horizontal" else 0.0) + rng.uniform(-0.004, 0.004)
        cy = gy + (off if axis == "vertical" else 0.0) + rng.uniform(-0.004, 0.004)
        r = radius * rng.uniform(0.97, 1.03) * ss
        cx, cy = cx * ss, cy * ss
        if outline is None:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        else:
            pts = _rotate(outline, rng.uniform(-0.2, 0.2)) * r + np.array([cx, cy])
            draw.polygon([tuple(p) for p in pts.tolist()], fill=255)
    colour = np.clip(np.array(COLOURS[scene.colour]) + rng.uniform(-12, 12, size=3), 0, 255)
    small = mask.resize((s, s), Image.Resampling.BOX)
    box = small.getbbox()
    if box is None:  # nothing visible (cannot happen with the layouts above, but stay safe)
        return img
    x0, y0, x1, y1 = box
    # Composite only inside the shapes' bounding box: most of the image is background.
    alpha = np.asarray(small.crop(box), dtype=np.float32)[:, :, None] / 255.0
    region = img[y0:y1, x0:x1].astype(np.float32)
    region += alpha * (colour.astype(np.float32) - region)
    img[y0:y1, x0:x1] = np.clip(np.rint(region), 0, 255).astype(np.uint8)
    return img
