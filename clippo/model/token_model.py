"""What CLIP* (`two_tower`) and 1T-CLIP (`shared_tower`) share: their config, the token
embedding, the padding-masked transformer pass, and the model contract CLIPPO has.

Both baselines read images exactly as CLIPPO does: their image side is CLIPPO's tower (timm's
ViT with big_vision's settings, `vit_tower`, the projection `head` and the log logit scale `t`,
built and initialised by `CLIPPO` itself, so nothing of it is written twice). They differ in how
text reaches a transformer (see the subclasses). Texts are token ids [B, L] with a padding mask
[B, L] (True on real tokens) from the model's `TextTokenizer`; padding is masked out of every
attention and of the pooling, so an embedding does not depend on how far a text was padded nor
on the rest of its batch.
"""

from __future__ import annotations

import dataclasses
import math
import os
from abc import abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from clippo import typed_config
from clippo.model.config import ModelConfig, ViTConfig
from clippo.model.contract import ContrastiveModel, project
from clippo.model.files import save_model
from clippo.model.one_tower import CLIPPO, at_least_one, padding_mask, run_blocks, vit_features
from clippo.model.tokenizer import DEFAULT_MAX_LENGTH, TOKENIZER_FILE, TextTokenizer

__all__ = ["MixedSide", "TokenEmbedding", "TokenModel", "TokenModelConfig", "encode_sequence"]


@dataclass(frozen=True)
class TokenModelConfig:
    """A token-based baseline: the image ViT `vit` (also the text transformer's configuration),
    a vocabulary of `vocab_size` token ids (the tokenizer's, special tokens included), texts of
    at most `max_length` tokens (the text position embedding's length), the embedding size
    `out_dim` and the initial logit scale `temperature_init` (t = log of it), as CLIPPO's."""

    vit: ViTConfig
    vocab_size: int
    max_length: int = DEFAULT_MAX_LENGTH
    out_dim: int = 768
    temperature_init: float = 10.0

    def __post_init__(self) -> None:
        if not isinstance(self.vit, ViTConfig):
            raise TypeError(f"vit must be a ViTConfig, got {type(self.vit).__name__}")
        for name in ("vocab_size", "max_length", "out_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0 < self.temperature_init < math.inf:
            raise ValueError(
                f"temperature_init must be finite and > 0, got {self.temperature_init}"
            )

    @classmethod
    def from_variant(
        cls,
        name: str,
        vocab_size: int,
        image_size: int = 224,
        max_length: int = DEFAULT_MAX_LENGTH,
        out_dim: int | None = None,
        temperature_init: float = 10.0,
    ) -> TokenModelConfig:
        """Named ViT variant (`clippo.VARIANTS`); `out_dim` defaults to the width, as CLIPPO's."""
        vit = ViTConfig.from_variant(name, image_size=image_size)
        dim = vit.width if out_dim is None else out_dim
        return cls(vit, vocab_size, max_length, dim, temperature_init)

    def image_config(self) -> ModelConfig:
        """The CLIPPO config of the image side (same tower, head and temperature)."""
        return ModelConfig(
            vit=self.vit, out_dim=self.out_dim, temperature_init=self.temperature_init
        )

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "vit": self.vit.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], prefix: str = "") -> TokenModelConfig:
        """The `to_dict` form back; unknown keys and bad values are ConfigErrors naming the key."""
        return typed_config.from_dict(cls, data, prefix)


class TokenEmbedding(nn.Module):
    """Token ids [B, L] -> token embedding + learned position embedding [B, L, width].

    big_vision's text transformer initialisation: the table N(0, 1/width) (flax `nn.Embed`'s
    default), the position embedding N(0, 1/width)."""

    def __init__(self, vocab_size: int, max_length: int, width: int) -> None:
        super().__init__()
        self.token = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Parameter(torch.empty(1, max_length, width))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = 1 / math.sqrt(self.pos_embed.shape[-1])
        nn.init.normal_(self.token.weight, std=std)
        nn.init.normal_(self.pos_embed, std=std)

    def forward(self, ids: Tensor) -> Tensor:
        length = ids.shape[1]
        if length > self.pos_embed.shape[1]:
            raise ValueError(
                f"texts of {length} tokens; the model reads at most {self.pos_embed.shape[1]}"
            )
        return self.token(ids) + self.pos_embed[:, :length]


