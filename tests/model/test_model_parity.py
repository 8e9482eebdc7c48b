"""Parity with big_vision's own JAX forward pass on the public tiny CLIPPO fixture.

Texts are rendered by our `UnifontRenderer` (through the model), not taken from the fixture, so
this covers renderer + checkpoint conversion + model end to end.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import clippo

# name -> (atol, rtol); zimg/ztxt: 1e-5 absolute (fixtures/README.md section 3)
TOLERANCES = {
    "zimg": (1e-5, 0.0),
    "ztxt": (1e-5, 0.0),
    "logits": (1e-4, 1e-4),
    **{
        f"{p}/{k}": (1e-4, 1e-4)
        for p in ("img", "txt")
        for k in ("encoded", "pre_logits", "logits")
    },
    **{
        f"{p}/{k}": (1e-4, 1e-4)
        for p in ("img", "txt")
        for k in ("head_input", "norm", "normalized")
    },
}


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module", params=DEVICES)
def run(request, params_npz, reference_outputs):
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    # parity must never use TF32 (no-op on CPU)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    device = request.param
    model = clippo.load(params_npz).to(device)
    ref = reference_outputs
    images = torch.from_numpy(ref["images"]).permute(0, 3, 1, 2).to(device)  # NHWC -> NCHW
    texts = [str(t) for t in ref["texts"]]
    with torch.no_grad():
        rendered = model.render_texts(texts)  # made on the model's device
        out = model(images=images, texts=rendered, intermediates=True)
    yield model, rendered.cpu(), {k: v.cpu().numpy() for k, v in out.items()}
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def test_renderer_input_matches_fixture(run, reference_outputs):
    _, rendered, _ = run
    ours = rendered.permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(ours, reference_outputs["texts_rendered"])


def test_config_inferred_from_file(params_npz):
    model = clippo.load(params_npz)
    v = model.config.vit
    assert (v.width, v.depth, v.num_heads, v.mlp_dim, v.patch_size, v.image_size) == (
        64,
        2,
        2,
        128,
        16,
        64,
    )
    assert v.pool_type == "map" and model.config.out_dim == 48
    assert model.config.render.image_size == 64
    assert sum(p.numel() for p in model.parameters()) == 153_841


@pytest.mark.parametrize("name", sorted(TOLERANCES))
def test_outputs_match_big_vision(run, reference_outputs, name):
    _, _, out = run
    ref_key = name if name in ("zimg", "ztxt", "logits") else f"out/{name}"
    atol, rtol = TOLERANCES[name]
    np.testing.assert_allclose(out[name], reference_outputs[ref_key], atol=atol, rtol=rtol)


def test_temperature(run, reference_outputs):
    model, _, out = run
    np.testing.assert_allclose(
        model.t.detach().cpu().numpy(), reference_outputs["t/parameter"], rtol=1e-7
    )
    np.testing.assert_allclose(out["logit_scale"], reference_outputs["t"][0], rtol=1e-6)


def test_close_to_float64_reference(run, reference_outputs):
    _, _, out = run
    for ours, ref in (
        ("zimg", "ref_f64/zimg"),
        ("ztxt", "ref_f64/ztxt"),
        ("logits", "ref_f64/logits"),
    ):
        np.testing.assert_allclose(
            out[ours], reference_outputs[ref], atol=1e-5 if ours != "logits" else 1e-4
        )
    np.testing.assert_allclose(
        out["img/pre_logits"], reference_outputs["ref_f64/img_pre_logits"], atol=1e-4, rtol=1e-4
    )


def test_encode_apis_agree(run, reference_outputs):
    model, _, out = run
    ref = reference_outputs
    device = model.t.device
    images = torch.from_numpy(ref["images"]).permute(0, 3, 1, 2).to(device)
    texts = [str(t) for t in ref["texts"]]
    with torch.no_grad():
        np.testing.assert_array_equal(model.encode(images).cpu().numpy(), out["zimg"])
        np.testing.assert_array_equal(model.encode_images(images).cpu().numpy(), out["zimg"])
        ztxt = model.encode_texts(texts, batch_size=3).cpu().numpy()
    np.testing.assert_allclose(ztxt, out["ztxt"], atol=1e-6)
