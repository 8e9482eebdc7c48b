"""Checkpoint loading: big_vision .npz (any size, bf16 as V2, opt/ keys), saved directories,
trainer directories, errors, the `clippo convert` round trip, and I21k init."""

from __future__ import annotations

import copy
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import clippo
from clippo.cli import main as cli_main
from clippo.model.checkpoint import CheckpointError, convert, load_image_init, load_npz
from clippo.model.one_tower import CLIPPO

# ---- a big_vision ViT written out in numpy (flax semantics), independent of the port -------------


def random_bv_params(rng, *, width, depth, heads, mlp, patch, grid, out_dim, pool="map"):
    """big_vision `one_tower` parameters as flat "/"-joined keys without `params/`: the ViT under
    `img/` (embedding, pos_embedding, Transformer/encoderblock_i, encoder_norm, MAPHead_0, head)
    and the log temperature `t`."""
    hd = width // heads
    p: dict[str, np.ndarray] = {}

    def arr(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def dense(name, d_in, d_out):
        p[f"{name}/kernel"] = arr(d_in, d_out, scale=d_in**-0.5)
        p[f"{name}/bias"] = arr(d_out, scale=0.1)

    def layernorm(name):
        p[f"{name}/scale"] = 1 + arr(width, scale=0.1)
        p[f"{name}/bias"] = arr(width, scale=0.1)

    def mha(name):
        for n in ("query", "key", "value"):
            p[f"{name}/{n}/kernel"] = arr(width, heads, hd, scale=width**-0.5)
            p[f"{name}/{n}/bias"] = arr(heads, hd, scale=0.1)
        p[f"{name}/out/kernel"] = arr(heads, hd, width, scale=width**-0.5)
        p[f"{name}/out/bias"] = arr(width, scale=0.1)

    p["img/embedding/kernel"] = arr(patch, patch, 3, width, scale=(3 * patch * patch) ** -0.5)
    p["img/embedding/bias"] = arr(width, scale=0.1)
    p["img/pos_embedding"] = arr(1, grid * grid, width, scale=width**-0.5)
    for i in range(depth):
        b = f"img/Transformer/encoderblock_{i}"
        layernorm(f"{b}/LayerNorm_0")
        mha(f"{b}/MultiHeadDotProductAttention_0")
        layernorm(f"{b}/LayerNorm_1")
        dense(f"{b}/MlpBlock_0/Dense_0", width, mlp)
        dense(f"{b}/MlpBlock_0/Dense_1", mlp, width)
    layernorm("img/Transformer/encoder_norm")
    if pool == "map":
        p["img/MAPHead_0/probe"] = arr(1, 1, width)
        mha("img/MAPHead_0/MultiHeadDotProductAttention_0")
        layernorm("img/MAPHead_0/LayerNorm_0")
        dense("img/MAPHead_0/MlpBlock_0/Dense_0", width, mlp)
        dense("img/MAPHead_0/MlpBlock_0/Dense_1", mlp, width)
    dense("img/head", width, out_dim)
    p["t"] = np.array([np.log(10.0) + 0.3], np.float32)
    return p


def np_forward(p: dict[str, np.ndarray], x_nhwc: np.ndarray) -> np.ndarray:
    """float64 big_vision forward (vit.py + one_tower.py) -> normalised embeddings [B, D]."""
    p = {k: v.astype(np.float64) for k, v in p.items()}

    def ln(x, name):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-6) * p[f"{name}/scale"] + p[f"{name}/bias"]

    def gelu(x):  # flax nn.gelu: tanh approximation
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

    def mlp(x, name):
        h = gelu(x @ p[f"{name}/Dense_0/kernel"] + p[f"{name}/Dense_0/bias"])
        return h @ p[f"{name}/Dense_1/kernel"] + p[f"{name}/Dense_1/bias"]

    def mha(xq, xkv, name):
        def proj(x, n):
            return np.einsum("bld,dhk->blhk", x, p[f"{name}/{n}/kernel"]) + p[f"{name}/{n}/bias"]

        q, k, v = proj(xq, "query"), proj(xkv, "key"), proj(xkv, "value")
        q = q / np.sqrt(q.shape[-1])
        s = np.einsum("bqhk,blhk->bhql", q, k)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        o = np.einsum("bhql,blhk->bqhk", a, v)
        return np.einsum("bqhk,hkd->bqd", o, p[f"{name}/out/kernel"]) + p[f"{name}/out/bias"]

    kernel = p["img/embedding/kernel"]
    ps, width = kernel.shape[0], kernel.shape[-1]
    b, h, w, c = x_nhwc.shape
    patches = x_nhwc.reshape(b, h // ps, ps, w // ps, ps, c).transpose(0, 1, 3, 2, 4, 5)
    x = patches.reshape(b, -1, ps * ps * c) @ kernel.reshape(-1, width) + p["img/embedding/bias"]
    x = x + p["img/pos_embedding"]
    i = 0
    while f"img/Transformer/encoderblock_{i}/LayerNorm_0/scale" in p:
        blk = f"img/Transformer/encoderblock_{i}"
        y = ln(x, f"{blk}/LayerNorm_0")
        x = x + mha(y, y, f"{blk}/MultiHeadDotProductAttention_0")
        x = x + mlp(ln(x, f"{blk}/LayerNorm_1"), f"{blk}/MlpBlock_0")
        i += 1
    x = ln(x, "img/Transformer/encoder_norm")
    if "img/MAPHead_0/probe" in p:
        probe = np.tile(p["img/MAPHead_0/probe"], (b, 1, 1))
        a = mha(probe, x, "img/MAPHead_0/MultiHeadDotProductAttention_0")
        x = (a + mlp(ln(a, "img/MAPHead_0/LayerNorm_0"), "img/MAPHead_0/MlpBlock_0"))[:, 0]
    else:
        x = x.mean(1)
    z = x @ p["img/head/kernel"] + p["img/head/bias"]
    return z / (np.linalg.norm(z, axis=-1, keepdims=True) + 1e-8)


def save_npz(path: Path, params: dict[str, np.ndarray], prefix: str = "params/", **extra) -> Path:
    np.savez(path, **{f"{prefix}{k}": v for k, v in params.items()}, **extra)
    return path


def encode(model: CLIPPO, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.encode(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()


# A model and its reloaded copy hold bitwise-equal weights, yet their float outputs need not be:
# the reloaded tensors live in other memory (safetensors data is not 64-byte aligned) and BLAS
# may sum in another order there (MKL on AMD EPYC, or with MKL_ENABLE_INSTRUCTIONS=SSE4_2:
# 6.7e-8 to 1.2e-7 on these unit vectors). 1e-6 is ~8 float32 ulps at 1.0, far below what one
# wrong weight moves an embedding; the weights and rendered pixels are compared bitwise.
OUTPUT_ATOL = 1e-6


def assert_same_weights(got: CLIPPO, want: CLIPPO) -> None:
    got_state, want_state = got.state_dict(), want.state_dict()
    assert got_state.keys() == want_state.keys()
    for k, v in want_state.items():
        assert torch.equal(got_state[k], v), k


SHAPES = {
    # width, depth, heads, mlp, patch, grid, out_dim, pool: sizes unlike the public fixture
    "map-p8-h3": dict(width=48, depth=3, heads=3, mlp=80, patch=8, grid=6, out_dim=24, pool="map"),
    "gap-p16-h4": dict(
        width=32, depth=1, heads=4, mlp=64, patch=16, grid=4, out_dim=40, pool="gap"
    ),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_any_size_is_inferred_and_matches_a_numpy_big_vision(tmp_path, shape):
    s = SHAPES[shape]
    rng = np.random.default_rng(7)
    params = random_bv_params(rng, **s)
    model = clippo.load(save_npz(tmp_path / "m.npz", params))
    v = model.config.vit
    assert (v.width, v.depth, v.num_heads, v.mlp_dim, v.patch_size, v.image_size, v.pool_type) == (
        s["width"],
        s["depth"],
        s["heads"],
        s["mlp"],
        s["patch"],
        s["grid"] * s["patch"],
        s["pool"],
    )
    assert model.config.out_dim == s["out_dim"]
    assert model.config.render.image_size == v.image_size
    size = v.image_size
    images = rng.uniform(-1, 1, (3, size, size, 3)).astype(np.float32)
    np.testing.assert_allclose(encode(model, images), np_forward(params, images), atol=1e-5)
    assert model.t.item() == pytest.approx(float(params["t"][0]))


def to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (round to nearest even) stored as numpy void V2."""
    u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return r.view("V2")


def from_bf16_bits(v: np.ndarray) -> np.ndarray:
    return (v.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def test_bfloat16_void_npz_with_optimizer_state(tmp_path, bv_params):
    stored = {k: to_bf16_bits(v) for k, v in bv_params.items()}
    assert all(v.dtype == np.dtype("V2") for v in stored.values())
    opt = {
        "opt/0/nu/img/head/kernel": to_bf16_bits(np.ones((64, 48), np.float32)),
        "opt/1/count": np.array(3, np.int32),
        "chrono/accum_train_time": np.array(1.5),
    }
    np.savez(tmp_path / "bf16.npz", **stored, **opt)
    with np.load(tmp_path / "bf16.npz", allow_pickle=False) as f:
        assert f["params/t"].dtype == np.dtype("V2")  # what a reader really sees
    rounded = {k: from_bf16_bits(v) for k, v in stored.items()}
    np.savez(tmp_path / "f32.npz", **rounded)

    got = clippo.load(tmp_path / "bf16.npz")
    ref = clippo.load(tmp_path / "f32.npz")
    assert all(p.dtype == torch.float32 for p in got.parameters())
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(got.state_dict()[k], v, rtol=0, atol=0)
    head = rounded["params/img/head/kernel"]
    np.testing.assert_array_equal(got.head.weight.detach().numpy(), head.T)
    # the bf16 values really differ from float32 ones, so the test would see a wrong reinterpretation
    assert not np.array_equal(head, bv_params["params/img/head/kernel"])


def test_missing_unexpected_and_misshaped_keys_in_one_error(tmp_path, bv_params):
    params = dict(bv_params)
    del params["params/img/Transformer/encoderblock_1/MlpBlock_0/Dense_1/bias"]
    params["params/img/extra/kernel"] = np.zeros((2, 2), np.float32)
    params["params/img/head/bias"] = np.zeros(47, np.float32)
    path = tmp_path / "broken.npz"
    np.savez(path, **params)
    with pytest.raises(CheckpointError) as e:
        clippo.load(path)
    msg = str(e.value)
    assert str(path) in msg
    assert "encoderblock_1/MlpBlock_0/Dense_1/bias" in msg
    assert "img/extra/kernel" in msg
    assert "img/head/bias (47,)" in msg and "(48,)" in msg


class _Trap:
    """Unpickling this would create `marker`: proves the loaders never unpickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_corrupt_truncated_and_pickled_npz(tmp_path, params_npz):
    data = params_npz.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    middle = len(data) // 2
    flipped[middle : middle + 64] = bytes(b ^ 0xFF for b in flipped[middle : middle + 64])
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(bytes(flipped))
    text = tmp_path / "notes.npz"
    text.write_text("not a checkpoint")
    for path in (truncated, corrupt, text):
        with pytest.raises(CheckpointError, match=str(path)):
            clippo.load(path)

    marker = tmp_path / "unpickled"
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **{"params/t": np.array([_Trap(marker)], dtype=object)})
    with pytest.raises(CheckpointError, match=str(pickled)):
        clippo.load(pickled)
    assert not marker.exists()
    with pytest.raises(FileNotFoundError):
        clippo.load(tmp_path / "absent.npz")


# ---- saved and trainer directories --------------------------------------------------------------


def test_save_load_identical_outputs(tmp_path):
    torch.manual_seed(1)
    model = CLIPPO.from_variant("tiny-test", image_size=32, out_dim=8, temperature_init=3.0).eval()
    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    model.save(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    meta = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert meta["format"] == "clippo-model" and meta["format_version"] == 1
    assert meta["model"]["render"]["image_size"] == 32
    loaded = clippo.load(tmp_path / "saved")
    assert loaded.config == model.config
    assert_same_weights(loaded, model)
    assert torch.equal(loaded.render_texts(["hello"]), model.render_texts(["hello"]))
    np.testing.assert_allclose(
        encode(loaded, images), encode(model, images), rtol=0, atol=OUTPUT_ATOL
    )
    assert loaded.t.item() == model.t.item()
    with torch.no_grad():
        a, b = model.encode_texts(["hello"]), loaded.encode_texts(["hello"])
    torch.testing.assert_close(a, b, rtol=0, atol=OUTPUT_ATOL)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_trainer_checkpoint_dir_and_torch_weights(tmp_path, fixture_model, noise_images):
    step = tmp_path / "run" / "checkpoints" / "step_000000123"
    fixture_model.save(step)
    (step / "train_config.json").write_text("{}")
    (step / "trainer_state.json").write_text('{"step": 123}')
    torch.save({"state": {}}, step / "optimizer.pt")
    want = fixture_model.encode(noise_images).detach()
    assert_same_weights(clippo.load(step), fixture_model)
    torch.testing.assert_close(
        clippo.load(step).encode(noise_images).detach(), want, rtol=0, atol=OUTPUT_ATOL
    )

    pt_dir = tmp_path / "pt"
    pt_dir.mkdir()
    shutil.copy(step / "config.json", pt_dir / "config.json")
    torch.save(fixture_model.state_dict(), pt_dir / "pytorch_model.bin")
    assert_same_weights(clippo.load(pt_dir), fixture_model)
    torch.testing.assert_close(
        clippo.load(pt_dir).encode(noise_images).detach(), want, rtol=0, atol=OUTPUT_ATOL
    )

    marker = tmp_path / "unpickled"
    with open(pt_dir / "pytorch_model.bin", "wb") as f:
        pickle.dump(_Trap(marker), f)
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        clippo.load(pt_dir)
    assert not marker.exists()


def test_bad_directories(tmp_path, fixture_model):
    d = tmp_path / "m"
    fixture_model.save(d)
    weights = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        clippo.load(d)

    fixture_model.save(d)
    meta = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format_version"):
        clippo.load(d)
    (d / "config.json").write_text(json.dumps({**meta, "model": {**meta["model"], "dropout": 0.1}}))
    with pytest.raises(CheckpointError, match="dropout"):
        clippo.load(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        clippo.load(d)

    from safetensors.torch import save_file

    fixture_model.save(d)
    state = {k: v.contiguous() for k, v in fixture_model.state_dict().items()}
    del state["vit.norm.bias"]
    state["extra"] = torch.zeros(1)
    state["head.bias"] = torch.zeros(5)
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError) as e:
        clippo.load(d)
    assert (
        "vit.norm.bias" in str(e.value) and "extra" in str(e.value) and "head.bias" in str(e.value)
    )
    with pytest.raises(FileNotFoundError):
        clippo.load(tmp_path)


def test_convert_cli_round_trip(tmp_path, params_npz, noise_images, capsys):
    out = tmp_path / "converted"
    assert cli_main(["convert", str(params_npz), str(out)]) == 0
    assert "153,841 parameters" in capsys.readouterr().out
    a = clippo.load(params_npz)
    b = clippo.load(out)
    assert a.config == b.config
    assert_same_weights(b, a)
    assert torch.equal(b.render_texts(["x y"]), a.render_texts(["x y"]))
    with torch.no_grad():
        torch.testing.assert_close(
            b.encode(noise_images), a.encode(noise_images), rtol=0, atol=OUTPUT_ATOL
        )
        torch.testing.assert_close(
            b.encode_texts(["x y"]), a.encode_texts(["x y"]), rtol=0, atol=OUTPUT_ATOL
        )
    assert cli_main(["convert", str(params_npz), str(out)]) == 1  # refuses to overwrite
    assert cli_main(["convert", str(params_npz), str(out), "--force"]) == 0
    assert cli_main(["convert", str(tmp_path / "missing.npz"), str(tmp_path / "x")]) == 1


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.int64])
def test_integer_or_bool_safetensors_weights_are_refused_naming_every_key(
    tmp_path, fixture_model, dtype
):
    # cast to float32 they loaded silently as nonsense (the .npz reader already refused int32)
    from safetensors.torch import save_file

    d = tmp_path / "m"
    fixture_model.save(d)
    state = {k: v.contiguous() for k, v in fixture_model.state_dict().items()}
    for key in ("head.bias", "t"):
        state[key] = torch.ones_like(state[key], dtype=dtype)
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        clippo.load(d)
    kind = str(dtype)
    assert "model.safetensors: weights must be floating-point tensors" in str(info.value)
    assert f"head.bias ({kind})" in str(info.value) and f"t ({kind})" in str(info.value)
    # bfloat16 and float16 weights are floating point: they load (as float32)
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in fixture_model.state_dict().items()}
    save_file(state, str(d / "model.safetensors"))
    assert next(clippo.load(d).parameters()).dtype == torch.float32


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # was "'<' not supported between instances of 'str' and 'int'", naming no key
        ({"render": {"max_chars": "80"}}, "model.render.max_chars: expected an integer, got '80'"),
        ({"render": {"lower": "false"}}, "model.render.lower: expected true or false"),
        ({"vit": {"width": 64.0}}, "model.vit.width: expected an integer, got 64.0"),
        ({"vit": {"num_heads": 3}}, "model.vit.width 64 is not divisible by num_heads 3"),
        ({"out_dim": True}, "model.out_dim: expected an integer, got True"),
        ({"temperature_init": float("inf")}, "model.temperature_init must be finite and > 0"),
        ({"render": {"bogus": 1}}, "unknown key 'model.render.bogus'"),
    ],
)
def test_model_config_errors_name_the_dotted_key(tmp_path, fixture_model, change, message):
    d = tmp_path / "m"
    fixture_model.save(d)
    meta = json.loads((d / "config.json").read_text())
    model = meta["model"]
    for key, value in change.items():
        model[key] = {**model[key], **value} if isinstance(value, dict) else value
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as info:
        clippo.load(d)
    assert str(info.value).startswith(f"{d / 'config.json'}: bad model config: ")
    assert message in str(info.value)


