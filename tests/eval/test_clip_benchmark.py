"""CLIP_benchmark's own zero-shot classification and retrieval functions, run on a tiny clippo
model through `clippo.eval.clip_benchmark`, give the numbers `clippo eval`'s suites give on the
same in-memory data (no downloads; scores without ties, where the two may order differently)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate

import clippo.eval.clip_benchmark as cb
from clippo.eval.datasets import CaptionedImages, LabelledImages
from clippo.eval.spec import EvalSpec
from clippo.eval.suites import retrieval_suite, zeroshot_suite
from clippo.preprocess import images_to_pixels

# Only the metric modules are imported: CLIP_benchmark's dataset modules import `requests`,
# which its release does not declare (clippo's test extra installs it; nothing here needs it).
zeroshot_classification = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
zeroshot_retrieval = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")

CLASSES = ["ant", "bee", "cow", "dog", "eel", "fox", "gnu"]
TEMPLATES = ["{}", "a {}"]
CAPTIONS = [["red 1", "sun"], ["blue 2"], ["cat 3", "big"], ["dog 4"], ["owl 5", "far"]]
CAPTIONS += [[f"{w} {i}"] for i, w in enumerate(["ink", "jam", "kit", "log", "map", "net"], 6)]


@pytest.fixture
def cb_accuracy(monkeypatch):
    # its release's top-k helper calls float() on a 1-element array, which numpy 2.4 refuses
    # ("only 0-dimensional arrays ..."); `topk_accuracy` is that helper ending in .item()
    monkeypatch.setattr(zeroshot_classification, "accuracy", cb.topk_accuracy)


class _Images(Dataset):
    """CLIP_benchmark's dataset shape: (transform(PIL image), target) with `.classes`; for
    retrieval the target is the image's list of captions."""

    def __init__(self, images: np.ndarray, targets: list, transform, classes=None) -> None:
        self.images, self.targets, self.transform = images, targets, transform
        self.classes = classes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), self.targets[i]


def _captions_collate(batch):
    """What CLIP_benchmark's `image_captions_collate_fn` does: stack images, keep caption lists."""
    images, texts = zip(*batch)
    return default_collate(list(images)), list(texts)


def _wrapped(model):
    return model.eval()  # CLIPPO has open_clip's encode_image / encode_text itself


def _no_ties(scores: torch.Tensor) -> None:
    """The two sides may only disagree on tied scores: make sure there are none."""
    s = scores.detach().float()
    for row in s:
        assert len(torch.unique(row)) == len(row)
    for col in s.T:
        assert len(torch.unique(col)) == len(col)


def test_zeroshot_classification_matches(model, cb_accuracy):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (42, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, len(CLASSES), 42)
    wrapped = _wrapped(model)
    tokenizer, transform = cb.get_tokenizer(wrapped), cb.get_transform(wrapped)
    loader = DataLoader(
        _Images(images, labels.tolist(), transform, CLASSES), batch_size=8, shuffle=False
    )
    theirs = zeroshot_classification.evaluate(
        wrapped,
        loader,
        tokenizer,
        CLASSES,
        [t.replace("{}", "{c}") for t in TEMPLATES],  # CLIP_benchmark's placeholder
        "cpu",
        amp=False,
    )
    data = LabelledImages(images, tuple(map(str, range(42))), labels, tuple(CLASSES), "memory")
    spec = EvalSpec("zeroshot", "memory", templates=tuple(TEMPLATES), canonicalize=False)
    ours = zeroshot_suite(model, spec, data=data)
    # no ties between classes for any image
    classifier = zeroshot_classification.zero_shot_classifier(
        wrapped, tokenizer, CLASSES, [t.replace("{}", "{c}") for t in TEMPLATES], "cpu", False
    )
    with torch.no_grad():
        _no_ties(wrapped.encode_image(images_to_pixels(images)) @ classifier)
    assert 0 < ours["accuracy"] < 1  # a number that could differ
    assert theirs["acc1"] == pytest.approx(ours["accuracy"], abs=1e-12)
    assert theirs["acc5"] == pytest.approx(ours["top5_accuracy"], abs=1e-12)
    assert theirs["mean_per_class_recall"] == pytest.approx(
        ours["mean_per_class_accuracy"], abs=1e-12
    )


def test_retrieval_matches(model):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (len(CAPTIONS), 32, 32, 3), dtype=np.uint8)
    wrapped = _wrapped(model)
    tokenizer, transform = cb.get_tokenizer(wrapped), cb.get_transform(wrapped)
    loader = DataLoader(
        _Images(images, CAPTIONS, transform),
        batch_size=4,
        shuffle=False,
        collate_fn=_captions_collate,
    )
    theirs = zeroshot_retrieval.evaluate(
        wrapped, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10]
    )
    texts = tuple(c for caps in CAPTIONS for c in caps)
    ids = np.array([i for i, caps in enumerate(CAPTIONS) for _ in caps])
    data = CaptionedImages(images, tuple(map(str, range(len(images)))), texts, ids, "memory")
    ours = retrieval_suite(model, EvalSpec("retrieval", "memory"), data=data)
    with torch.no_grad():
        rendered = tokenizer(list(texts))
        assert len(torch.unique(rendered.reshape(len(texts), -1), dim=0)) == len(texts)
        _no_ties(wrapped.encode_image(images_to_pixels(images)) @ wrapped.encode_text(rendered).T)
    # numbers that could differ (a random tiny model: near chance, not 0 or 1)
    assert all(0 < ours[f"{d}/r@5"] < 1 for d in ("img2txt", "txt2img"))
    for k in (1, 5, 10):
        assert theirs[f"text_retrieval_recall@{k}"] == pytest.approx(ours[f"img2txt/r@{k}"])
        assert theirs[f"image_retrieval_recall@{k}"] == pytest.approx(ours[f"txt2img/r@{k}"])


def test_load_register_and_the_pieces(model, tmp_path):
    import clip_benchmark.models as registry

    model.save(tmp_path / "ckpt")
    cb.register()
    assert "clippo" in registry.MODEL_TYPES
    loaded, transform, tokenizer = registry.load_clip(
        "clippo", "clippo", str(tmp_path / "ckpt"), cache_dir=None, device="cpu"
    )
    assert not loaded.training
    photo = Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 24, 4), np.uint8))
    pixels = transform(photo)  # RGBA: alpha dropped, squashed to 32 x 32
    assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.float32
    texts = tokenizer(["a cat", "a dog"])
    assert texts.shape == (2, 3, 32, 32) and tokenizer("a cat").shape == (1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.encode_text(texts), model.encode_texts(["a cat", "a dog"])
        )
        torch.testing.assert_close(
            loaded.encode_image(pixels[None]), model.encode_images(pixels[None])
        )
    with pytest.raises(ValueError, match="pretrained"):
        cb.load("clippo", "")


def test_topk_accuracy_stands_in_for_the_release_helper():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5], [0.6, 0.0, 0.4]])
    target = torch.tensor([1, 2, 0, 2])
    # top-1: rows 0 only; top-2: rows 0, 1 (0.3 second), 3 (0.4 second); row 2's 0.2 is last
    assert cb.topk_accuracy(logits, target, (1, 2)) == [0.25, 0.75]
    if tuple(int(v) for v in np.__version__.split(".")[:2]) >= (2, 4):
        with pytest.raises(TypeError, match="0-dimensional"):  # why the stand-in exists
            zeroshot_classification.accuracy(logits, target, (1, 2))
