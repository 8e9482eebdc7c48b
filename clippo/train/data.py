"""The trainer's data: `TrainConfig.data` -> `BatchMixer` -> DataLoader -> pixels on the device.

`TrainData(cfg.data, ...)` is a `DataFactory` for `clippo.train`: `data(start_step)` iterates
the batches of steps start_step, start_step+1, ... (a pure function of seed, step, rank, world
size and num_workers; see `clippo.data.mixer`). Batches are collated by
`clippo.data.collate.PairCollate` (texts rendered in the workers as uint8, or on the device), or
for a token baseline (CLIP*, 1T-CLIP) by `clippo.data.collate.TokenCollate` (texts tokenised in
the workers with the model's tokenizer). `source_texts` reads the texts a run's tokenizer is
trained on.

Stream-mode sources (`pipe:`/URL shards, or `data.resampled`) resume from recorded positions:
every batch brings its sources' stream cursors from the worker that made it, the iterator keeps
the last one per virtual worker, and `state_dict` gathers them from every rank (a collective:
the trainer calls it on every rank; rank 0 writes the checkpoint) under "streams" -> rank.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist

from clippo.data.collate import PairCollate, TokenCollate, to_device
from clippo.data.loader import mixer_loader
from clippo.data.mixer import BatchMixer, MixedBatch, MixerConfig
from clippo.data.registry import build_source
from clippo.data.sources import (
    ImageTextPair,
    MapSource,
    RandomAccessSource,
    ShardedSource,
    SkipSample,
)
from clippo.model.token_model import MixedSide
from clippo.model.tokenizer import TextTokenizer
from clippo.render.unifont_torch import to_pixels_torch
from clippo.train.config import ConfigError, DataConfig, SourceConfig
from clippo.train.distributed import is_dist

_POSITIONS = "stream_positions"  # the key that carries a batch's cursors from the worker

SYNTHETIC_KINDS = ("synthetic", "synthetic_paraphrase")  # clippo.data.synthetic (demo corpus)


def side_pixels(side: Any, device: torch.device, renderer: Any) -> torch.Tensor:
    """One side of a (left, right) batch -> model input on `device`: float pixels [b,3,H,W] as
    float32, uint8 images [b,H,W,3] converted to float32 [b,3,H,W] in [-1,1], a list of strings
    rendered there; integer token ids [b,L] pass through unchanged (for token-based towers)."""
    if isinstance(side, list | tuple):
        return renderer.render_torch(list(side), device=device)
    x = torch.as_tensor(side).to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        return to_pixels_torch(x)
    if not x.is_floating_point():
        return x
    return x.float()


def batch_pixels(
    batch: Any, device: torch.device, renderer: Any
) -> tuple[torch.Tensor | MixedSide, torch.Tensor]:
    """A PairCollate dict or a (left, right) pair -> (left, right) float32 [b,3,H,W] on device;
    a TokenCollate dict -> its "left_input" (pixels, ids or a MixedSide) and "right_input"
    (ids [b,L]) on device."""
    if isinstance(batch, Mapping):
        out = to_device(batch, device, renderer, non_blocking=True)
        if "right_input" in out:
            return out["left_input"], out["right_input"]
        return out["left_pixels"], out["right_pixels"]
    left, right = batch
    return side_pixels(left, device, renderer), side_pixels(right, device, renderer)


def build_source_from_config(spec: SourceConfig, image_size: int, key: str, images: bool) -> Any:
    """One SourceConfig -> a mixer source; errors name the config key."""
    options = dict(spec.options)
    try:
        if spec.kind in SYNTHETIC_KINDS:
            from clippo.data import synthetic

            split = options.pop("split", "train")
            length = options.pop("length", 1_000_000)
            scfg = synthetic.SyntheticConfig.from_dict({"image_size": image_size, **options})
            if spec.kind == "synthetic":
                ds: Any = synthetic.SyntheticImageText(scfg, split, length)
            else:
                ds = synthetic.SyntheticTextPairs(scfg, length)
            return MapSource(ds, name=spec.kind)
        if images:  # decode straight to the model's input size
            options.setdefault("image_size", image_size)
        return build_source(spec.kind, spec.path, options)
    except (ValueError, TypeError, OSError) as e:
        raise ConfigError(f"{key} ({spec.kind} {spec.path!r}): {e}") from None


def _texts_of(source: Any, key: str) -> Iterator[list[str]]:
    """A mixer source's samples in stored order -> the texts of each (an image/text pair's
    caption, both sides of a text pair); bad samples are skipped."""

    def texts(sample: Any) -> list[str]:
        if isinstance(sample, ImageTextPair):
            return [sample[1]]
        return [sample[0], sample[1]]

    if isinstance(source, RandomAccessSource):
        for i in range(len(source)):
            try:
                yield texts(source.load(i, i))
            except SkipSample:
                continue
        return
    if isinstance(source, ShardedSource):
        for unit in range(source.num_units()):
            records = source.iter_unit(unit)
            try:
                for j, record in enumerate(records):
                    try:
                        yield texts(source.decode(record, j))
                    except SkipSample:
                        continue
            finally:
                close = getattr(records, "close", None)
                if close is not None:
                    close()
        return
    raise ConfigError(f"{key}: a {type(source).__name__} is not a source the tokenizer can read")


def source_texts(data: DataConfig, image_size: int, limit: int) -> list[str]:
    """At most `limit` training texts of `data`'s own sources, to train a tokenizer on: the
    captions of `data.image_text` and both sides of `data.text_pairs`, each source read in its
    stored order (not shuffled), the sources in config order, each given an equal share of
    `limit` (a source that runs out leaves its rest to the later ones). Deterministic: every rank
    reads the same texts, so every rank trains the same (BPE) tokenizer."""
    specs = [
        (f"data.{g}.{i}", s, g)
        for g in ("image_text", "text_pairs")
        for i, s in enumerate(getattr(data, g))
    ]
    if not specs:
        raise ConfigError("data: no sources to train the tokenizer on")
    out: list[str] = []
    for n, (key, spec, group) in enumerate(specs):
        want = len(out) + -(-(limit - len(out)) // (len(specs) - n))  # an equal share of the rest
        source = build_source_from_config(spec, image_size, key, group == "image_text")
        try:
            for texts in _texts_of(source, key):
                out.extend(texts)
                if len(out) >= want:
                    break
        except (OSError, ValueError) as e:
            raise ConfigError(f"{key} ({spec.kind} {spec.path!r}): {e}") from None
    return out[:limit]


class _WithPositions:
    """A collate, plus the batch's stream cursors under `_POSITIONS` (picklable for workers)."""

    def __init__(self, collate: PairCollate | TokenCollate) -> None:
        self.collate = collate

    def __call__(self, batch: MixedBatch) -> dict[str, Any]:
        out = self.collate(batch)
        out[_POSITIONS] = batch.positions
        return out


