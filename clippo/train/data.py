"""The trainer's data: `TrainConfig.data` -> `BatchMixer` -> DataLoader -> pixels on the device.

`TrainData(cfg.data, ...)` is a `DataFactory` for `clippo.train`: `data(start_step)` iterates
the batches of steps start_step, start_step+1, ... (a pure function of seed, step, rank, world
size and num_workers; see `clippo.data.mixer`). Batches are collated by
`clippo.data.collate.PairCollate` (texts rendered in the workers as uint8, or on the device).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

from clippo.data.collate import PairCollate, to_device
from clippo.data.loader import mixer_loader
from clippo.data.mixer import BatchMixer, MixerConfig
from clippo.data.registry import build_source
from clippo.data.sources import MapSource, ShardedSource
from clippo.render.unifont_torch import to_pixels_torch
from clippo.train.config import ConfigError, DataConfig, SourceConfig

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
) -> tuple[torch.Tensor, torch.Tensor]:
    """A PairCollate dict or a (left, right) pair -> (left, right) float32 [b,3,H,W] on device."""
    if isinstance(batch, Mapping):
        out = to_device(batch, device, renderer, non_blocking=True)
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
    ) -> None:
        size = renderer.config.image_size
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
                MixerConfig(batch_size, data.text_pair_fraction, seed),
                groups["image_text"],
                groups["text_pairs"],
                rank=rank,
                world_size=world_size,
            )
        except ValueError as e:
            raise ConfigError(f"data: {e}") from None
        # uint8 from the workers: 4x less to pass between processes and to copy to the device
        self.collate = PairCollate(renderer, render_on=data.render_on, pixel_format="uint8")
        self.num_workers, self.prefetch = data.num_workers, data.prefetch_factor
        self.pin_memory = pin_memory

    def __call__(self, start_step: int) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {"pin_memory": self.pin_memory}
        if self.num_workers:
            kwargs["prefetch_factor"] = self.prefetch
        loader = mixer_loader(
            self.mixer, self.collate, start_step=start_step, num_workers=self.num_workers, **kwargs
        )
        return iter(loader)

    def state_dict(self, step: int) -> dict[str, Any]:
        return {**self.mixer.state_dict(step), "num_workers": self.num_workers}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Raises ConfigError when the data setup differs from the checkpoint's."""
        saved_workers = state.get("num_workers", self.num_workers)
        sources = (*self.mixer.image_sources, *self.mixer.text_sources)
        if saved_workers != self.num_workers and any(isinstance(s, ShardedSource) for s in sources):
            raise ConfigError(
                f"data.num_workers is {self.num_workers} but the checkpoint used {saved_workers}: "
                "with sharded sources the data order depends on it"
            )
        try:
            self.mixer.load_state_dict({k: v for k, v in state.items() if k != "num_workers"})
        except ValueError as e:
            raise ConfigError(f"data: {e}") from None
