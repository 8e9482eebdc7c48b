"""The CLIPPO training loop: contrastive pairs through one tower, from one CPU to a GPU cluster.

    result = train(cfg, hooks=[my_eval], data=my_factory)

Data comes from a `DataFactory`: `factory(start_step)` returns an iterator whose k-th batch is
this rank's batch for optimiser step `start_step + k`. Batch k must depend only on (config, k,
rank), so a resumed run sees exactly the data order of an uninterrupted one. A batch is a
`clippo.data.collate.PairCollate` dict (what `TrainData`, built from `cfg.data`, yields) or a
pair (left, right) whose sides are float pixels [b,3,H,W] in [-1,1], uint8 images [b,H,W,3] or
lists of strings (rendered on the device). Both sides go through the same tower.

Hooks are callables `hook(model, step) -> {name: number}` run every `logging.eval_every_steps`
and at the end, with the model in eval mode under no_grad; the application layer passes them in,
so this module never imports `clippo.eval`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import clippo.train.distributed as cdist
from clippo.model.one_tower import CLIPPO
from clippo.train.config import ConfigError, ModelSection, TrainConfig
from clippo.train.data import TrainData, batch_pixels
from clippo.train.log import METRICS_FILE, MetricsLogger, Progress, plot_loss_curve
from clippo.train.optim import build_optimizer, set_lr
from clippo.train.precision import use_bf16
from clippo.train.schedule import build_schedule
from clippo.train.state import (
    TrainerState,
    gather_full_state,
    list_checkpoints,
    load_checkpoint,
    load_optimizer_state,
    resolve_resume,
    rng_state,
    save_checkpoint,
    set_rng_state,
    sigterm_flag,
)
from clippo.train.step import ContrastiveStep

Batch = Mapping[str, Any] | tuple[Any, Any]
DataFactory = Callable[[int], Iterator[Batch]]
Hook = Callable[[nn.Module, int], Mapping[str, Any]]


class NonFiniteLossError(RuntimeError):
    """The loss (or gradient norm) became NaN/inf; `step` is the 0-based step that produced it."""

    def __init__(self, step: int, what: str, value: float) -> None:
        super().__init__(
            f"non-finite {what} ({value}) at step {step}: training stopped; "
            "the last good checkpoint is kept"
        )
        self.step = step


@dataclass(frozen=True)
class TrainResult:
    step: int
    run_dir: Path
    checkpoint: Path | None
    preempted: bool
    metrics: Mapping[str, Any]
    model: CLIPPO  # the trained model (unwrapped; on the training device)


def build_model(m: ModelSection) -> CLIPPO:
    """A freshly initialised CLIPPO, or one whose tower starts from `m.init_from` (I21k npz)."""
    model = CLIPPO(m.model_config())
    if m.init_from:
        if not Path(m.init_from).is_file():
            raise ConfigError(f"model.init_from: no such file {m.init_from!r}")
        from clippo.model.checkpoint import load_image_init

        load_image_init(m.init_from, model)
    return model


def _chunks(side: Any, n: int) -> list[Any]:
    size = len(side) // n
    return [side[i * size : (i + 1) * size] for i in range(n)]


class Trainer:
    """Holds the wrapped model, optimiser and state; `run()` executes the loop."""

    def __init__(self, cfg: TrainConfig, data: DataFactory | None, hooks: Sequence[Hook],
                 model: CLIPPO | None) -> None:  # fmt: skip
        self.cfg, self.hooks = cfg, list(hooks)
        lp = cfg.loop
        self.dist = cdist.init_distributed(device=None if lp.device == "auto" else lp.device)
        self.device, world = self.dist.device, self.dist.world_size
        if lp.batch_size % (world * lp.accum_steps):
            raise ConfigError(
                f"loop.batch_size {lp.batch_size} is not divisible by world size {world} x "
                f"loop.accum_steps {lp.accum_steps}"
            )
        self.local_batch = lp.batch_size // world
        self.bf16 = use_bf16(lp.precision, self.device)
        self.run_dir = Path(cfg.logging.run_dir)
        torch.manual_seed(lp.seed)  # the same init on every rank
        self.state = TrainerState()
        resume = resolve_resume(cfg.checkpoint.resume, self.run_dir)
        if resume is None and list_checkpoints(self.run_dir):  # would interleave with a new run
            raise ConfigError(
                f"logging.run_dir {str(self.run_dir)!r} holds checkpoints of an earlier run: "
                "resume it (--resume auto) or choose another run directory"
            )
        optim_state: dict[str, Any] = {}
        if resume is not None:
            from clippo.model.checkpoint import load_dir

            self.state, optim_state, _ = load_checkpoint(resume)
            model = load_dir(resume).train()
        self.model = (model or build_model(cfg.model)).to(self.device).train()
        self.core = ContrastiveStep(self.model, lp.loss, lp.local_loss).to(self.device)
        if "logit_bias" in optim_state and self.core.logit_bias is not None:
            self.core.logit_bias.data.copy_(optim_state["logit_bias"])
        if cfg.model.grad_checkpointing:
            self.model.vit.set_grad_checkpointing(True)
        self.fsdp = lp.parallel == "fsdp"
        self.module: nn.Module = self.core
        if self.fsdp:
            from torch.distributed.fsdp import fully_shard

            for block in self.model.vit.blocks:
                fully_shard(block)
            fully_shard(self.core)
        elif self.dist.is_distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.module = nn.parallel.DistributedDataParallel(self.core, device_ids=ids)
        if cfg.model.compile:
            self.model.compile()  # in place: parameter names (and checkpoints) stay the same
        self.optimizer = build_optimizer(self.model, cfg.optim)
        if self.core.logit_bias is not None:
            self.optimizer.add_param_group(
                {"params": [self.core.logit_bias], "weight_decay": 0.0, "name": "loss_bias",
                 "lr": cfg.optim.lr, "peak_lr": cfg.optim.lr})  # fmt: skip
        self.schedule = build_schedule(cfg.schedule, lp.steps)
        self.params = [p for p in self.core.parameters() if p.requires_grad]
        if optim_state:
            load_optimizer_state(self.core, self.optimizer, optim_state["optimizer"], self.fsdp)
            set_rng_state(optim_state["rng"])
        if data is None:
            data = TrainData(
                cfg.data, self.model.renderer, self.local_batch, seed=lp.seed,
                rank=self.dist.rank, world_size=world, pin_memory=self.device.type == "cuda",
            )  # fmt: skip
        if self.state.data and hasattr(data, "load_state_dict"):
            data.load_state_dict(self.state.data)  # checks the data setup is unchanged
        self.data = data

    # ---- one optimiser step --------------------------------------------------------------------

    def _sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Gradient all-reduce only on the last micro-batch."""
        if isinstance(self.module, nn.parallel.DistributedDataParallel) and not last:
            return self.module.no_sync()
        if self.fsdp:
            self.module.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def step(self, batch: Batch) -> Tensor:
        """Forward/backward over the batch (accumulating micro-batches) -> detached loss []."""
        n = self.cfg.loop.accum_steps
        left, right = batch_pixels(batch, self.device, self.model.renderer)
        if len(left) != self.local_batch or len(right) != self.local_batch:
            raise ValueError(
                f"data gave a batch of {len(left)}/{len(right)} pairs; expected {self.local_batch}"
            )
        if n == 1:
            with self._sync(True), self._autocast():
                loss = self.module(left, right)
            loss.backward()
            return loss.detach()
        lefts, rights = _chunks(left, n), _chunks(right, n)
        with torch.no_grad(), self._autocast():  # pass 1: every embedding, no activations kept
            cached = [self.module(a, b, embed_only=True) for a, b in zip(lefts, rights)]
        cache = ([c[0] for c in cached], [c[1] for c in cached])
        for i in range(n):  # pass 2: recompute micro-batch i with gradients, rest from cache
            with self._sync(i == n - 1), self._autocast():
                # the last micro-step owns t's gradient: DDP expects every grad when it syncs
                loss = self.module(lefts[i], rights[i], cache=cache, index=i, grad_scale=i == n - 1)
            loss.backward()
            if i == 0:
                first = loss.detach()
        return first

    # ---- checkpoints ---------------------------------------------------------------------------

    def save(self) -> Path | None:
        """Checkpoint the current state (collective under FSDP; rank 0 writes)."""
        model, osd = self.model, None
        if self.fsdp:  # every rank takes part in gathering the full state
            model, osd = gather_full_state(self.core, self.optimizer, self.model.config)
        path = None
        if hasattr(self.data, "state_dict"):
            self.state.data = self.data.state_dict(self.state.step)
        if self.dist.is_main:
            extra: dict[str, Any] = {
                "optimizer": osd if osd is not None else self.optimizer.state_dict(),
                "rng": rng_state(),
            }
            if self.core.logit_bias is not None:
                extra["logit_bias"] = _full(self.core.logit_bias).detach().cpu()
            path = save_checkpoint(
                self.run_dir, self.state, save_model=model.save, optim_state=extra,
                train_config=self.cfg.to_dict(), keep_last=self.cfg.checkpoint.keep_last,
            )  # fmt: skip
            if self.cfg.logging.loss_png and (self.run_dir / METRICS_FILE).exists():
                plot_loss_curve(self.run_dir)
        cdist.barrier()
        return path

    # ---- the loop ------------------------------------------------------------------------------

    def _hooks(self, step: int) -> dict[str, Any]:
        if not self.hooks or not (self.dist.is_main or self.fsdp):
            return {}
        metrics: dict[str, Any] = {}
        self.model.eval()
        with torch.no_grad():
            if self.fsdp:
                self.core.unshard()
            for hook in self.hooks:
                metrics.update(hook(self.model, step))
            if self.fsdp:
                self.core.reshard()
        self.model.train()
        return metrics

    def update(self, batch: Any, stop_requested: bool = False) -> tuple[float, float, bool]:
        """One optimiser step -> (loss, grad norm, any rank asked to stop); raises on NaN/inf
        before the optimiser touches the weights."""
        loss = self.step(batch)
        # one collective per step: the loss (for logging and the NaN check) and the SIGTERM flag
        flags = torch.stack([loss.float(), loss.new_tensor(float(stop_requested))])
        if self.dist.is_distributed:
            torch.distributed.all_reduce(flags)
            flags[0] /= self.dist.world_size
        loss_v, stop = flags.tolist()
        if not math.isfinite(loss_v):
            raise NonFiniteLossError(self.state.step, "loss", loss_v)
        clip = self.cfg.loop.clip_grad_norm or math.inf  # inf: measure the norm, do not clip
        gnorm = float(_full(nn.utils.clip_grad_norm_(self.params, clip)))
        if not math.isfinite(gnorm):
            raise NonFiniteLossError(self.state.step, "gradient norm", gnorm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_v, gnorm, stop > 0

    def run(self) -> TrainResult:
        cfg, st, main = self.cfg, self.state, self.dist.is_main
        total, every, log_every = (
            cfg.loop.steps,
            cfg.checkpoint.every_steps,
            cfg.logging.every_steps,
        )
        resume_step = st.step if st.step else None
        self.logger = MetricsLogger(
            self.run_dir, tensorboard=cfg.logging.tensorboard, enabled=main, resume_step=resume_step
        )
        bar = Progress(total, st.step, enabled=main and cfg.logging.progress)
        data = self.data(st.step)
        last: dict[str, Any] = {}
        ckpt, preempted, losses, skipped = None, False, [], {}
        try:
            with sigterm_flag(cfg.checkpoint.on_sigterm) as term:
                while st.step < total and not preempted:
                    t0 = time.perf_counter()
                    batch = next(data)
                    t_data = time.perf_counter() - t0
                    for k, n in (
                        batch.get("skipped", {}) if isinstance(batch, Mapping) else {}
                    ).items():
                        skipped[k] = skipped.get(k, 0) + n
                    lr = set_lr(self.optimizer, self.schedule(st.step))
                    loss, gnorm, stop = self.update(batch, term[0])
                    st.step += 1
                    st.pairs_seen += cfg.loop.batch_size
                    dt = time.perf_counter() - t0
                    losses.append(loss)
                    bar.update(loss, cfg.loop.batch_size / dt)
                    if st.step % log_every == 0 or st.step == total:
                        last = {
                            "loss": loss, "loss_avg": sum(losses) / len(losses), "lr": lr,
                            "grad_norm": gnorm, "logit_scale": math.exp(float(_full(self.model.t.detach()))),
                            "pairs_per_s": cfg.loop.batch_size / dt, "step_time": dt,
                            "data_time": t_data, "pairs_seen": st.pairs_seen,
                            **{f"skipped/{k}": n for k, n in skipped.items()},
                        }  # fmt: skip
                        losses.clear()
                        self.logger.log(st.step, last)
                    ev = cfg.logging.eval_every_steps
                    if (ev and st.step % ev == 0) or st.step == total:
                        metrics = self._hooks(st.step)
                        if metrics:
                            self.logger.log(st.step, metrics)
                            last = {**last, **metrics}
                    preempted = stop and st.step < total
                    if (every and st.step % every == 0) or st.step == total or preempted:
                        ckpt = self.save()
        finally:
            bar.close()
            self.logger.close()
        return TrainResult(st.step, self.run_dir, ckpt, preempted, last, self.model)


def _full(x: Tensor) -> Tensor:
    """A DTensor (FSDP) -> its full value; plain tensors unchanged."""
    return x.full_tensor() if hasattr(x, "full_tensor") else x


def train(
    cfg: TrainConfig,
    *,
    hooks: Sequence[Hook] = (),
    data: DataFactory | None = None,
    model: CLIPPO | None = None,
) -> TrainResult:
    """Train per `cfg`; `data` replaces the pipeline built from `cfg.data`, `model` the one built
    from `cfg.model` (ignored when resuming). Raises NonFiniteLossError on a NaN/inf loss."""
    return Trainer(cfg, data, hooks, model).run()


__all__ = [
    "Batch",
    "DataFactory",
    "Hook",
    "NonFiniteLossError",
    "TrainResult",
    "ContrastiveStep",
    "Trainer",
    "build_model",
    "use_bf16",
    "train",
]
