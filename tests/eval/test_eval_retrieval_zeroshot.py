"""Retrieval and zero-shot suites with small deterministic encoders (and a tiny CLIPPO)."""

from __future__ import annotations

import numpy as np
import pytest

from clippo.eval.encoders import as_encoders, embed
from clippo.eval.retrieval import evaluate_retrieval, retrieval_metrics, similarity
from clippo.eval.zeroshot import evaluate_zeroshot
from clippo.model.one_tower import prompt_ensemble


def angle_vec(deg: np.ndarray, scale: np.ndarray | float = 1.0) -> np.ndarray:
    rad = np.deg2rad(np.asarray(deg, dtype=np.float64))
    return (np.stack([np.cos(rad), np.sin(rad)], axis=-1) * np.reshape(scale, (-1, 1))).astype(
        np.float32
    )


# Images are their index; image i sits at angle 10*i degrees. Texts name an angle.
# Norms vary on purpose: the suite must use cosine similarity.
def encode_images(batch: np.ndarray) -> np.ndarray:
    return angle_vec(10.0 * batch, scale=1.0 + batch)


def encode_texts(texts: list[str]) -> np.ndarray:
    return angle_vec([float(t.split()[1]) for t in texts], scale=3.0)


IMAGES = np.arange(10)
# text j describes image j; text 4 is at 52 degrees, nearer image 5 (50) than its own (40)
TEXTS = [f"at {10 * j if j != 4 else 52}" for j in range(10)]
IDS = np.arange(10)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_evaluate_retrieval_hand_computed(batch_size):
    out = evaluate_retrieval(encode_images, encode_texts, IMAGES, TEXTS, IDS, batch_size)
    # image 4: texts 3 (30) and 5 (50) are 10 degrees away, its own 12 -> rank 2
    # text 4 (52): images 5 (2 degrees away) and 6 (8) beat image 4 (12) -> rank 2
    # modality gap: the unit centroids differ only by (u(40) - u(52)) / 10: 2 sin(6 deg) / 10
    assert out == {
        "img2txt/r@1": 0.9,
        "img2txt/r@5": 1.0,
        "img2txt/r@10": 1.0,
        "txt2img/r@1": 0.9,
        "txt2img/r@5": 1.0,
        "txt2img/r@10": 1.0,
        "n_images": 10,
        "n_texts": 10,
        "modality_gap": pytest.approx(2 * np.sin(np.deg2rad(6.0)) / 10, rel=1e-5),
    }


def test_retrieval_several_captions_per_image():
    texts = [*TEXTS, "at 41"]  # a second caption for image 4, right next to it
    ids = np.array([*IDS, 4])
    out = evaluate_retrieval(encode_images, encode_texts, IMAGES, texts, ids, 4, ks=(1, 2, 3))
    assert out["img2txt/r@1"] == 1.0  # image 4 now finds one of its captions first
    assert out["txt2img/r@1"] == pytest.approx(10 / 11)  # text "at 52" still misses
    assert out["txt2img/r@2"] == pytest.approx(10 / 11)  # ... at rank 2
    assert out["txt2img/r@3"] == 1.0
    with pytest.raises(ValueError, match="have no text"):
        retrieval_metrics(np.zeros((3, 2)), np.array([0, 1]))


def test_torch_tensors_and_similarity():
    torch = pytest.importorskip("torch")
    sim = similarity(
        lambda b: torch.from_numpy(encode_images(b)), encode_texts, IMAGES, TEXTS, batch_size=4
    )
    expect = np.cos(
        np.deg2rad(10.0 * IMAGES[:, None] - np.array([float(t.split()[1]) for t in TEXTS]))
    )
    np.testing.assert_allclose(sim, expect, atol=1e-6)


def test_encoder_shape_errors():
    with pytest.raises(ValueError, match="returned shape"):
        embed(lambda b: np.zeros((1, 2)), np.arange(3), batch_size=3, desc="images")
    with pytest.raises(ValueError, match="texts but"):
        evaluate_retrieval(encode_images, encode_texts, IMAGES, TEXTS[:5], IDS, 4)
    with pytest.raises(TypeError, match="two callables"):
        as_encoders((encode_images,))


# ---- zero-shot ---------------------------------------------------------------------------------