def test_convert_checks_the_output_before_loading(tmp_path, params_npz):
    taken = tmp_path / "taken"
    taken.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match=f"{taken} exists and is a file"):
        # the input need not even exist: the output is checked first
        convert(tmp_path / "missing.npz", taken)
    assert taken.read_bytes() == b"keep"
    with pytest.raises(IsADirectoryError, match=f"{tmp_path} is a folder, not a big_vision"):
        load_npz(tmp_path)


# ---- ImageNet-21k AugReg starting weights ---------------------------------------------------------


def augreg_file(tmp_path: Path, params: dict[str, np.ndarray], rng) -> Path:
    """The AugReg i21k layout: no `params/`, pre-linen sub-module numbering, a class token,
    `Transformer/posembed_input/pos_embedding` with the class slot first, a 21k-style head."""
    out: dict[str, np.ndarray] = {}
    rename = {
        "MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
        "LayerNorm_1": "LayerNorm_2",
        "MlpBlock_0": "MlpBlock_3",
    }
    for k, v in params.items():
        if not k.startswith("img/") or k.startswith(("img/MAPHead_0", "img/head")):
            continue
        parts = k[4:].split("/")
        if parts[0] == "Transformer" and parts[1].startswith("encoderblock_"):
            parts[2] = rename.get(parts[2], parts[2])
        out["/".join(parts)] = v
    pe = out.pop("pos_embedding")
    cls_slot = rng.standard_normal((1, 1, pe.shape[-1])).astype(np.float32)
    out["Transformer/posembed_input/pos_embedding"] = np.concatenate([cls_slot, pe], axis=1)
    out["cls"] = np.zeros((1, 1, pe.shape[-1]), np.float32)
    out["head/kernel"] = np.zeros((pe.shape[-1], 10), np.float32)
    out["head/bias"] = np.zeros(10, np.float32)
    path = tmp_path / "augreg.npz"
    np.savez(path, **out)
    return path