def encode_sequence(
    x: Tensor,
    valid: Tensor,
    blocks: Iterable[nn.Module],
    norm: nn.Module,
    pool: nn.Module | Literal["gap", "last"],
    grad_checkpointing: bool = False,
) -> tuple[Tensor, Tensor]:
    """Embedded tokens x [B, L, W], valid bool [B, L] -> (encoded [B, L, W], pooled [B, W]).

    Runs timm ViT `blocks` (a Sequential), the final `norm` and the pooling: MAP (`pool` an
    `AttentionPoolLatent`), "gap" (the mean over the valid tokens) or "last" (the last valid
    token: the closing `</s>` of a `TextTokenizer` text). Padding is an additive -inf in every
    attention (`padding_mask`, `run_blocks`: the pass of CLIPPO's ink-only mode). A row without
    any valid token keeps its first one, so that there is something to attend to.
    `grad_checkpointing`: recompute each block's activations in the backward pass (under
    gradients only), as timm's ViT does for the image side.
    """
    valid = valid.to(x.device, torch.bool)
    if valid.shape != x.shape[:2]:
        raise ValueError(f"mask of shape {tuple(valid.shape)} for tokens {tuple(x.shape[:2])}")
    valid = at_least_one(valid)
    mask = padding_mask(valid, x.dtype)  # [B, 1, 1, L]
    x = run_blocks(x, mask, blocks, norm, grad_checkpointing)
    if pool == "last":
        positions = torch.arange(valid.shape[1], device=x.device)
        last = (positions * valid).amax(1)  # [B]
        return x, x[torch.arange(x.shape[0], device=x.device), last]
    if pool == "gap":
        weights = valid.to(x.dtype)[..., None]  # [B, L, 1]
        return x, (x * weights).sum(1) / weights.sum(1)
    assert isinstance(pool, nn.Module)
    return x, pool(x, attn_mask=mask)


@dataclass(frozen=True)
class MixedSide:
    """One side of a pair batch that mixes photos and texts, for a token model (CLIPPO renders
    its texts, so one pixel tensor holds both; here they are two tensors).

    is_text bool [B]: which rows (in batch order) are texts; pixels float [Bi,3,H,W]: the photo
    rows, in order; ids long [Bt,L] and mask bool [Bt,L] or None (everything but `<pad>`): the
    text rows, in order (Bi + Bt = B). Sliced along the batch (`side[a:b]`, in batch order) as
    the trainer cuts micro-batches.
    """

    is_text: Tensor
    pixels: Tensor
    ids: Tensor
    mask: Tensor | None = None

    def __post_init__(self) -> None:
        texts = int(self.is_text.sum())
        if self.is_text.ndim != 1 or len(self.ids) != texts:
            raise ValueError(f"MixedSide: {texts} text rows in is_text, {len(self.ids)} in ids")
        if len(self.pixels) != len(self.is_text) - texts:
            raise ValueError(
                f"MixedSide: {len(self.is_text) - texts} photo rows in is_text, "
                f"{len(self.pixels)} in pixels"
            )

    def __len__(self) -> int:
        return len(self.is_text)

    def __getitem__(self, rows: slice) -> MixedSide:
        start, stop, step = rows.indices(len(self))
        if step != 1:
            raise ValueError("MixedSide slices must be contiguous (step 1)")
        before = int(self.is_text[:start].sum())  # text rows before `start`
        inside = int(self.is_text[start:stop].sum())
        texts = slice(before, before + inside)
        photos = slice(start - before, stop - before - inside)
        mask = None if self.mask is None else self.mask[texts]
        return MixedSide(self.is_text[start:stop], self.pixels[photos], self.ids[texts], mask)