PROMPTS = {
    "x a": [10.0, 0.0],  # large norm: a plain mean would point class a almost along x
    "y a": [0.0, 1.0],
    "x b": [1.0, 0.0],
    "y b": [2.0, 0.0],
}


def prompt_encoder(texts: list[str]) -> np.ndarray:
    return np.array([PROMPTS[t] for t in texts], dtype=np.float32)


def test_class_embeddings_normalise_before_averaging():
    z = prompt_ensemble(prompt_encoder, ["a", "b"], ["x {}", "y {}"], batch_size=3).numpy()
    np.testing.assert_allclose(z, [[2**-0.5, 2**-0.5], [1.0, 0.0]], atol=1e-6)


def test_evaluate_zeroshot_prompt_ensemble():
    # class a sits at 45 degrees, b at 0. An image at 20 degrees is b (a plain, un-normalised
    # mean would put a at ~5.7 degrees and call it a); one at 60 degrees is a.
    images = np.array([20.0, 60.0, 35.0])
    labels = np.array([1, 0, 1])  # the last one (35 deg) is nearer a: a miss for class b
    out = evaluate_zeroshot(
        (lambda b: angle_vec(b), prompt_encoder), images, labels, ["a", "b"], ["x {}", "y {}"]
    )
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert out["per_class"] == {"a": 1.0, "b": 0.5}
    assert out["mean_per_class_accuracy"] == pytest.approx(0.75)
    assert out["n"] == 3 and "top5_accuracy" not in out


def test_zeroshot_class_without_images_and_errors():
    enc = (
        lambda b: angle_vec(b),
        lambda t: angle_vec([{"p": 0.0, "q": 90.0, "r": 180.0}[s[-1]] for s in t]),
    )
    out = evaluate_zeroshot(enc, np.array([5.0, 80.0]), np.array([0, 1]), ["p", "q", "r"], ["{}"])
    assert out["per_class"] == {"p": 1.0, "q": 1.0, "r": None}
    assert out["accuracy"] == 1.0
    with pytest.raises(ValueError, match="exactly one"):
        evaluate_zeroshot(enc, np.array([5.0]), np.array([0]), ["p"], ["no slot"])
    with pytest.raises(ValueError, match="labels must be in"):
        evaluate_zeroshot(enc, np.array([5.0]), np.array([3]), ["p", "q", "r"], ["{}"])
    # repeated names (CLIP's ImageNet list has two) share an embedding: the lower index wins
    twice = evaluate_zeroshot(enc, np.array([5.0, 80.0]), np.array([1, 2]), ["q", "p", "p"], ["{}"])
    assert twice["per_class"] == {"q": None, "p [1]": 1.0, "p [2]": 0.0}


# ---- a real (tiny) CLIPPO model through as_encoders ---------------------------------------------


def test_tiny_clippo_model_through_the_suites():
    torch = pytest.importorskip("torch")
    clippo = pytest.importorskip("clippo")
    from clippo.render import to_pixels

    torch.manual_seed(0)
    model = clippo.CLIPPO.from_variant("tiny-test", image_size=32)
    model.train()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    texts = ["a red circle", "two blue stars", "a cat", "a dog", "a small green heart"]
    enc_img, enc_txt = as_encoders(model)
    z = embed(enc_img, images, batch_size=2)
    with torch.no_grad():
        ref = model.eval().encode_images(torch.from_numpy(to_pixels(images))).numpy()
    model.train()
    np.testing.assert_allclose(z, ref, atol=1e-5)
    out = evaluate_retrieval(enc_img, enc_txt, images, texts, np.arange(5), batch_size=2)
    assert model.training  # restored after evaluation
    assert set(out) >= {"img2txt/r@1", "txt2img/r@10"} and out["img2txt/r@10"] == 1.0
    names, templates = ["cat", "dog", "bird"], ["a photo of a {}", "{}"]
    ours = prompt_ensemble(enc_txt, names, templates).numpy()
    np.testing.assert_allclose(ours, model.class_embeddings(names, templates).numpy(), atol=1e-5)
    res = evaluate_zeroshot(
        model, images, np.array([0, 1, 2, 0, 1]), names, templates, batch_size=2
    )
    pred = (ref @ ours.T).argmax(1)
    assert res["accuracy"] == pytest.approx(np.mean(pred == np.array([0, 1, 2, 0, 1])))
