"""CLIPPO: one Vision Transformer for images and rendered text (big_vision `one_tower.py`).

The tower is timm's `VisionTransformer` built directly with big_vision's settings (no class token,
learned position embedding, MAP pooling, tanh GELU, LayerNorm eps 1e-6, qkv biases) and no timm
classifier; our own `head` Linear projects to the embedding size, followed by
`z / (||z|| + 1e-8)`. `t` is the log of the logit scale, as in big_vision checkpoints.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import torch
from timm.layers import GELUTanh, lecun_normal_
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from tqdm.auto import tqdm

from clippo.model.config import ModelConfig, ViTConfig
from clippo.model.files import save_model
from clippo.prompts import fill

if TYPE_CHECKING:
    from clippo.render import Renderer

NORM_EPS = 1e-8  # added to the L2 norm, as big_vision's one_tower does


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


def _linear(module: nn.Module, path: str) -> nn.Linear:
    """The `nn.Linear` at dotted `path` under `module` (timm types its sub-layers loosely)."""
    layer = module.get_submodule(path)
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"{path}: expected nn.Linear, got {type(layer).__name__}")
    return layer


def l2_normalize(x: Tensor) -> Tensor:
    """`x / (||x||_2 + 1e-8)` over the last axis (not `F.normalize`, which clamps the norm)."""
    return x / (torch.linalg.vector_norm(x, dim=-1, keepdim=True) + NORM_EPS)


def prompt_ensemble(
    encode_texts: Callable[[list[str]], Any],
    class_names: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 256,
    *,
    progress: bool = False,
) -> Tensor:
    """Zero-shot class embeddings float32 [C, D], big_vision's prompt ensemble.

    Every template (one "{}", filled with the class name) of every class is embedded by
    `encode_texts` (a list of at most `batch_size` prompts -> [B, D], torch or numpy, any scale)
    and L2-normalised; each class's T prompt embeddings are averaged and the mean re-normalised.
    Names and templates are used as given (`clippo.prompts` has the canonicalisation).
    """
    if not class_names or not templates:
        raise ValueError("class embeddings need at least one class name and one template")
    prompts = [fill(tpl, name) for name in class_names for tpl in templates]
    chunks = []
    starts = range(0, len(prompts), batch_size)
    for lo in tqdm(starts, desc="class prompts", disable=not progress, leave=False):
        batch = prompts[lo : lo + batch_size]
        z = torch.as_tensor(encode_texts(batch)).float()
        if z.ndim != 2 or len(z) != len(batch):
            raise ValueError(
                f"text encoder returned shape {tuple(z.shape)} for a batch of {len(batch)} "
                f"prompts; expected [{len(batch)}, D]"
            )
        chunks.append(z)
    z = l2_normalize(torch.cat(chunks))  # [C * T, D]
    return l2_normalize(z.reshape(len(class_names), len(templates), -1).mean(dim=1))


class CLIPPO(nn.Module):
    """One-tower CLIPPO model. Inputs are float pixels NCHW in [-1, 1] (`x/255*2-1`)."""

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
        self, pixels: Tensor, prefix: str, out: dict[str, Tensor] | None, ink: Tensor | None = None
    ) -> Tensor:
        """pixels [B,3,H,W] -> normalised embedding [B,D]; fills `out` with named intermediates.

        With `ink` (bool [B, H/p, W/p]) only the marked patches become tokens (see `_encode_ink`).
        """
        if ink is None:
            encoded = self.vit.forward_features(pixels)  # [B, N, W], after encoder_norm
            pre_logits = self.vit.forward_head(encoded, pre_logits=True)  # [B, W], pooled
        else:
            encoded, pre_logits = self._encode_ink(pixels, ink)
        logits = self.head(pre_logits)  # [B, D]
        norm = torch.linalg.vector_norm(logits, dim=-1, keepdim=True)  # [B, 1]
        z = logits / (norm + NORM_EPS)
        if out is not None:
            out[f"{prefix}/encoded"] = encoded
            out[f"{prefix}/head_input"] = pre_logits
            out[f"{prefix}/pre_logits"] = pre_logits
            out[f"{prefix}/logits"] = logits
            out[f"{prefix}/norm"] = norm
            out[f"{prefix}/normalized"] = z
        return z

    def _encode_ink(self, pixels: Tensor, ink: Tensor) -> tuple[Tensor, Tensor]:
        """Ink-only tokens: drop blank patches, keeping each kept patch's position embedding.

        pixels [B,3,H,W], ink bool [B,h,w] -> (encoded [B,L,W] left-packed, padded to the longest
        sample's L kept tokens, pooled [B,W]). Padding is masked out of every attention, so a
        sample's embedding does not depend on the rest of the batch. A sample with no ink keeps
        its first patch, so that there is something to attend to.
        """
        vit = self.vit
        if vit.attn_pool is None:
            raise ValueError("ink-only encoding needs MAP pooling (pool_type='map')")
        x = vit.norm_pre(vit._pos_embed(vit.patch_embed(pixels)))  # [B, N, W]
        keep = ink.reshape(ink.shape[0], -1).to(x.device, torch.bool).clone()
        if keep.shape[1] != x.shape[1]:
            raise ValueError(f"ink mask has {keep.shape[1]} patches, the model makes {x.shape[1]}")
        keep[keep.sum(1) == 0, 0] = True
        counts = keep.sum(1)
        length = int(counts.max())
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :length]  # kept first
        x = x.gather(1, order[..., None].expand(-1, -1, x.shape[-1]))
        valid = torch.arange(length, device=x.device)[None] < counts[:, None]  # [B, L]
        # an additive mask: timm's non-fused attention adds the mask to the scores
        mask = torch.zeros(valid.shape, dtype=x.dtype, device=x.device)
        mask = mask.masked_fill(~valid, float("-inf"))[:, None, None, :]  # [B, 1, 1, L]
        for block in vit.blocks:
            x = block(x, attn_mask=mask)
        x = vit.norm(x)
        return x, vit.attn_pool(x, attn_mask=mask)

    def encode(self, pixels: Tensor, ink: Tensor | None = None) -> Tensor:
        """Float pixels [B,3,H,W] in [-1,1] (photos or rendered text) -> [B,D] unit vectors.

        `ink` (bool [B, H/p, W/p], e.g. from `render_torch(..., return_ink=True)`) opts into the
        ink-only mode: blank patches of rendered text are dropped from the sequence.
        """
        return self._tower(pixels, "img", None, ink)

    def encode_images(self, pixels: Tensor) -> Tensor:
        """Same tower as `encode`, named for readability."""
        return self._tower(pixels, "img", None)

    def pooled(self, pixels: Tensor) -> Tensor:
        """Float pixels [B,3,H,W] in [-1,1] -> the pooled representation [B, width]: the MAP
        head's output before the projection `head`, where GLUE and VQA heads sit."""
        return self.vit.forward_head(self.vit.forward_features(pixels), pre_logits=True)

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
        self, texts: Sequence[str], batch_size: int = 256, ink_only: bool = False
    ) -> Tensor:
        """Render with the model's renderer, then encode: list of B strings -> [B,D].

        `ink_only=True` encodes only the patches with ink (cheaper for short texts).
        """
        if isinstance(texts, str | bytes):
            raise TypeError("encode_texts takes a list of strings, not a single string")
        texts = list(texts)
        if not texts:
            return torch.empty(0, self.config.out_dim, device=self.t.device)
        chunks = []
        for i in range(0, len(texts), batch_size):
            pixels, ink = self.renderer.render_torch(
                texts[i : i + batch_size], device=self.t.device, return_ink=True
            )
            chunks.append(self.encode(pixels.to(self.t.dtype), ink if ink_only else None))
        return torch.cat(chunks)

    @property
    def logit_scale(self) -> Tensor:
        """exp(t), the scale applied to cosine similarities (a 0-d tensor)."""
        return self.t.exp()[0]

    def forward(
        self,
        images: Tensor | None = None,
        texts: Tensor | None = None,
        intermediates: bool = False,
    ) -> dict[str, Tensor]:
        """images [Bi,3,H,W], texts [Bt,3,H,W] (rendered pixels) -> dict.

        Keys: "zimg" [Bi,D], "ztxt" [Bt,D] (for the inputs given), "logit_scale" [],
        "logits" [Bi,Bt] (when both are given), and with `intermediates=True` the big_vision
        names "img/encoded" [Bi,N,W], "img/pre_logits" [Bi,W], "img/logits" [Bi,D], "txt/...".
        """
        if images is None and texts is None:
            raise ValueError("CLIPPO.forward needs images, texts or both")
        out: dict[str, Tensor] = {}
        extra = out if intermediates else None
        # two separate calls through the same tower, as big_vision does
        if images is not None:
            out["zimg"] = self._tower(images, "img", extra)
        if texts is not None:
            out["ztxt"] = self._tower(texts, "txt", extra)
        out["logit_scale"] = self.logit_scale
        if images is not None and texts is not None:
            out["logits"] = out["zimg"] @ out["ztxt"].T * out["logit_scale"]
        return out

    # ---- zero-shot classification -------------------------------------------------------------

    @torch.no_grad()
    def class_embeddings(
        self, class_names: Sequence[str], templates: Sequence[str], batch_size: int = 256
    ) -> Tensor:
        """Prompt-ensemble class embeddings [C,D] of this model (`prompt_ensemble`).

        Each template holds one "{}" that the class name replaces. Names and templates are used
        as given; `clippo.prompts` has big_vision's canonicalisation and its `clip_paper` list.
        """
        return prompt_ensemble(self.encode_texts, class_names, templates, batch_size)

    @torch.no_grad()
    def classify(
        self,
        images: Tensor,
        class_names: Sequence[str],
        templates: Sequence[str],
        class_embeddings: Tensor | None = None,
    ) -> Tensor:
        """Zero-shot prediction: pixels [B,3,H,W] -> class indices LongTensor [B].

        Pass `class_embeddings` (from `self.class_embeddings`) to reuse them across batches.
        """
        if class_embeddings is None:
            class_embeddings = self.class_embeddings(class_names, templates)
        zimg = self.encode(images).float()
        return (zimg @ class_embeddings.to(zimg.device).T).argmax(dim=1)

    # ---- persistence --------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> None:
        """Write `config.json` + `model.safetensors` into `directory` (atomically, per file)."""
        save_model(directory, self.config.to_dict(), self.state_dict())