class TrainData:
    """DataFactory over a BatchMixer; also records/checks the data position for resuming."""

    def __init__(
        self,
        data: DataConfig,
        renderer: Any,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
        ink_patch_size: int | None = None,
        tokenizer: TextTokenizer | None = None,
        image_size: int | None = None,
    ) -> None:
        """ink_patch_size: the workers also return the texts' ink masks at this patch size
        (for a model with `ink_only_text`; None: the step computes them on the device).
        tokenizer: a token baseline's; the workers then tokenise texts (`TokenCollate`) instead
        of rendering them, `renderer` is None and `image_size` the photos' size."""
        if tokenizer is None:
            size = renderer.config.image_size
        elif image_size is None:
            raise ValueError("TrainData with a tokenizer needs the image_size")
        else:
            size = image_size
        groups = {}
        for group in ("image_text", "text_pairs"):
            groups[group] = [
                (
                    build_source_from_config(s, size, f"data.{group}.{i}", group == "image_text"),
                    s.weight,
                )
                for i, s in enumerate(getattr(data, group))
            ]
        try:
            self.mixer = BatchMixer(
                MixerConfig(
                    batch_size,
                    data.text_pair_fraction,
                    seed,
                    resampled=data.resampled,
                    shuffle_buffer=data.shuffle_buffer,
                ),
                groups["image_text"],
                groups["text_pairs"],
                rank=rank,
                world_size=world_size,
            )
        except ValueError as e:
            raise ConfigError(f"data: {e}") from None
        # uint8 from the workers: 4x less to pass between processes and to copy to the device
        self.collate: PairCollate | TokenCollate
        if tokenizer is not None:
            self.collate = TokenCollate(tokenizer, size)
        else:
            self.collate = PairCollate(
                renderer,
                render_on=data.render_on,
                pixel_format="uint8",
                ink_patch_size=ink_patch_size,
            )
        self.num_workers, self.prefetch = data.num_workers, data.prefetch_factor
        self.pin_memory = pin_memory
        self.rank = rank
        # virtual worker -> label -> cursor after that worker's last batch taken by the trainer
        self.positions: dict[int, dict[str, list[int]]] = {}

    def __call__(self, start_step: int) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {"pin_memory": self.pin_memory}
        if self.num_workers:
            kwargs["prefetch_factor"] = self.prefetch
        if not self.mixer.has_streams:
            loader = mixer_loader(
                self.mixer,
                self.collate,
                start_step=start_step,
                num_workers=self.num_workers,
                **kwargs,
            )
            return iter(loader)
        loader = mixer_loader(
            self.mixer,
            _WithPositions(self.collate),
            start_step=start_step,
            num_workers=self.num_workers,
            **kwargs,
        )
        return self._recording(iter(loader))

    def _recording(self, batches: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """The batches, keeping each one's cursors as the trainer takes it (so that after k
        batches the recorded positions are those after batch k-1 of every virtual worker)."""
        workers = max(self.num_workers, 1)
        for batch in batches:
            self.positions[int(batch["step"]) % workers] = batch.pop(_POSITIONS)
            yield batch

    def state_dict(self, step: int) -> dict[str, Any]:
        """The data position after `step` batches; with stream-mode sources a collective (every
        rank's cursors are gathered so that rank 0's checkpoint holds them all)."""
        out = {**self.mixer.state_dict(step), "num_workers": self.num_workers}
        if self.mixer.has_streams:
            mine = {str(w): p for w, p in self.positions.items()}
            ranks: list[Any] = [mine]
            if is_dist():
                ranks = [None] * dist.get_world_size()
                dist.all_gather_object(ranks, mine)
            out["streams"] = {str(r): p for r, p in enumerate(ranks)}
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Raises ConfigError when the data setup differs from the checkpoint's."""
        saved_workers = state.get("num_workers", self.num_workers)
        sources = (*self.mixer.image_sources, *self.mixer.text_sources)
        if saved_workers != self.num_workers and any(isinstance(s, ShardedSource) for s in sources):
            raise ConfigError(
                f"data.num_workers is {self.num_workers} but the checkpoint used {saved_workers}: "
                "with sharded sources the data order depends on it"
            )
        mixer_state = {k: v for k, v in state.items() if k not in ("num_workers", "streams")}
        mine = dict(state.get("streams", {})).get(str(self.rank), {})
        if mine:
            mixer_state["positions"] = mine
        try:
            self.mixer.load_state_dict(mixer_state)
        except ValueError as e:
            raise ConfigError(f"data: {e}") from None
        # carried over until each virtual worker makes its first batch of the resumed run
        self.positions = {int(w): dict(p) for w, p in mine.items()}
