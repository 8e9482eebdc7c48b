"""Built-in synthetic corpus for `clippo demo`: simple scenes drawn on the fly, no download.

A scene is one, two or three identical shapes (colour, shape, size) grouped at one position of a
plainly or lightly textured background. Each scene has alt-text captions in varied templates
("a photo of a small red circle on the left", "two large blue stars, near the top", ...), and
text/text pairs are two different templates describing the same scene.

Some (colour, shape) pairs never occur in training (`heldout_pairs`); the evaluation sets
(`retrieval_set`, `zeroshot_sets`) are drawn only from those unseen combinations.

Everything is deterministic: `dataset[i]` is a pure function of (config, split, i), so the
datasets work with DataLoader workers and with resuming at any index. numpy + Pillow only.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

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
PLURALS: Mapping[str, str] = {s: s + ("es" if s.endswith("s") else "s") for s in SHAPES}
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

# Phrases that fill the caption templates' slots.
_WHERE = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
_WHERE2 = {
    "left": "on the left side",
    "right": "on the right side",
    "top": "near the top",
    "bottom": "near the bottom",
    "centre": "in the middle",
}
_ARTICLE = {1: "a", 2: "two", 3: "three"}
_NUMBER = {1: "one", 2: "two", 3: "three"}

# Alt-text templates. Slots: {n} a/two/three, {num} one/two/three, {be} is/are, {size},
# {colour}, {shape} (singular or plural to agree with the count), {where}, {where2}.
# Every template names every attribute, so distinct scenes always get distinct captions.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of {n} {size} {colour} {shape} {where}",
    "{n} {size} {colour} {shape} {where}",
    "there {be} {n} {size} {colour} {shape} {where}",
    "{where2}: {n} {size} {colour} {shape}",
    "an image of {n} {size} {colour} {shape} {where}",
    "{num} {colour} {shape}, {size}, {where}",
    "a drawing of {n} {size} {shape} in {colour} {where}",
    "{where2} there {be} {n} {size} {colour} {shape}",
    "a picture showing {num} {size} {colour} {shape} {where2}",
    "{colour} {shape} ({num}, {size}) {where}",
)

_STREAM = {"train": 0, "heldout": 1, "text": 2, "retrieval": 3, "zeroshot": 4, "split": 5}
Split = Literal["train", "heldout"]


@dataclass(frozen=True)
class SyntheticConfig:
    """What the corpus contains. `heldout_pairs` (colour, shape) pairs are kept out of training."""

    image_size: int = 112
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)
    sizes: tuple[str, ...] = SIZES
    positions: tuple[str, ...] = POSITIONS
    counts: tuple[int, ...] = COUNTS
    heldout_pairs: int = 16
    textured: bool = True  # False: plain backgrounds only
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("shapes", "colours", "sizes", "positions", "counts"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not 32 <= self.image_size <= 1024:
            raise ValueError(f"image_size must be in [32, 1024], got {self.image_size}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        known = {
            "shapes": SHAPES,
            "colours": tuple(COLOURS),
            "sizes": SIZES,
            "positions": POSITIONS,
            "counts": COUNTS,
        }
        for name, allowed in known.items():
            values = getattr(self, name)
            if not values:
                raise ValueError(f"{name} must not be empty")
            if len(set(values)) != len(values):
                raise ValueError(f"{name} has duplicates: {values}")
            unknown = [v for v in values if v not in allowed]
            if unknown:
                raise ValueError(f"unknown {name} {unknown}; known: {allowed}")
        n_pairs = len(self.colours) * len(self.shapes)
        if not 0 <= self.heldout_pairs <= n_pairs - max(len(self.colours), len(self.shapes)):
            raise ValueError(
                f"heldout_pairs={self.heldout_pairs} must be in [0, {n_pairs} - "
                f"max(#colours, #shapes)] so every colour and shape is still trained on"
            )
        _split_pairs(self)  # raises if some colour or shape would never be trained on

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SyntheticConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown SyntheticConfig keys {unknown}; known: {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    size: str
    position: str
    count: int


def _rng(config: SyntheticConfig, stream: str, i: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([config.seed, _STREAM[stream], i]))


def _split_pairs(
    config: SyntheticConfig,
) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """(train pairs, held-out pairs) of (colour, shape), sorted.

    Held-out pair r is (colour cp[r % C], shape sp[(r % C + r // C) % S]) for seeded permutations
    cp, sp: a shifted diagonal, so held-out colours and shapes are spread evenly.
    """
    rng = _rng(config, "split", 0)
    n_c, n_s = len(config.colours), len(config.shapes)
    cp, sp = rng.permutation(n_c), rng.permutation(n_s)
    held: set[tuple[str, str]] = set()
    r = 0
    while len(held) < config.heldout_pairs:
        c, s = r % n_c, (r % n_c + r // n_c) % n_s
        held.add((config.colours[cp[c]], config.shapes[sp[s]]))
        r += 1
    train = [p for p in itertools.product(config.colours, config.shapes) if p not in held]
    missing = [c for c in config.colours if all(p[0] != c for p in train)]
    missing += [s for s in config.shapes if all(p[1] != s for p in train)]
    if missing:
        raise ValueError(
            f"heldout_pairs={config.heldout_pairs} leaves {missing} with no training pair"
        )
    return tuple(sorted(train)), tuple(sorted(held))


def train_pairs(config: SyntheticConfig) -> tuple[tuple[str, str], ...]:
    """(colour, shape) pairs that occur in training."""
    return _split_pairs(config)[0]


def heldout_pairs(config: SyntheticConfig) -> tuple[tuple[str, str], ...]:
    """(colour, shape) pairs that never occur in training; evaluation uses only these."""
    return _split_pairs(config)[1]


def _pairs(config: SyntheticConfig, split: Split) -> tuple[tuple[str, str], ...]:
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    train, held = _split_pairs(config)
    pairs = train if split == "train" else held
    if not pairs:
        raise ValueError(f"split {split!r} is empty (heldout_pairs={config.heldout_pairs})")
    return pairs


def iter_scenes(config: SyntheticConfig, split: Split) -> Iterator[Scene]:
    """Every distinct scene of a split, in a fixed order."""
    for (colour, shape), size, position, count in itertools.product(
        _pairs(config, split), config.sizes, config.positions, config.counts
    ):
        yield Scene(colour, shape, size, position, count)


def sample_scene(
    config: SyntheticConfig, pairs: Sequence[tuple[str, str]], rng: np.random.Generator
) -> Scene:
    """A random scene whose (colour, shape) is one of `pairs` (see `train_pairs`)."""
    colour, shape = pairs[rng.integers(len(pairs))]
    return Scene(
        colour=colour,
        shape=shape,
        size=config.sizes[rng.integers(len(config.sizes))],
        position=config.positions[rng.integers(len(config.positions))],
        count=config.counts[rng.integers(len(config.counts))],
    )


def caption(scene: Scene, template: str) -> str:
    """Fill one of `CAPTION_TEMPLATES` for a scene ("a" becomes "an" before a vowel)."""
    text = template.format(
        n=_ARTICLE[scene.count],
        num=_NUMBER[scene.count],
        be="is" if scene.count == 1 else "are",
        size=scene.size,
        colour=scene.colour,
        shape=scene.shape if scene.count == 1 else PLURALS[scene.shape],
        where=_WHERE[scene.position],
        where2=_WHERE2[scene.position],
    )
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


# ---- drawing ---------------------------------------------------------------------------------


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
            ]  # fmt: skip
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


# ---- datasets --------------------------------------------------------------------------------


def _check_index(i: int, length: int) -> int:
    i = int(i)
    if i < 0:
        i += length
    if not 0 <= i < length:
        raise IndexError(f"index {i} out of range for a dataset of length {length}")
    return i


class SyntheticImageText:
    """Map-style dataset: `ds[i] -> (image np.uint8 [S, S, 3], caption str)`.

    `split="train"` uses only training (colour, shape) pairs, `"heldout"` only the unseen ones.
    `length` is nominal (scenes are sampled, not enumerated); item i is a pure function of
    (config, split, i).
    """

    def __init__(self, config: SyntheticConfig, split: Split = "train", length: int = 1_000_000):
        self._pairs = _pairs(config, split)  # validates the split name; non-empty
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.config, self.split, self.length = config, split, length

    def __len__(self) -> int:
        return self.length

    def _item_rng(self, i: int) -> np.random.Generator:
        return _rng(self.config, self.split, _check_index(i, self.length))

    def scene(self, i: int) -> Scene:
        return sample_scene(self.config, self._pairs, self._item_rng(i))

    def __getitem__(self, i: int) -> tuple[np.ndarray, str]:
        rng = self._item_rng(i)
        scene = sample_scene(self.config, self._pairs, rng)
        text = caption(scene, CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))])
        return render_scene(scene, self.config.image_size, rng, self.config.textured), text


class SyntheticTextPairs:
    """Map-style dataset of paraphrases: `ds[i] -> (caption_a, caption_b)`, two different
    templates describing the same training scene."""

    def __init__(self, config: SyntheticConfig, length: int = 1_000_000):
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.config, self.length = config, length
        self._pairs = _pairs(config, "train")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[str, str]:
        rng = _rng(self.config, "text", _check_index(i, self.length))
        scene = sample_scene(self.config, self._pairs, rng)
        a, b = rng.choice(len(CAPTION_TEMPLATES), size=2, replace=False)
        return caption(scene, CAPTION_TEMPLATES[a]), caption(scene, CAPTION_TEMPLATES[b])


# ---- evaluation sets (held-out combinations only) --------------------------------------------


@dataclass(frozen=True)
class RetrievalSet:
    """N held-out scenes with one caption each; `image_ids_for_text[j]` is text j's image."""

    images: np.ndarray  # uint8 [N, S, S, 3]
    texts: tuple[str, ...]
    image_ids_for_text: np.ndarray  # int64 [N]
    scenes: tuple[Scene, ...]


@dataclass(frozen=True)
class ZeroShotSet:
    images: np.ndarray  # uint8 [N, S, S, 3]
    labels: np.ndarray  # int64 [N], index into class_names
    class_names: tuple[str, ...]
    templates: tuple[str, ...]  # each holds one "{}" for the class name


def retrieval_set(
    config: SyntheticConfig, n: int = 100, template: int | None = None
) -> RetrievalSet:
    """`n` distinct held-out scenes (so `n` distinct captions), each drawn once.

    `template`: index into `CAPTION_TEMPLATES` for every caption, or None for a seeded random
    template per caption.
    """
    scenes = list(iter_scenes(config, "heldout"))
    if n > len(scenes):
        raise ValueError(
            f"retrieval_set(n={n}) but the held-out split has only {len(scenes)} distinct scenes; "
            "raise heldout_pairs or allow more sizes/positions/counts"
        )
    rng = _rng(config, "retrieval", 0)
    chosen = [scenes[j] for j in rng.permutation(len(scenes))[:n]]
    images, texts = [], []
    for k, scene in enumerate(chosen):
        item_rng = _rng(config, "retrieval", k + 1)
        t = template if template is not None else int(item_rng.integers(len(CAPTION_TEMPLATES)))
        texts.append(caption(scene, CAPTION_TEMPLATES[t]))
        images.append(render_scene(scene, config.image_size, item_rng, config.textured))
    assert len(set(texts)) == n, "distinct scenes must give distinct captions"
    return RetrievalSet(np.stack(images), tuple(texts), np.arange(n, dtype=np.int64), tuple(chosen))


def zeroshot_templates(
    config: SyntheticConfig, task: Literal["colour", "shape"]
) -> tuple[str, ...]:
    """Prompt ensemble for a task: the class slot "{}" with each value of the other attribute."""
    if task == "colour":
        return tuple(f"a photo of a {{}} {shape}" for shape in config.shapes)
    if task == "shape":
        return tuple(f"a photo of a {colour} {{}}" for colour in config.colours)
    raise ValueError(f"task must be 'colour' or 'shape', got {task!r}")


def zeroshot_sets(config: SyntheticConfig, n: int = 200) -> dict[str, ZeroShotSet]:
    """Zero-shot colour and shape classification on `n` held-out images (shared by both tasks)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    pairs = _pairs(config, "heldout")
    scenes, images = [], []
    for i in range(n):
        rng = _rng(config, "zeroshot", i)
        scene = sample_scene(config, pairs, rng)
        scenes.append(scene)
        images.append(render_scene(scene, config.image_size, rng, config.textured))
    stacked = np.stack(images)
    out = {}
    for task, names in (("colour", config.colours), ("shape", config.shapes)):
        labels = np.array([names.index(getattr(s, task)) for s in scenes], dtype=np.int64)
        out[task] = ZeroShotSet(stacked, labels, names, zeroshot_templates(config, task))
    return out


# ---- canvas check ----------------------------------------------------------------------------


class CaptionFitCheck:
    """`check(text) -> bool`: is the whole of `text` visible in `render(text)`?

    A renderer that keeps only image_size/16 lines silently drops the rest, and it wraps per
    character with a rule that depends on the widest glyph, so this measures with the renderer
    itself instead of re-deriving the rule: it renders `text` and `text` with its last character
    swapped for a "twin" (a different glyph of the same rendered width, so every glyph keeps its
    place); the two images differ exactly when the last glyph is on the canvas, and the last
    glyph is the last to be dropped.

    `render` is any `str -> image` callable (e.g. a `clippo.render.UnifontRenderer`). Glyph
    widths are measured once per character and kept on this instance.
    """

    def __init__(
        self,
        render: Callable[[str], np.ndarray],
        alphabet: str = "abcdefghijklmnopqrstuvwxyz0123456789.,:;!?()[]-'/|+*&%$#@",
        probe: str = "x",
    ):
        self._render = render
        self._alphabet = alphabet
        self._probe = probe
        self._widths: dict[str, int] = {}
        self._probe_x = self._ink_start(probe)

    def _ink_start(self, prefix: str) -> int:
        """x of the first column where `prefix + probe` differs from `prefix + " "`."""
        a = np.asarray(self._render(prefix + self._probe))
        b = np.asarray(self._render(prefix + " "))
        cols = np.nonzero(np.any(a != b, axis=(0, 2)))[0]
        if cols.size == 0:
            raise ValueError(f"probe glyph {self._probe!r} leaves no ink after {prefix!r}")
        return int(cols[0])

    def width(self, char: str) -> int:
        """Rendered advance of one character in pixels (measured: the probe's shift)."""
        if char not in self._widths:
            self._widths[char] = self._ink_start(char) - self._ink_start("")
        return self._widths[char]

    def twin(self, char: str) -> str:
        """A character of the same width as `char` that renders differently."""
        w, own = self.width(char), np.asarray(self._render(char))
        for other in self._alphabet:
            same_width = other != char and self.width(other) == w
            if same_width and not np.array_equal(np.asarray(self._render(other)), own):
                return other
        raise ValueError(f"no character in the alphabet has the rendered width of {char!r}")

    def __call__(self, text: str) -> bool:
        if not text:
            return True
        swapped = text[:-1] + self.twin(text[-1])
        return not np.array_equal(np.asarray(self._render(text)), np.asarray(self._render(swapped)))


def caption_fits(render: Callable[[str], np.ndarray], text: str) -> bool:
    """One-off `CaptionFitCheck(render)(text)`; keep a `CaptionFitCheck` to check many texts."""
    return CaptionFitCheck(render)(text)