def test_load_image_init_from_augreg_layout(tmp_path):
    rng = np.random.default_rng(3)
    s = dict(width=48, depth=2, heads=3, mlp=96, patch=16, grid=2, out_dim=48)
    params = random_bv_params(rng, **s)
    path = augreg_file(tmp_path, params, rng)
    reference = clippo.load(save_npz(tmp_path / "clippo.npz", params))  # same tower, CLIPPO layout

    torch.manual_seed(0)
    model = CLIPPO(copy.deepcopy(reference.config))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    assert load_image_init(path, model) is model
    for k, v in model.state_dict().items():
        if k.startswith("vit.") and not k.startswith("vit.attn_pool."):
            torch.testing.assert_close(v, reference.state_dict()[k], rtol=0, atol=0, msg=k)
        else:  # MAP head, head and t keep big_vision's fresh init
            torch.testing.assert_close(v, fresh[k], rtol=0, atol=0, msg=k)

    built = load_image_init(path)  # no model: sizes from the file, MAP pooling, out_dim = width
    assert built.config.vit == reference.config.vit and built.config.out_dim == 48


def test_load_image_init_resamples_position_embedding_and_checks_sizes(tmp_path):
    rng = np.random.default_rng(4)
    params = random_bv_params(rng, width=32, depth=1, heads=2, mlp=128, patch=16, grid=2, out_dim=8)
    path = augreg_file(tmp_path, params, rng)
    model = load_image_init(path, CLIPPO.from_variant("mu/16", image_size=64, out_dim=8))
    old = params["img/pos_embedding"].reshape(2, 2, 32).astype(np.float64)
    naive = np.zeros((4, 4, 32))
    for i in range(4):  # scipy.ndimage.zoom(order=1): output corners sit on input corners
        for j in range(4):
            y, x = i * (2 - 1) / (4 - 1), j * (2 - 1) / (4 - 1)
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            y1, x1 = min(y0 + 1, 1), min(x0 + 1, 1)
            dy, dx = y - y0, x - x0
            naive[i, j] = (
                (1 - dy) * (1 - dx) * old[y0, x0]
                + (1 - dy) * dx * old[y0, x1]
                + dy * (1 - dx) * old[y1, x0]
                + dy * dx * old[y1, x1]
            )
    got = model.vit.pos_embed.detach().numpy().reshape(4, 4, 32)
    np.testing.assert_allclose(got, naive, atol=1e-6)
    with pytest.raises(CheckpointError, match="does not match"):
        load_image_init(path, CLIPPO.from_variant("tiny-test", image_size=32, out_dim=8))
