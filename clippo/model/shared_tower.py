"""1T-CLIP: one transformer for both modalities, each with its own input embedding (the paper's
second baseline: CLIPPO's tower, but text enters as tokens instead of rendered pixels).

Shared by images and texts (CLIPPO's tower, built and initialised by `CLIPPO`):
- the encoder blocks `vit.blocks` and the final LayerNorm `vit.norm`,
- the pooling head `vit.attn_pool` (MAP; with `vit.pool_type="gap"`, the mean),
- the projection `head` to the embedding and the logit scale `t`.

Not shared (modality-specific input embeddings):
- images: `vit.patch_embed` (the patch projection) + `vit.pos_embed` (grid position embedding);
- texts: `text_embed.token` (token embedding, vocab_size x width) + `text_embed.pos_embed`
  (its own position embedding, max_length x width).

So 1T-CLIP's parameters are CLIPPO's plus the token and text position tables. Text padding is
masked out of every attention and of the pooling (see `clippo.model.token_model`).
"""

from __future__ import annotations

from torch import Tensor, nn

from clippo.model.token_model import TokenEmbedding, TokenModel, encode_sequence

__all__ = ["OneTowerCLIP"]


class OneTowerCLIP(TokenModel):
    """1T-CLIP: `OneTowerCLIP(TokenModelConfig.from_variant("B/16", vocab_size=...), tok)`."""

    architecture = "1t-clip"

    def _build_text(self) -> None:
        cfg = self.config
        self.text_embed = TokenEmbedding(cfg.vocab_size, cfg.max_length, cfg.vit.width)

    def _text_features(self, ids: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        vit = self.vit
        x = vit.norm_pre(self.text_embed(ids))  # norm_pre: Identity in big_vision's tower
        pool = "gap" if vit.attn_pool is None else vit.attn_pool  # the image tower's pooling
        return encode_sequence(x, valid, vit.blocks, vit.norm, pool, vit.grad_checkpointing)

    def _text_head(self) -> nn.Module:
        return self.head
