"""The contract every architecture keeps (CLIPPO, CLIP*, 1T-CLIP), written once.

- the embedding rule: a pooled representation through a projection `head`, then
  `z / (||z||_2 + 1e-8)` (`project`, `l2_normalize`), with big_vision's named intermediates;
- `ContrastiveModel`, the base of `CLIPPO` and `TokenModel`: the logit scale exp(t), texts
  encoded in batches (`encode_texts`), the `forward` dict ("zimg", "ztxt", "logit_scale",
  "logits", "img/...", "txt/...") and zero-shot classification by a prompt ensemble.

The base holds no parameters and no buffers: state-dict keys are the subclasses' own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from clippo.prompts import fill

__all__ = [
    "NORM_EPS",
    "ContrastiveModel",
    "EmbeddingConfig",
    "l2_normalize",
    "project",
    "prompt_ensemble",
]

NORM_EPS = 1e-8  # added to the L2 norm, as big_vision's one_tower does

# what one side of a model's `forward` takes: pixels or a `TowerInput` (CLIPPO), pixels, token
# ids or a `MixedSide` (the token baselines)
Side = TypeVar("Side")


def _unit(x: Tensor) -> tuple[Tensor, Tensor]:
    """x [..., D] -> (norm [..., 1], x / (norm + 1e-8))."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return norm, x / (norm + NORM_EPS)


def l2_normalize(x: Tensor) -> Tensor:
    """`x / (||x||_2 + 1e-8)` over the last axis (not `F.normalize`, which clamps the norm)."""
    return _unit(x)[1]


def project(
    head: nn.Module,
    pre_logits: Tensor,
    encoded: Tensor,
    prefix: str,
    out: dict[str, Tensor] | None,
) -> Tensor:
    """pooled [B, W] -> `head` -> normalised embedding [B, D].

    With `out`, records big_vision's named intermediates under `prefix` ("img" or "txt"):
    "encoded" (the tower's tokens [B, L, W]), "head_input" and "pre_logits" (the pooled [B, W]),
    "logits" (the projection [B, D]), "norm" [B, 1] and "normalized" [B, D].
    """
    logits = head(pre_logits)  # [B, D]
    norm, z = _unit(logits)
    if out is not None:
        out[f"{prefix}/encoded"] = encoded
        out[f"{prefix}/head_input"] = pre_logits
        out[f"{prefix}/pre_logits"] = pre_logits
        out[f"{prefix}/logits"] = logits
        out[f"{prefix}/norm"] = norm
        out[f"{prefix}/normalized"] = z
    return z


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


class EmbeddingConfig(Protocol):
    """What the contract reads of a model's config: the embedding size."""

    @property
    def out_dim(self) -> int: ...


class ContrastiveModel(nn.Module, ABC, Generic[Side]):
    """The base of every architecture: a tower (or two) embedding images and texts into one
    space of `config.out_dim` unit vectors, compared with the logit scale exp(`t`).

    Subclasses own `t` (the log logit scale, a [1] parameter) and `config`, and define
    `encode` (pixels [B,3,H,W] in [-1,1] -> [B,D]) and `encode_texts` (strings -> [B,D], by way
    of `_encode_text_batches`); `forward` assembles its dict with `_pair_outputs`, from one side
    at a time (a `Side`: what the subclass's `forward` takes for `images` or `texts`).
    """

    t: nn.Parameter
    config: EmbeddingConfig

    @abstractmethod
    def encode(self, pixels: Tensor) -> Tensor:
        """Float pixels [B,3,H,W] in [-1,1] -> [B,D] unit vectors (what `classify` embeds)."""

    @abstractmethod
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        """List of B strings -> [B,D] unit vectors (what `class_embeddings` embeds)."""

    @property
    def logit_scale(self) -> Tensor:
        """exp(t), the scale applied to cosine similarities (a 0-d tensor)."""
        return self.t.exp()[0]

    def _encode_text_batches(
        self,
        texts: Sequence[str],
        batch_size: int,
        encode_batch: Callable[[list[str]], Tensor],
    ) -> Tensor:
        """B strings -> [B,D]: `encode_batch` (at most `batch_size` strings -> [b,D]) on each
        consecutive batch, concatenated; no strings give an empty [0, out_dim]."""
        if isinstance(texts, str | bytes):
            raise TypeError("encode_texts takes a list of strings, not a single string")
        texts = list(texts)
        if not texts:
            return torch.empty(0, self.config.out_dim, device=self.t.device)
        chunks = [encode_batch(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        return torch.cat(chunks)

    def _pair_outputs(
        self,
        images: Side | None,
        texts: Side | None,
        intermediates: bool,
        tower: Callable[[Side, str, dict[str, Tensor] | None], Tensor],
    ) -> dict[str, Tensor]:
        """The `forward` dict: "zimg" [Bi,D] = tower(images, "img", ...), "ztxt" [Bt,D] =
        tower(texts, "txt", ...) (for the sides given, images first), "logit_scale" [],
        "logits" [Bi,Bt] (both given); `tower` records its named intermediates ("img/...",
        "txt/...") in the dict it is passed, which is the output with `intermediates=True`."""
        if images is None and texts is None:
            raise ValueError(f"{type(self).__name__}.forward needs images, texts or both")
        out: dict[str, Tensor] = {}
        extra = out if intermediates else None
        if images is not None:
            out["zimg"] = tower(images, "img", extra)
        if texts is not None:
            out["ztxt"] = tower(texts, "txt", extra)
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
