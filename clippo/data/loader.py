"""The mixer's batches through a torch DataLoader (the one place the data pipeline meets torch's
loader; `clippo.data.mixer` itself stays torch-free)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clippo.data.mixer import BatchMixer, MixedBatch

__all__ = ["MixerDataset", "mixer_loader"]


class MixerDataset(IterableDataset):
    """The mixer's batches as a torch IterableDataset (use DataLoader(batch_size=None)).

    With W DataLoader workers, worker w makes steps start+w, start+w+W, ...; the DataLoader
    returns them round-robin, i.e. in step order."""

    def __init__(
        self, mixer: BatchMixer, start_step: int = 0, stop_step: int | None = None
    ) -> None:
        self.mixer, self.start_step, self.stop_step = mixer, start_step, stop_step

    def __iter__(self) -> Iterator[MixedBatch]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        return self.mixer.batches(
            self.start_step, stop_step=self.stop_step, worker=worker, num_workers=num_workers
        )


def mixer_loader(
    mixer: BatchMixer,
    collate: Callable[[MixedBatch], Any],
    *,
    start_step: int | None = None,
    stop_step: int | None = None,
    num_workers: int = 0,
    **dataloader_kwargs: Any,
) -> DataLoader:
    """A DataLoader yielding `collate(batch)` for steps start_step, start_step+1, ...
    (default start: the mixer's `start_step`, set by `load_state_dict` when resuming)."""
    first = mixer.start_step if start_step is None else start_step
    return DataLoader(
        MixerDataset(mixer, first, stop_step),
        batch_size=None,
        num_workers=num_workers,
        # torch's stubs type collate_fn as taking a list of samples; with batch_size=None it
        # gets each item as it is (here a MixedBatch)
        collate_fn=cast("Callable[[list[Any]], Any]", collate),
        **dataloader_kwargs,
    )
