"""Built-in synthetic corpus for `clippo demo` and `clippo compare`: scenes drawn on the fly.

A scene is one, two or three identical shapes (colour, shape, size) grouped at one position of a
plainly or lightly textured background (drawn by `clippo.data.scenes`). Each scene has alt-text
captions in varied templates ("a photo of a small red circle on the left", "two large blue stars,
near the top", ...), and text/text pairs are two different templates describing the same scene.

Some (colour, shape) pairs never occur in training (`heldout_pairs`); the evaluation sets
(`retrieval_set`, `zeroshot_sets`) are drawn only from those unseen combinations.

Everything is deterministic: `dataset[i]` is a pure function of (config, split, i), so the
datasets work with DataLoader workers and with resuming at any index. numpy + Pillow only.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from clippo import typed_config
from clippo.data.scenes import COLOURS, COUNTS, POSITIONS, SHAPES, SIZES, Scene, render_scene

PLURALS: Mapping[str, str] = {s: s + ("es" if s.endswith("s") else "s") for s in SHAPES}

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

_STREAM = {
    "train": 0,
    "heldout": 1,
    "text": 2,
    "retrieval": 3,
    "zeroshot": 4,
    "split": 5,
    "vqa/train": 6,
    "vqa/heldout": 7,
    "paraphrase/train": 8,
    "paraphrase/heldout": 9,
}
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
    # indices into CAPTION_TEMPLATES that captions are drawn from; () = all of them (a small
    # canvas leaves out the templates whose captions it cannot show whole)
    templates: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("shapes", "colours", "sizes", "positions", "counts", "templates"):
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
        bad = [t for t in self.templates if not 0 <= t < len(CAPTION_TEMPLATES)]
        if bad or len(set(self.templates)) != len(self.templates):
            raise ValueError(
                f"templates {list(self.templates)}: need distinct indices in "
                f"[0, {len(CAPTION_TEMPLATES)})"
            )
        if len(self.templates) == 1:
            raise ValueError("templates: paraphrases need at least two (or () for all)")
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
        return typed_config.from_dict(cls, d)


# The world of `clippo compare`: scenes of one to three identical shapes and 20 held-out
# (colour, shape) pairs, so 20 pairs x 2 sizes x 5 positions x 3 counts = 600 distinct held-out
# scenes with distinct captions (the demo's world, one shape and 10 held-out pairs, has 100), and
# 44 pairs left to train on, every colour and shape among them. Every caption fits at 96 px.
# Options of the `synthetic` sources (`SyntheticConfig` fields; the rest keep their defaults).
COMPARE_WORLD: Mapping[str, Any] = {"counts": (1, 2, 3), "heldout_pairs": 20}


def distinct_scenes(config: SyntheticConfig, split: Split) -> int:
    """How many distinct scenes (so distinct captions per template) a split has: its
    (colour, shape) pairs x sizes x positions x counts (`len(list(iter_scenes(...)))`)."""
    return (
        len(_pairs(config, split)) * len(config.sizes) * len(config.positions) * len(config.counts)
    )


def caption_templates(config: SyntheticConfig) -> tuple[str, ...]:
    """The caption templates in use: `config.templates` of `CAPTION_TEMPLATES`, or all."""
    return tuple(CAPTION_TEMPLATES[t] for t in config.templates) or CAPTION_TEMPLATES


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
    colour, shape = pairs[int(rng.integers(len(pairs)))]
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
        templates = caption_templates(self.config)
        text = caption(scene, templates[rng.integers(len(templates))])
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
        templates = caption_templates(self.config)
        a, b = rng.choice(len(templates), size=2, replace=False)
        return caption(scene, templates[a]), caption(scene, templates[b])


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
    template (of `caption_templates(config)`) per caption.
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
    in_use = caption_templates(config)
    for k, scene in enumerate(chosen):
        item_rng = _rng(config, "retrieval", k + 1)
        if template is not None:
            text = caption(scene, CAPTION_TEMPLATES[template])
        else:
            text = caption(scene, in_use[int(item_rng.integers(len(in_use)))])
        texts.append(text)
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
    out: dict[str, ZeroShotSet] = {}
    tasks: tuple[tuple[Literal["colour", "shape"], tuple[str, ...]], ...] = (
        ("colour", config.colours),
        ("shape", config.shapes),
    )
    for task, names in tasks:
        labels = np.array([names.index(getattr(s, task)) for s in scenes], dtype=np.int64)
        out[task] = ZeroShotSet(stacked, labels, names, zeroshot_templates(config, task))
    return out


# ---- downstream tasks: VQA questions and caption paraphrases --------------------------------

# One question per attribute; the answer is the attribute's value (one object per scene, so no
# counting). Short enough for one 16-px line from 80 px up, so the scene keeps most of the canvas.
VQA_QUESTIONS: Mapping[str, str] = {
    "colour": "colour?",
    "shape": "shape?",
    "size": "size?",
    "position": "where?",
}


@dataclass(frozen=True)
class VQASet:
    """Questions about scenes: row j asks `questions[j]` about `images[image_ids[j]]`.

    `kinds[j]` is the attribute asked about (a key of `VQA_QUESTIONS`), `answers[j]` its value.
    """

    images: np.ndarray  # uint8 [M, S, S, 3], one per scene
    image_ids: np.ndarray  # int64 [N]
    questions: tuple[str, ...]
    kinds: tuple[str, ...]
    answers: tuple[str, ...]
    scenes: tuple[Scene, ...]  # [M]


def vqa_set(config: SyntheticConfig, split: Split, n_scenes: int) -> VQASet:
    """`n_scenes` random scenes of a split (`"heldout"`: unseen colour/shape pairs only), each
    asked every question of `VQA_QUESTIONS`: N = 4 * n_scenes rows, scene-major."""
    if n_scenes < 1:
        raise ValueError(f"n_scenes must be >= 1, got {n_scenes}")
    pairs = _pairs(config, split)
    scenes, images = [], []
    for i in range(n_scenes):
        rng = _rng(config, f"vqa/{split}", i)
        scene = sample_scene(config, pairs, rng)
        scenes.append(scene)
        images.append(render_scene(scene, config.image_size, rng, config.textured))
    rows = [(i, kind) for i in range(n_scenes) for kind in VQA_QUESTIONS]
    return VQASet(
        images=np.stack(images),
        image_ids=np.array([i for i, _ in rows], dtype=np.int64),
        questions=tuple(VQA_QUESTIONS[kind] for _, kind in rows),
        kinds=tuple(kind for _, kind in rows),
        answers=tuple(str(getattr(scenes[i], kind)) for i, kind in rows),
        scenes=tuple(scenes),
    )


@dataclass(frozen=True)
class PairSet:
    """Caption pairs: label 1 when `a[j]` and `b[j]` describe the same scene (a paraphrase in
    another template), 0 when `b[j]`'s scene differs from `a[j]`'s in one attribute (`changed[j]`;
    "" for paraphrases)."""

    a: tuple[str, ...]
    b: tuple[str, ...]
    labels: np.ndarray  # int64 [N], 1 = paraphrase
    changed: tuple[str, ...]


_PAIR_ATTRIBUTES = ("colour", "shape", "size", "position")


def _with(scene: Scene, attribute: str, value: str) -> Scene:
    """The scene with one (string-valued) attribute changed."""
    fields = dataclasses.asdict(scene)
    fields[attribute] = value
    return Scene(**fields)


def _in(scene: Scene, pairs: Sequence[tuple[str, str]]) -> bool:
    return (scene.colour, scene.shape) in pairs


def paraphrase_pairs(config: SyntheticConfig, split: Split, n: int) -> PairSet:
    """`n` caption pairs, alternately paraphrase (label 1) and not (label 0), so the labels are
    balanced. Caption a describes a random scene of the split; the two captions use two different
    templates (of `caption_templates(config)`), so the wording differs in every pair and only
    the content tells them apart. A non-paraphrase changes one attribute (uniformly chosen) to
    another of the world's values (`size` and `position` need two values in the world); in
    "train" the changed scene stays within the training (colour, shape) pairs, so no unseen
    combination is ever read while a head trains."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    pairs = _pairs(config, split)
    values = {
        "colour": config.colours,
        "shape": config.shapes,
        "size": config.sizes,
        "position": config.positions,
    }
    changeable = [k for k in _PAIR_ATTRIBUTES if len(values[k]) > 1]
    templates = caption_templates(config)
    a, b, labels, changed = [], [], [], []
    for i in range(n):
        rng = _rng(config, f"paraphrase/{split}", i)
        scene = sample_scene(config, pairs, rng)
        ta, tb = rng.choice(len(templates), size=2, replace=False)
        other, what = scene, ""
        if i % 2 == 1:
            what = changeable[int(rng.integers(len(changeable)))]
            options = [_with(scene, what, v) for v in values[what]]
            options = [s for s in options if s != scene and (split == "heldout" or _in(s, pairs))]
            other = options[int(rng.integers(len(options)))]
        a.append(caption(scene, templates[ta]))
        b.append(caption(other, templates[tb]))
        labels.append(0 if what else 1)
        changed.append(what)
    return PairSet(tuple(a), tuple(b), np.array(labels, dtype=np.int64), tuple(changed))


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
