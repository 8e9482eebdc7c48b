"""CLIPPO: one Vision Transformer for images and rendered text (big_vision `one_tower.py`).

The tower is timm's `VisionTransformer` built directly with big_vision's settings (no class token,
learned position embedding, MAP pooling, tanh GELU, LayerNorm eps 1e-6, qkv biases) and no timm
classifier; our own `head` Linear projects to the embedding size, followed by
`z / (||z|| + 1e-8)`. `t` is the log of the logit scale, as in big_vision checkpoints.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.utils.checkpoint
from timm.layers import GELUTanh, lecun_normal_
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from clippo.model.config import ModelConfig, ViTConfig
from clippo.model.contract import NORM_EPS, ContrastiveModel, l2_normalize, project, prompt_ensemble
from clippo.model.files import save_model
from clippo.render import AnyRenderConfig
from clippo.render.unifont_torch import to_pixels_torch

if TYPE_CHECKING:
    from clippo.render import Renderer

# NORM_EPS, l2_normalize and prompt_ensemble live in `clippo.model.contract` (the contract all
# architectures share); they are still importable from here, as before
__all__ = [
    "CLIPPO",
    "NORM_EPS",
    "TowerInput",
    "WeightInit",
    "at_least_one",
    "ink_patches",
    "l2_normalize",
    "length_buckets",
    "padding_mask",
    "prompt_ensemble",
    "run_blocks",
    "select_tokens",
    "vit_features",
    "vit_tower",
]


def _mlp_ratio(width: int, mlp_dim: int) -> float:
    """A ratio timm turns back into exactly `mlp_dim` (it computes `int(width * ratio)`)."""
    ratio = mlp_dim / width
    if int(width * ratio) != mlp_dim:  # float rounding, e.g. So400m's 4304 / 1152
        ratio = (mlp_dim + 0.5) / width
    return ratio


# timm's VisionTransformer weight_init modes ("skip": leave the layers as constructed)
WeightInit = Literal["skip", "reset", "jax", "jax_nlhb", "moco", ""]


def vit_tower(
    v: ViTConfig, num_classes: int = 0, weight_init: WeightInit = ""
) -> VisionTransformer:
    """timm's `VisionTransformer` with big_vision's settings for `v` (the CLIPPO tower).
    num_classes > 0 adds timm's Linear head; weight_init is timm's ("" default, "skip" none)."""
    return VisionTransformer(
        img_size=v.image_size,
        patch_size=v.patch_size,
        num_classes=num_classes,
        global_pool="map" if v.pool_type == "map" else "avg",
        embed_dim=v.width,
        depth=v.depth,
        num_heads=v.num_heads,
        mlp_ratio=_mlp_ratio(v.width, v.mlp_dim),
        qkv_bias=True,
        class_token=False,
        fc_norm=False,  # big_vision applies encoder_norm before pooling, also for "gap"
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        act_layer=GELUTanh,
        weight_init=weight_init,
    )


def vit_features(vit: VisionTransformer, pixels: Tensor) -> tuple[Tensor, Tensor]:
    """Every patch through `vit` (a `vit_tower`): pixels [B,3,H,W] -> (encoded [B,N,W], the
    tokens after encoder_norm; pooled [B,W], the MAP head's or the mean's output)."""
    encoded = vit.forward_features(pixels)
    return encoded, vit.forward_head(encoded, pre_logits=True)


def _linear(module: nn.Module, path: str) -> nn.Linear:
    """The `nn.Linear` at dotted `path` under `module` (timm types its sub-layers loosely)."""
    layer = module.get_submodule(path)
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"{path}: expected nn.Linear, got {type(layer).__name__}")
    return layer


@dataclass(frozen=True)
class TowerInput:
    """One side of a pair batch for the tower, when tokens may be dropped (`CLIPPO.forward`).

    pixels float [B,3,H,W] in [-1,1]; is_text bool [B]: the rows that are rendered texts (never
    patch-dropped); ink bool [B, H/p, W/p] or None: the inked patches of the text rows (the
    ink-only mode; photo rows' entries are not used), None to keep every text patch. Sliced
    along the batch (`side[a:b]`) as the trainer cuts micro-batches.
    """

    pixels: Tensor
    is_text: Tensor
    ink: Tensor | None = None

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, rows: slice) -> TowerInput:
        ink = None if self.ink is None else self.ink[rows]
        return TowerInput(self.pixels[rows], self.is_text[rows], ink)


def _pixels(side: Tensor | TowerInput) -> Tensor:
    return side.pixels if isinstance(side, TowerInput) else side


def at_least_one(valid: Tensor) -> Tensor:
    """A copy of bool [B, L] in which a row without any True keeps its first token, so that
    attention has something to attend to (no host sync: the other rows are unchanged)."""
    valid = valid.clone()
    valid[:, 0] |= ~valid.any(1)
    return valid


def padding_mask(valid: Tensor, dtype: torch.dtype) -> Tensor:
    """valid bool [B, L] -> the additive attention mask [B, 1, 1, L] of `dtype`: 0 on real
    tokens, -inf on padding (timm's attention, fused or not, adds it to the scores)."""
    mask = torch.zeros(valid.shape, dtype=dtype, device=valid.device)
    return mask.masked_fill(~valid, float("-inf"))[:, None, None, :]


def run_blocks(
    x: Tensor,
    mask: Tensor | None,
    blocks: Iterable[nn.Module],
    norm: nn.Module,
    grad_checkpointing: bool = False,
) -> Tensor:
    """Tokens x [B, L, W] through timm ViT `blocks` (each given `mask`, additive [B, 1, 1, L]
    or None) and the final `norm` -> [B, L, W]. `grad_checkpointing`: recompute each block's
    activations in the backward pass (under gradients only), as timm's ViT does."""
    recompute = grad_checkpointing and torch.is_grad_enabled()
    for block in blocks:
        if recompute:
            x = torch.utils.checkpoint.checkpoint(block, x, attn_mask=mask, use_reentrant=False)
        else:
            x = block(x, attn_mask=mask)
    return norm(x)


def select_tokens(x: Tensor, keep: Tensor, length: int = 0) -> tuple[Tensor, Tensor]:
    """The one token-selection step of ink-only texts and patch dropout: a gather by index.

    x [B,N,W], keep bool [B,N] -> (tokens [B,L,W]: each row's kept tokens in their original
    order, left-packed; valid bool [B,L]: which are real), L = max(the most any row keeps,
    `length`). Padding slots hold a copy of some token of the row; mask them out (`valid`).
    """
    counts = keep.sum(1)
    size = max(int(counts.max()), length)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept first, in order
    if size <= order.shape[1]:
        order = order[:, :size]
    else:
        order = nn.functional.pad(order, (0, size - order.shape[1]))  # extra slots: token 0
    tokens = x.gather(1, order[..., None].expand(-1, -1, x.shape[-1]))
    valid = torch.arange(size, device=x.device)[None] < counts[:, None]
    return tokens, valid


def length_buckets(counts: Tensor) -> list[Tensor]:
    """Rows grouped so that padding stays small: int [B] kept lengths (>= 1) -> row indices
    int64 (on the CPU) per bucket, shortest first; bucket k holds lengths in (2^(k-1), 2^k],
    so no row is padded to more than twice its length (and at most log2(N)+1 buckets run)."""
    c = counts.detach().cpu()
    bucket = torch.ceil(torch.log2(c.double())).long()
    return [(bucket == b).nonzero().squeeze(1) for b in bucket.unique()]


def ink_patches(pixels: Tensor, render: AnyRenderConfig, patch_size: int) -> Tensor:
    """Rendered texts float [B,3,H,W] in [-1,1] -> bool [B, H/p, W/p]: the patches holding any
    pixel other than the renderer's background (what `render_torch(..., return_ink=True)` gives
    at p = 16, for any patch size; the background pixel is converted as the text pixels are)."""
    level = torch.tensor(render.background_brightness, dtype=torch.uint8, device=pixels.device)
    background = to_pixels_torch(level.expand(1, 1, 1, 3))  # [1, 3, 1, 1], bit-equal to `pixels`
    b, _, h, w = pixels.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"image size {h}x{w} is not a multiple of patch_size={patch_size}")
    differs = (pixels != background).any(dim=1)  # [B, H, W]
    return (
        differs.reshape(b, h // patch_size, patch_size, w // patch_size, patch_size).any(4).any(2)
    )


class CLIPPO(ContrastiveModel[Tensor | TowerInput]):
    """One-tower CLIPPO model. Inputs are float pixels NCHW in [-1, 1] (`x/255*2-1`).

    The contract it shares with the token baselines (logit scale, `forward`'s dict, batched
    `encode_texts`, zero-shot classification) is `clippo.model.contract.ContrastiveModel`'s.
    """

    config: ModelConfig

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        # no timm head or init: `self.head` and reset_parameters() below are big_vision's
        self.vit = vit_tower(config.vit, num_classes=0, weight_init="skip")
        self.head = nn.Linear(config.vit.width, config.out_dim)
        self.t = nn.Parameter(torch.empty(1))
        self._renderer: Renderer | None = None
        self.reset_parameters()

    @classmethod
    def from_variant(cls, name: str, image_size: int = 224, **kwargs: Any) -> CLIPPO:
        """`CLIPPO.from_variant("B/16", image_size=224, out_dim=768)`; see `clippo.VARIANTS`."""
        return cls(ModelConfig.from_variant(name, image_size=image_size, **kwargs))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """big_vision's initialisation, not timm's: lecun-normal patch-embedding and head kernels,
        xavier-uniform Dense kernels (q, k and v as separate kernels), MLP biases N(0, 1e-6),
        other biases 0, position embedding N(0, 1/sqrt(width)), LayerNorm scale 1 and bias 0,
        and t = log(temperature_init)."""
        width = self.config.vit.width

        def xavier_blocks(weight: Tensor, n: int) -> None:
            # flax inits q, k, v (and the MAP head's k, v) as separate [width, width] kernels
            for chunk in weight.chunk(n, dim=0):
                nn.init.xavier_uniform_(chunk)

        def mlp(m: nn.Module) -> None:
            for fc in (_linear(m, "fc1"), _linear(m, "fc2")):
                nn.init.xavier_uniform_(fc.weight)
                nn.init.normal_(fc.bias, std=1e-6)

        vit = self.vit
        lecun_normal_(vit.patch_embed.proj.weight)
        nn.init.zeros_(vit.patch_embed.proj.bias)
        if vit.pos_embed is None:  # built with a learned position embedding (vit_tower)
            raise RuntimeError("the ViT tower has no position embedding")
        nn.init.normal_(vit.pos_embed, std=1 / math.sqrt(width))
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for block in vit.blocks:
            qkv, proj = _linear(block, "attn.qkv"), _linear(block, "attn.proj")
            xavier_blocks(qkv.weight, 3)
            nn.init.zeros_(qkv.bias)
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)
            mlp(block.get_submodule("mlp"))
        pool = vit.attn_pool
        if pool is not None:
            # flax xavier on the probe's shape (1, 1, width): fan_in 1, fan_out width
            bound = math.sqrt(6.0 / (1 + width))
            nn.init.uniform_(pool.latent, -bound, bound)
            q, kv, out = _linear(pool, "q"), _linear(pool, "kv"), _linear(pool, "proj")
            nn.init.xavier_uniform_(q.weight)
            xavier_blocks(kv.weight, 2)
            nn.init.xavier_uniform_(out.weight)
            for lin in (q, kv, out):
                nn.init.zeros_(lin.bias)
            mlp(pool.mlp)
        lecun_normal_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.t.fill_(math.log(self.config.temperature_init))

    # ---- towers -------------------------------------------------------------------------------

    def _tower(
        self,
        pixels: Tensor,
        prefix: str,
        out: dict[str, Tensor] | None,
        keep: Tensor | None = None,
        pad_to: int = 0,
    ) -> Tensor:
        """pixels [B,3,H,W] -> normalised embedding [B,D]; fills `out` with named intermediates.

        With `keep` (bool [B, N], N = (H/p)*(W/p)) only the marked patches become tokens (see
        `_encode_kept`); "{prefix}/encoded" is then the packed tokens [B, L, W].
        """
        if keep is None:
            encoded, pre_logits = vit_features(self.vit, pixels)  # [B, N, W], [B, W]
        else:
            encoded, pre_logits = self._encode_kept(pixels, keep, pad_to, out is not None)
        return project(self.head, pre_logits, encoded, prefix, out)

    def _encode_kept(
        self, pixels: Tensor, keep: Tensor, pad_to: int = 0, with_encoded: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Only the kept patches as tokens, each with its own position embedding.

        pixels [B,3,H,W], keep bool [B,N] (or [B,h,w]) -> (encoded [B,L,W]: each row's tokens
        left-packed, padded to the longest row's L (empty [B,0,W] unless `with_encoded`),
        pooled [B,W]). Rows are encoded in buckets of similar kept length (`length_buckets`),
        each padded to at least `pad_to` tokens; padding is masked out of every attention, so a
        row's output depends neither on the rest of the batch nor on the padding. A row that
        keeps nothing keeps its first patch, so that there is something to attend to.
        """
        vit = self.vit
        if vit.attn_pool is None:
            raise ValueError("dropping tokens needs MAP pooling (pool_type='map')")
        x = vit.norm_pre(vit._pos_embed(vit.patch_embed(pixels)))  # [B, N, W]
        keep = keep.reshape(keep.shape[0], -1).to(x.device, torch.bool)
        if keep.shape != x.shape[:2]:
            raise ValueError(
                f"token mask has shape {tuple(keep.shape)}; the model makes {tuple(x.shape[:2])} "
                "tokens (ink masks are per patch: [B, H/patch, W/patch])"
            )
        keep = at_least_one(keep)
        groups = length_buckets(keep.sum(1))
        pooled, encoded = [], []
        for rows in groups:
            rows = rows.to(x.device)
            sub = (x, keep) if len(groups) == 1 else (x[rows], keep[rows])  # one: all, in order
            tokens, valid = select_tokens(*sub, pad_to)
            mask = None  # rows of equal length (patch dropout, full canvases): no padding,
            if not bool(valid.all()):  # and attention may take its fused mask-free kernels
                mask = padding_mask(valid, tokens.dtype)  # [b, 1, 1, L]
            tokens = run_blocks(tokens, mask, vit.blocks, vit.norm, vit.grad_checkpointing)
            pooled.append(vit.attn_pool(tokens, attn_mask=mask))
            if with_encoded:
                encoded.append(tokens)
        inverse = torch.argsort(torch.cat(groups)).to(x.device)  # back to the rows' order
        pooled_rows = torch.cat(pooled)[inverse]
        if not with_encoded:
            return x.new_empty(len(x), 0, x.shape[-1]), pooled_rows
        longest = max(t.shape[1] for t in encoded)
        padded = [nn.functional.pad(t, (0, 0, 0, longest - t.shape[1])) for t in encoded]
        return torch.cat(padded)[inverse], pooled_rows

    def _photo_keep(self, n: int, device: torch.device) -> Tensor:
        """Patch dropout (FLIP): bool [n, N], each row keeping the same number of patches
        (`round(N * (1 - patch_dropout))`, at least 1), chosen uniformly by the torch RNG."""
        tokens = self.config.vit.num_tokens
        kept = max(1, round(tokens * (1 - self.config.patch_dropout)))
        chosen = torch.rand(n, tokens, device=device).argsort(dim=1)[:, :kept]
        return torch.zeros(n, tokens, dtype=torch.bool, device=device).scatter_(1, chosen, True)

    def token_keep(self, side: Tensor | TowerInput, photos: bool) -> Tensor | None:
        """Which patch tokens one side of a pair batch keeps: bool [B, N], or None for all.

        A plain tensor is all photos (`photos=True`) or all rendered texts; a `TowerInput` says
        per row. Text rows keep their inked patches when the side carries ink masks, else all;
        photo rows lose `config.patch_dropout` of theirs in training mode, none in eval mode.
        """
        if isinstance(side, TowerInput):
            pixels, is_text, ink = side.pixels, side.is_text.to(side.pixels.device), side.ink
        else:
            pixels, ink = side, None
            is_text = torch.full((len(side),), not photos, dtype=torch.bool, device=side.device)
        keep = None
        if ink is not None and bool(is_text.any()):  # photos alone: the dense path
            keep = ink.reshape(len(ink), -1).to(pixels.device, torch.bool) | ~is_text[:, None]
        dropout = self.training and self.config.patch_dropout > 0
        if dropout and not bool(is_text.all()):
            if keep is None:
                n = self.config.vit.num_tokens
                keep = torch.ones(len(pixels), n, dtype=torch.bool, device=pixels.device)
            photo_rows = (~is_text).nonzero().squeeze(1)
            keep[photo_rows] = self._photo_keep(len(photo_rows), pixels.device)
        return keep

    def encode(self, pixels: Tensor, ink: Tensor | None = None, pad_to: int = 0) -> Tensor:
        """Float pixels [B,3,H,W] in [-1,1] (photos or rendered text) -> [B,D] unit vectors.

        `ink` (bool [B, H/p, W/p], e.g. from `render_torch(..., return_ink=True)` or `ink_of`)
        opts into the ink-only mode: blank patches of rendered text are dropped from the
        sequence. `pad_to` pads each bucket of kept tokens to at least that length (outputs do
        not depend on it; for tests and benchmarks). No patch dropout here.
        """
        keep = None if ink is None else ink.reshape(len(ink), -1)
        return self._tower(pixels, "img", None, keep, pad_to)

    def encode_images(self, pixels: Tensor) -> Tensor:
        """Photos [B,3,H,W] in [-1,1] -> [B,D]: the tower of `encode`, with the model's patch
        dropout in training mode (`config.patch_dropout`; every patch in eval mode)."""
        return self._tower(pixels, "img", None, self.token_keep(pixels, photos=True))

    def encode_image(self, pixels: Tensor) -> Tensor:
        """open_clip's name for `encode_images` (what CLIP_benchmark calls): [B,3,H,W] -> [B,D]."""
        return self.encode_images(pixels)

    def encode_text(self, pixels: Tensor) -> Tensor:
        """open_clip's name, for texts already rendered (`clippo.eval.clip_benchmark`'s
        tokenizer): float [B,3,H,W] in [-1,1] -> [B,D], ink-only when the model was trained so."""
        return self.encode(pixels, self.ink_of(pixels) if self.config.ink_only_text else None)

    def ink_of(self, pixels: Tensor) -> Tensor:
        """Rendered texts float [B,3,H,W] -> bool [B, H/p, W/p]: the patches of this model's
        grid holding any pixel other than its renderer's background (`ink_patches`)."""
        return ink_patches(pixels, self.config.render, self.config.vit.patch_size)

    def pooled(self, pixels: Tensor, ink: Tensor | None = None) -> Tensor:
        """Float pixels [B,3,H,W] in [-1,1] -> the pooled representation [B, width]: the MAP
        head's output before the projection `head`, where GLUE and VQA heads sit. `ink` (bool
        [B, H/p, W/p]) keeps only those patches, as `encode` does (rendered texts of an
        ink-only model)."""
        if ink is not None:
            return self._encode_kept(pixels, ink.reshape(len(ink), -1))[1]
        return vit_features(self.vit, pixels)[1]

    @property
    def renderer(self) -> Renderer:
        """The renderer of this model's settings (`config.render`): Unifont's, or a
        `TextRenderer` (which draws on the CPU; `render_torch` moves its pixels to the device)."""
        if self._renderer is None:
            from clippo.render import build_renderer

            self._renderer = build_renderer(self.config.render)
        return self._renderer

    def render_texts(self, texts: Sequence[str]) -> Tensor:
        """texts -> float pixels [B,3,H,W] in [-1,1], made on the model's device."""
        return self.renderer.render_torch(list(texts), device=self.t.device)

    def encode_texts(
        self, texts: Sequence[str], batch_size: int = 256, ink_only: bool | None = None
    ) -> Tensor:
        """Render with the model's renderer, then encode: list of B strings -> [B,D].

        `ink_only=True` encodes only the patches with ink (cheaper for short texts); None (the
        default) does what the model was trained with (`config.ink_only_text`).
        """
        use_ink = self.config.ink_only_text if ink_only is None else ink_only

        def encode_batch(batch: list[str]) -> Tensor:
            pixels = self.render_texts(batch)
            return self.encode(pixels.to(self.t.dtype), self.ink_of(pixels) if use_ink else None)

        return self._encode_text_batches(texts, batch_size, encode_batch)

    def forward(
        self,
        images: Tensor | TowerInput | None = None,
        texts: Tensor | TowerInput | None = None,
        intermediates: bool = False,
    ) -> dict[str, Tensor]:
        """images [Bi,3,H,W], texts [Bt,3,H,W] (rendered pixels) -> dict.

        Keys: "zimg" [Bi,D], "ztxt" [Bt,D] (for the inputs given), "logit_scale" [],
        "logits" [Bi,Bt] (when both are given), and with `intermediates=True` the big_vision
        names "img/encoded" [Bi,N,W], "img/pre_logits" [Bi,W], "img/logits" [Bi,D], "txt/...".

        Either side may be a `TowerInput` (pixels, which rows are rendered text, their ink):
        plain `images` are photos, plain `texts` rendered texts. Tokens are dropped as
        `token_keep` says (ink-only texts, patch dropout on photos in training); "encoded" is
        then the packed tokens [B,L,W].
        """
        # two separate calls through the same tower, as big_vision does
        return self._pair_outputs(images, texts, intermediates, self._side)

    def _side(
        self, side: Tensor | TowerInput, prefix: str, out: dict[str, Tensor] | None
    ) -> Tensor:
        """One side of a pair batch -> [B,D]: plain pixels of the "img" side are photos, of the
        "txt" side rendered texts; tokens are dropped as `token_keep` says."""
        keep = self.token_keep(side, photos=prefix == "img")
        return self._tower(_pixels(side), prefix, out, keep)

    # ---- persistence --------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> None:
        """Write `config.json` + `model.safetensors` into `directory` (atomically, per file)."""
        save_model(directory, self.config.to_dict(), self.state_dict())