class TokenModel(ContrastiveModel[Tensor | MixedSide]):
    """The contract of `CLIPPO` for a model that reads texts as tokens.

    Images: `encode_images(pixels [B,3,H,W] in [-1,1]) -> [B,D]` through CLIPPO's tower
    (`vit`, `head`, `t` are that tower's, under the same names as in CLIPPO). Texts:
    `encode_texts(strings) -> [B,D]` tokenises with `tokenizer`; `encode_tokens(ids, mask)`
    is the tensor entry point (the training pipeline's). `forward` takes either kind on either
    side: floating pixels go through the image tower, integer token ids through the text one.

    Subclasses build the text side (`_build_text`) and run it (`_text_features`). What CLIPPO
    and the baselines share is written once in `clippo.model.contract.ContrastiveModel`.
    """

    architecture: ClassVar[str]  # the name in `clippo.model.architectures.ARCHITECTURES`
    config: TokenModelConfig

    def __init__(self, config: TokenModelConfig, tokenizer: TextTokenizer | None = None) -> None:
        super().__init__()
        if not isinstance(config, TokenModelConfig):
            raise TypeError(f"expected a TokenModelConfig, got {type(config).__name__}")
        self.config = config
        self.tokenizer: TextTokenizer | None = None
        if tokenizer is not None:
            self.set_tokenizer(tokenizer)
        # CLIPPO builds and initialises the image side (big_vision's init); its modules are
        # adopted, the rest of that CLIPPO (nothing else holds parameters) is dropped
        image = CLIPPO(config.image_config())
        self.vit = image.vit
        self.head = image.head
        self.t = image.t
        self._build_text()

    @abstractmethod
    def _build_text(self) -> None:
        """Create the text side's modules (called once the image side exists)."""

    @abstractmethod
    def _text_features(self, ids: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """ids [B, L], valid [B, L] -> (encoded [B, L, W], pooled [B, W])."""

    @abstractmethod
    def _text_head(self) -> nn.Module:
        """The projection of pooled text features to the embedding."""

    def set_tokenizer(self, tokenizer: TextTokenizer) -> None:
        """Attach `tokenizer`; its vocabulary and length must be the config's."""
        cfg = self.config
        if tokenizer.vocab_size != cfg.vocab_size or tokenizer.max_length != cfg.max_length:
            raise ValueError(
                f"tokenizer has vocab_size {tokenizer.vocab_size}, max_length "
                f"{tokenizer.max_length}; the model was built for {cfg.vocab_size}, "
                f"{cfg.max_length}"
            )
        self.tokenizer = tokenizer

    # ---- towers -------------------------------------------------------------------------------

    def _image_tower(self, pixels: Tensor, prefix: str, out: dict[str, Tensor] | None) -> Tensor:
        encoded, pre_logits = vit_features(self.vit, pixels)  # [B, N, W], [B, W]
        return project(self.head, pre_logits, encoded, prefix, out)

    def _token_tower(
        self, ids: Tensor, mask: Tensor | None, prefix: str, out: dict[str, Tensor] | None
    ) -> Tensor:
        if ids.ndim != 2 or ids.is_floating_point():
            raise ValueError(
                f"token ids must be an integer tensor [B, L], got {ids.dtype} {tuple(ids.shape)}"
            )
        valid = self.pad_mask(ids) if mask is None else mask
        encoded, pre_logits = self._text_features(ids.long(), valid)
        return project(self._text_head(), pre_logits, encoded, prefix, out)

    def _side(
        self,
        x: Tensor | MixedSide,
        mask: Tensor | None,
        prefix: str,
        out: dict[str, Tensor] | None,
    ) -> Tensor:
        """Pixels [B,3,H,W] (floating), token ids [B,L] (integer) or a MixedSide -> [B,D]."""
        if isinstance(x, MixedSide):
            if out is not None:
                raise ValueError("intermediates are per tower: pass photos and texts separately")
            if not len(x.ids):
                return self._image_tower(x.pixels, prefix, None)
            ztxt = self._token_tower(x.ids, x.mask, prefix, None)
            if not len(x.pixels):
                return ztxt
            zimg = self._image_tower(x.pixels, prefix, None)
            is_text = x.is_text.to(ztxt.device)
            z = ztxt.new_zeros(len(x), ztxt.shape[1])
            # index_put is differentiable: each row's gradient reaches the tower it came from
            return z.index_put((~is_text,), zimg).index_put((is_text,), ztxt)
        if x.is_floating_point():
            return self._image_tower(x, prefix, out)
        return self._token_tower(x, mask, prefix, out)

    def pad_mask(self, ids: Tensor) -> Tensor:
        """bool [B, L]: True where `ids` is not the tokenizer's `<pad>` (id 0 in every tokenizer
        `TextTokenizer.train` makes; `<pad>` never stands for text)."""
        pad = 0 if self.tokenizer is None else self.tokenizer.pad_id
        return ids != pad

    # ---- the contract -------------------------------------------------------------------------

    def encode_images(self, pixels: Tensor) -> Tensor:
        """Float pixels [B,3,H,W] in [-1,1] -> [B,D] unit vectors (CLIPPO's image tower)."""
        return self._image_tower(pixels, "img", None)

    def encode(self, pixels: Tensor) -> Tensor:
        """Images only, as `encode_images` (texts are tokens here: `encode_texts`)."""
        return self.encode_images(pixels)

    def pooled(self, pixels: Tensor) -> Tensor:
        """Float pixels [B,3,H,W] -> the image tower's pooled representation [B, width]."""
        return vit_features(self.vit, pixels)[1]

    def encode_tokens(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:
        """Token ids LongTensor [B, L<=max_length] and mask bool [B, L] (True on real tokens;
        None: everything but `<pad>`) -> [B,D] unit vectors."""
        return self._token_tower(ids, mask, "txt", None)

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """B strings -> (ids [B, max_length], mask [B, max_length]) on the model's device."""
        if self.tokenizer is None:
            raise ValueError(
                f"this {type(self).__name__} has no tokenizer: train one "
                f"(TextTokenizer.train) or load it ({TOKENIZER_FILE}), then set_tokenizer"
            )
        ids, mask = self.tokenizer(texts)
        return ids.to(self.t.device), mask.to(self.t.device)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        """Tokenise with the model's tokenizer, then encode: list of B strings -> [B,D]."""
        return self._encode_text_batches(
            texts, batch_size, lambda batch: self.encode_tokens(*self.tokenize(batch))
        )

    def forward(
        self,
        images: Tensor | MixedSide | None = None,
        texts: Tensor | MixedSide | None = None,
        intermediates: bool = False,
        *,
        images_mask: Tensor | None = None,
        texts_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """images [Bi,3,H,W] pixels, texts [Bt,L] token ids -> dict, with CLIPPO's keys:
        "zimg" [Bi,D], "ztxt" [Bt,D], "logit_scale" [], "logits" [Bi,Bt] (both given), and with
        `intermediates=True` "img/encoded", "img/pre_logits", "img/logits", ..., "txt/...".

        Either side may hold either kind (floating pixels -> image tower, integer ids -> text
        tower; the left side of a text/text pair is ids), so the names say the side, as in
        CLIPPO; a `MixedSide` holds both kinds in batch order (a batch mixing image/text and
        text/text pairs; no intermediates then). `images_mask`/`texts_mask` (bool [B, L]) go
        with a side of ids; None means everything but `<pad>`.
        """
        masks = {"img": images_mask, "txt": texts_mask}  # each side's, by its prefix

        def tower(x: Tensor | MixedSide, prefix: str, out: dict[str, Tensor] | None) -> Tensor:
            return self._side(x, masks[prefix], prefix, out)

        return self._pair_outputs(images, texts, intermediates, tower)

    # ---- persistence --------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> None:
        """Write `config.json` (naming the architecture), `model.safetensors` and
        `tokenizer.json` into `directory` (atomically, per file)."""
        if self.tokenizer is None:
            raise ValueError(
                f"cannot save this {type(self).__name__} without its tokenizer (set_tokenizer)"
            )
        save_model(
            directory,
            self.config.to_dict(),
            self.state_dict(),
            architecture=self.architecture,
            files={TOKENIZER_FILE: self.tokenizer.to_json()},
        )
