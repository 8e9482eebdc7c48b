"""CLIP*: two towers, CLIPPO's image ViT and a text transformer of the same configuration
(big_vision `proj/image_text/two_towers.py` with `text_transformer.py`), the paper's first
baseline.

Image side: CLIPPO's tower exactly (`vit`, `head`, `t`; see `clippo.model.token_model`).
Text side (`text`; nothing shared with the image side):
- `text.embed`: token embedding (vocab_size x width) + learned position embedding
  (max_length x width), big_vision's init;
- `text.blocks`, `text.norm`: its own encoder blocks and final LayerNorm, of the image ViT's
  configuration (width, depth, heads, MLP size: built by the same `vit_tower`, initialised as
  CLIPPO's);
- pooling: the end-of-sequence token (below), no parameters;
- `text.head`: its own projection to the embedding size.

Pooling: the last real token, which is always the `</s>` that `TextTokenizer` closes every text
with. This is big_vision's text-tower default, `pool_type="last"`: there texts are padded *with*
EOS and nothing is masked ("sticky EOS"), so the last position is an EOS that has attended to the
whole text. We mask padding (an embedding is then the same at any padded length, and batches can
be padded only as far as their longest text), so "last" becomes the last *unmasked* position,
the same EOS token, found per text. We keep big_vision's choice rather than MAP (CLIPPO's image
pooling) because it is what the two-tower baselines use and it has no parameters: at B/16 with a
32k vocabulary CLIP* then has 203.7M parameters, against the paper's 203M (a MAP head on the text
side would add 7.1M, 210.8M).
"""

from __future__ import annotations

from torch import Tensor, nn

from clippo.model.one_tower import CLIPPO
from clippo.model.token_model import TokenEmbedding, TokenModel, encode_sequence

__all__ = ["CLIPStar", "TextTower"]


class TextTower(nn.Module):
    """Token ids [B, L] + valid [B, L] -> (encoded [B, L, W], pooled [B, W], the `</s>` token's
    features); `head` projects the pooled features. Blocks, norm and head come from a freshly
    initialised CLIPPO of the same configuration (`vit_tower` + big_vision's init, written once
    in `CLIPPO`)."""

    def __init__(self, model: CLIPPO, vocab_size: int, max_length: int) -> None:
        super().__init__()
        self.embed = TokenEmbedding(vocab_size, max_length, model.config.vit.width)
        self.blocks = model.vit.blocks
        self.norm = model.vit.norm
        self.head = model.head

    def forward(
        self, ids: Tensor, valid: Tensor, grad_checkpointing: bool = False
    ) -> tuple[Tensor, Tensor]:
        x = self.embed(ids)
        return encode_sequence(x, valid, self.blocks, self.norm, "last", grad_checkpointing)


class CLIPStar(TokenModel):
    """CLIP*: CLIPPO's image tower + a separate text transformer of the same configuration.

    `CLIPStar(TokenModelConfig.from_variant("B/16", vocab_size=tok.vocab_size), tok)`.
    """

    architecture = "clip-star"

    def _build_text(self) -> None:
        # a second CLIPPO of the image tower's config supplies the text blocks, norm and head,
        # initialised as CLIPPO's; its patch and position embeddings, MAP head and t are dropped
        donor = CLIPPO(self.config.image_config())
        self.text = TextTower(donor, self.config.vocab_size, self.config.max_length)

    def _text_features(self, ids: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        # one switch for the model: the text blocks follow the image tower's grad checkpointing
        return self.text(ids, valid, self.vit.grad_checkpointing)

    def _text_head(self) -> nn.Module:
        return self.text.head
