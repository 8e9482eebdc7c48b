"""The CLIPPO training loop: contrastive pairs through one tower, from one CPU to a GPU cluster.

    result = train(cfg, hooks=[my_eval], data=my_factory)

Data comes from a `DataFactory`: `factory(start_step)` returns an iterator whose k-th batch is
this rank's batch for optimiser step `start_step + k`. Batch k must depend only on (config, k,
rank), so a resumed run sees exactly the data order of an uninterrupted one. A batch is a
`clippo.data.collate.PairCollate` dict (what `TrainData`, built from `cfg.data`, yields) or a
pair (left, right) whose sides are float pixels [b,3,H,W] in [-1,1], uint8 images [b,H,W,3] or
lists of strings (rendered on the device). Both sides go through the same tower.

`cfg.model.architecture` chooses the model (`clippo.model.architectures`): CLIPPO, or one of the
paper's token baselines, CLIP* and 1T-CLIP. For those the trainer first gets a tokenizer (the
file `model.tokenizer`, or one trained on the run's own texts, `clippo.train.data.source_texts`;
a resumed run takes the checkpoint's), and the workers tokenise texts instead of rendering them
(`clippo.data.collate.TokenCollate`); the loss, steps, accumulation and checkpoints are the same.

What is trained per batch is a `TrainStep` (`clippo.train.step`): by default the contrastive
step built from `cfg.loop`; `train(cfg, step=factory)` trains another one over the same loop,
optimiser, schedule, precision, checkpoints and DDP/FSDP wrapping, e.g. a
`clippo.train.task_step.TaskStep` (tower + task head) over (images, targets) batches.

Hooks are callables `hook(model, step) -> {name: number}` run every `logging.eval_every_steps`
and at the end, with the model in eval mode under no_grad; the application layer passes them in,
so this module never imports `clippo.eval`. The validation loss (`cfg.validation`: the training
loss on held-out batches, logged as `val/loss`) is the trainer's own.

Precision (`clippo.train.precision`): bf16 or fp16 autocast, or float32. Under fp16 a gradient
scaler multiplies each micro-batch's loss before backward and unscales the accumulated gradient
once per optimiser step, before clipping; a step whose gradient holds inf/NaN is skipped (the
weights and the optimiser state stay as they were, the schedule and the data move on) and the
scale halves. Inf/NaN at a scale of 1 or less is a real divergence: NonFiniteLossError.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

import clippo.train.distributed as cdist
from clippo.model.architectures import AnyModel, architecture_of
from clippo.model.architectures import build_model as build_architecture
from clippo.model.bigvision import CheckpointError
from clippo.model.checkpoint import load_dir, load_image_init
from clippo.model.one_tower import CLIPPO
from clippo.model.token_model import TokenModel
from clippo.model.tokenizer import TextTokenizer
from clippo.train.config import (
    ConfigError,
    DataConfig,
    LoopConfig,
    ModelSection,
    TrainConfig,
)
from clippo.train.data import TrainData, source_texts
from clippo.train.log import (
    METRICS_FILE,
    MetricsLogger,
    Progress,
    plot_loss_curve,
    require_wandb,
)
from clippo.train.loss import ContrastiveLoss
from clippo.train.optim import build_optimizer, set_lr
from clippo.train.precision import PrecisionError, check_precision, choose_precision, grad_scaler
from clippo.train.schedule import build_schedule
from clippo.train.state import (
    CHECKPOINTS,
    Checkpoint,
    TrainerState,
    check_resume_config,
    check_writable,
    gather_full_state,
    load_checkpoint,
    load_optimizer_state,
    resolve_resume,
    rng_state,
    save_checkpoint,
    set_rng_state,
    sigterm_flag,
    step_dirs,
)
from clippo.train.step import (
    CachedLoss,
    ContrastiveStep,
    Embed,
    Loss,
    TrainStep,
    full_value,
)

if TYPE_CHECKING:
    from torch.distributed.fsdp import FSDPModule

Batch = Mapping[str, Any] | tuple[Any, Any]
DataFactory = Callable[[int], Iterator[Batch]]
Hook = Callable[[nn.Module, int], Mapping[str, Any]]
# (the model to train, the config) -> the step; called once, after the model is on the device.
# The model is a CLIPPO, or a token baseline (CLIP*, 1T-CLIP) for the contrastive step.
StepFactory = Callable[[Any, TrainConfig], TrainStep]


GRAD_SCALER = "grad_scaler"  # the fp16 scaler's state in the checkpoint's optimizer.json
SKIPPED = "fp16_skipped_steps"  # TrainerState.extra: steps skipped for inf/NaN gradients
WANDB_ID = "wandb_id"  # TrainerState.extra: the W&B run a resumed run continues


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
    # the trained model (unwrapped; on the training device): an `AnyModel`, typed Any so that a
    # caller that trained a CLIPPO (a task step, fine-tuning) uses it as one without a cast
    model: Any


def run_tokenizer(m: ModelSection, data: DataConfig) -> TextTokenizer:
    """A token baseline's tokenizer for a new run: the file `m.tokenizer` (padded to
    `m.text_max_length`), or BPE trained on the first `m.tokenizer_texts` texts of `data`'s
    sources (deterministic: every rank trains the same one)."""
    if m.tokenizer:
        try:
            return TextTokenizer.from_file(m.tokenizer, max_length=m.text_max_length)
        except (OSError, ValueError) as e:
            raise ConfigError(f"model.tokenizer: {e}") from None
    texts = source_texts(data, m.image_size, m.tokenizer_texts)
    try:
        return TextTokenizer.train(texts, vocab_size=m.vocab_size, max_length=m.text_max_length)
    except ValueError as e:
        raise ConfigError(f"model.tokenizer: training on {len(texts)} data texts: {e}") from None


def build_model(m: ModelSection, tokenizer: TextTokenizer | None = None) -> AnyModel:
    """A freshly initialised model of `m.architecture`: a CLIPPO (its tower from `m.init_from`,
    an I21k npz, when set), or a token baseline reading `tokenizer` (required then)."""
    if m.reads_tokens:
        if tokenizer is None:
            raise ConfigError(
                f"model.architecture {m.architecture!r} reads tokens: it needs a tokenizer"
            )
        config = m.token_model_config(tokenizer.vocab_size)
        return build_architecture(m.architecture, config, tokenizer)
    model = CLIPPO(m.model_config())
    if m.init_from:
        if not Path(m.init_from).is_file():
            raise ConfigError(f"model.init_from: no such file {m.init_from!r}")
        load_image_init(m.init_from, model)
    return model


def restore_or_build_model(
    section: ModelSection,
    given: AnyModel | None,
    checkpoint: Checkpoint | None,
    data: DataConfig | None = None,
) -> AnyModel:
    """The model to train: the checkpoint's when resuming (`given` is then ignored; a token
    baseline comes with the tokenizer saved beside it, never retrained), else `given`, else a new
    one built from `section` (a token baseline's tokenizer from `run_tokenizer` over `data`)."""
    if checkpoint is not None:
        model = load_dir(checkpoint.path)
        found = architecture_of(model)
        if found != section.architecture:  # the folder of another architecture's `save`
            raise CheckpointError(
                f"{checkpoint.path}: holds a {found!r} model; this run's model.architecture is "
                f"{section.architecture!r}"
            )
        return model
    if given is not None:
        # (a given CLIPPO may be a subclass, so this compares the token models' names only)
        name = given.architecture if isinstance(given, TokenModel) else "clippo"
        if name != section.architecture:
            raise ConfigError(
                f"the model given is a {name!r} model; model.architecture is "
                f"{section.architecture!r}"
            )
        return given
    if not section.reads_tokens:
        return build_model(section)
    if data is None:
        raise ConfigError("a token baseline needs the data section to train its tokenizer")
    return build_model(section, run_tokenizer(section, data))


def local_batch_size(loop: LoopConfig, world_size: int) -> int:
    """This rank's pairs per optimiser step: `loop.batch_size` must split evenly over the ranks
    and then over `loop.accum_steps` micro-batches."""
    if loop.batch_size % (world_size * loop.accum_steps):
        raise ConfigError(
            f"loop.batch_size {loop.batch_size} is not divisible by world size {world_size} x "
            f"loop.accum_steps {loop.accum_steps}"
        )
    return loop.batch_size // world_size


def contrastive_step(model: AnyModel, cfg: TrainConfig) -> ContrastiveStep:
    """The default step: `cfg.loop.loss` over pairs through the one tower (the sigmoid loss
    learns its bias)."""
    lp = cfg.loop
    loss = ContrastiveLoss(
        lp.loss, gather=True, local_loss=lp.local_loss, learn_bias=lp.loss == "sigmoid"
    )
    return ContrastiveStep(model, loss)


def _chunks(side: Any, n: int) -> list[Any]:
    size = len(side) // n
    return [side[i * size : (i + 1) * size] for i in range(n)]


def _under(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of a state dict below `prefix`, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


class Trainer:
    """Holds the wrapped model, optimiser and state; `run()` executes the loop.

    Built in this order: the devices and the batch split, a check that every output folder is
    writable, the checkpoint to resume (if any, checked against this config), the model (restored
    or built), the training step (model + loss) wrapped for DDP/FSDP, the optimiser and schedule
    (their state restored), then the data (repositioned).

    allow_legacy_pickle: let a checkpoint written before the manifest (optimizer.pt, a pickle)
    resume; a keyword, never a config key (`clippo.train.state`).
    step: builds the training step from the model and the config (default: `contrastive_step`).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        data: DataFactory | None,
        hooks: Sequence[Hook],
        model: AnyModel | None,
        *,
        allow_legacy_pickle: bool = False,
        step: StepFactory = contrastive_step,
    ) -> None:
        self.cfg, self.hooks = cfg, list(hooks)
        self.make_step = step
        self.allow_legacy_pickle = allow_legacy_pickle
        lp = cfg.loop
        self.dist = cdist.init_distributed(device=None if lp.device == "auto" else lp.device)
        self.device = self.dist.device
        self.local_batch = local_batch_size(lp, self.dist.world_size)
        # chosen from the flag and the processor (never timed): the same run gets the same choice
        self.precision = choose_precision(lp.precision, self.device)
        try:  # the config checked what it could; the device is known only now
            check_precision(self.precision.name, self.device.type, lp.parallel)
        except PrecisionError as e:
            raise ConfigError(str(e)) from None
        self.bf16 = self.precision.bf16
        # fp16 only; a disabled scaler passes everything through unchanged
        self.scaler = grad_scaler(self.precision, self.device)
        # the clamp on t = log(logit scale), after every optimiser step (None: no clamp)
        self.max_t = math.log(lp.max_logit_scale) if lp.max_logit_scale else None
        self.run_dir = Path(cfg.logging.run_dir)
        if self.dist.is_main:  # before any work: not at the first save, every_steps steps in
            outputs = [self.run_dir, self.run_dir / CHECKPOINTS]
            if cfg.logging.tensorboard:
                outputs.append(self.run_dir / "tensorboard")  # MetricsLogger's folder
            check_writable(outputs)
            if cfg.logging.wandb.enabled:
                require_wandb()  # now, not after the model is built
        torch.manual_seed(lp.seed)  # the same init on every rank

        resume = self._checkpoint_to_resume()
        self.state = resume.state if resume is not None else TrainerState()
        self.model: AnyModel = restore_or_build_model(cfg.model, model, resume, cfg.data)
        self.model = self.model.to(self.device).train()
        self.core = self._training_step(resume)
        self.fsdp = lp.parallel == "fsdp"
        self.module = self._wrap()
        self.optimizer = self._build_optimizer()
        self.schedule = build_schedule(cfg.schedule, lp.steps)
        # clipped as one set, the loss's first: the order of the norm's float sum that runs from
        # before the loss owned the bias had, so resuming their checkpoints stays bitwise exact
        self.params = [
            p for m in (self.core.loss, self.model) for p in m.parameters() if p.requires_grad
        ]
        if resume is not None:
            load_optimizer_state(self.core, self.optimizer, resume.optim["optimizer"], self.fsdp)
            set_rng_state(resume.optim["rng"])
            # a run resumed in fp16 from a checkpoint of another precision starts a fresh scale
            if self.scaler.is_enabled() and resume.optim.get(GRAD_SCALER):
                self.scaler.load_state_dict(resume.optim[GRAD_SCALER])
        self.data = self._position_data(data)
        self.validation = self._validation_data()

    # ---- building, in the order of __init__ ----------------------------------------------------

    def _checkpoint_to_resume(self) -> Checkpoint | None:
        """The checkpoint named by `checkpoint.resume` (verified; with "auto" the newest
        complete one), its model and optimiser sections equal to this config's; refuses to start
        a fresh run in a run directory that holds checkpoints (the two runs' checkpoints would
        interleave)."""
        resume = self.cfg.checkpoint.resume
        path = resolve_resume(
            resume,
            self.run_dir,
            allow_legacy_pickle=self.allow_legacy_pickle,
            report=self.dist.is_main,
        )
        if path is None:
            if not resume and step_dirs(self.run_dir):
                raise ConfigError(
                    f"logging.run_dir {str(self.run_dir)!r} holds checkpoints of an earlier run: "
                    "resume it (--resume auto) or choose another run directory"
                )
            return None
        check_resume_config(self.cfg, path)
        return load_checkpoint(path, allow_legacy_pickle=self.allow_legacy_pickle)

    def _training_step(self, resume: Checkpoint | None) -> TrainStep:
        """Model + loss on the device; the loss owns the parameters outside the model (the
        sigmoid loss's bias, a task head), restored here, before any sharding."""
        core = self.make_step(self.model, self.cfg).to(self.device)
        if resume is not None:
            try:
                core.loss.load_state_dict(resume.loss)
            except RuntimeError as e:
                what = f"loop.loss={self.cfg.loop.loss!r}"
                if not isinstance(core, ContrastiveStep):
                    what = f"this run's {type(core).__name__}"
                raise ConfigError(
                    f"checkpoint {str(resume.path)!r}: its loss state {sorted(resume.loss)} does "
                    f"not fit {what}: {e}"
                ) from None
        return core

    def _wrap(self) -> nn.Module:
        """The module the loop calls: the step itself (sharded in place under FSDP) or its DDP
        wrapper. Gradient checkpointing is switched on first, compilation comes last."""
        if self.cfg.model.grad_checkpointing:
            # the vit's flag: a token baseline's text blocks follow it (`encode_sequence`)
            self.model.vit.set_grad_checkpointing(True)
        module: nn.Module = self.core
        if self.fsdp:
            from torch.distributed.fsdp import fully_shard

            for block in self._blocks():
                fully_shard(block)
            fully_shard(self.core)
        elif self.dist.is_distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # a token baseline's two input paths (and CLIP*'s two towers) need not all take part
            # in a backward: a micro-batch of text pairs only leaves the patch embedding unused
            unused = isinstance(self.model, TokenModel)
            module = nn.parallel.DistributedDataParallel(
                self.core, device_ids=ids, find_unused_parameters=unused
            )
        if self.cfg.model.compile:
            self.model.compile()  # in place: parameter names (and checkpoints) stay the same
        return module

    def _blocks(self) -> list[nn.Module]:
        """Every transformer block of the model (each its own FSDP unit): the vit's, and CLIP*'s
        text tower's."""
        blocks = list(self.model.vit.blocks)
        text = getattr(self.model, "text", None)
        if text is not None:
            blocks.extend(text.blocks)
        return blocks

    def _build_optimizer(self) -> torch.optim.Optimizer:
        """The model's parameter groups, then the step's groups for the loss's own parameters
        (the sigmoid bias: "loss_bias", without weight decay), last so that saved optimiser
        states line up."""
        optimizer = build_optimizer(self.model, self.cfg.optim)
        for group in self.core.loss_param_groups(self.cfg.optim):
            optimizer.add_param_group(group)
        return optimizer

    def _ink_patch_size(self) -> int | None:
        """The patch size the workers compute ink masks at, for an ink-only text model."""
        config = self.model.config
        return config.vit.patch_size if getattr(config, "ink_only_text", False) else None

    def _renderer(self) -> Any:
        """CLIPPO's renderer; None for a token baseline (its texts are tokenised)."""
        return getattr(self.model, "renderer", None)

    def _train_data(self, data: DataConfig) -> TrainData:
        """The pipeline over `data` at this rank's batch size: texts rendered for CLIPPO,
        tokenised with the model's tokenizer for a token baseline."""
        lp = self.cfg.loop
        tokenizer = self.model.tokenizer if isinstance(self.model, TokenModel) else None
        return TrainData(
            data,
            self._renderer(),
            self.local_batch,
            seed=lp.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            pin_memory=self.device.type == "cuda",
            ink_patch_size=self._ink_patch_size(),
            tokenizer=tokenizer,
            image_size=self.model.config.vit.image_size,
        )

    def _position_data(self, data: DataFactory | None) -> DataFactory:
        """`data`, or the pipeline built from `cfg.data`, moved to the resumed position (which
        also checks that the data setup is unchanged)."""
        if data is None:
            data = self._train_data(self.cfg.data)
        if self.state.data and hasattr(data, "load_state_dict"):
            data.load_state_dict(self.state.data)
        return data

    def _validation_data(self) -> TrainData | None:
        """The held-out batches of `cfg.validation` (None when it is off), built like the
        training data at this rank's batch size."""
        val = self.cfg.validation
        if not val.every:
            return None
        try:
            return self._train_data(val.data_config(self.cfg.data))
        except ConfigError as e:  # TrainData names the keys as a data section's
            raise ConfigError(f"validation (its sources, built as a data section): {e}") from None

    # ---- one optimiser step --------------------------------------------------------------------

    def _sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Gradient all-reduce only on the last micro-batch."""
        if isinstance(self.module, nn.parallel.DistributedDataParallel) and not last:
            return self.module.no_sync()
        if self.fsdp:
            self._sharded().set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def _sharded(self) -> FSDPModule:
        """The step under FSDP (`fully_shard` turned it into an `FSDPModule` in place)."""
        return cast("FSDPModule", self.core)

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = self.precision.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def _backward(self, loss: Tensor) -> None:
        """Backward through the loss, multiplied by the fp16 loss scale (else as it is)."""
        self.scaler.scale(loss).backward()

    def _inputs(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """A data batch -> (left, right) on the device, checked to be this rank's batch size."""
        left, right = self.core.inputs(batch, self.device, self._renderer())
        if len(left) != self.local_batch or len(right) != self.local_batch:
            raise ValueError(
                f"data gave a batch of {len(left)}/{len(right)} rows; expected {self.local_batch}"
            )
        return left, right

    def step(self, batch: Batch) -> Tensor:
        """Forward/backward over the batch (accumulating micro-batches) -> detached loss [].
        Under fp16 the gradients are left multiplied by the loss scale (`update` unscales)."""
        left, right = self._inputs(batch)
        n = self.cfg.loop.accum_steps
        if n == 1:
            with self._sync(True), self._autocast():
                loss = self.module(left, right, Loss())
            self._backward(loss)
            return loss.detach()
        return self._accumulate(_chunks(left, n), _chunks(right, n))

    def _accumulate(self, lefts: list[Tensor], rights: list[Tensor]) -> Tensor:
        """Gradients equal to one step on the whole batch, with one micro-batch's activations in
        memory at a time -> the loss [] (detached)."""
        n = len(lefts)
        with torch.no_grad(), self._autocast():  # pass 1: every embedding, no activations kept
            embedded = [self.module(a, b, Embed()) for a, b in zip(lefts, rights)]
        zls, zrs = [z[0] for z in embedded], [z[1] for z in embedded]
        losses = []
        for i in range(n):  # pass 2: recompute micro-batch i with gradients, the rest cached
            # the last micro-step owns the shared parameters: DDP expects every grad when it syncs
            request = CachedLoss(zls, zrs, index=i, owns_shared=i == n - 1)
            with self._sync(i == n - 1), self._autocast():
                loss = self.module(lefts[i], rights[i], request)
            self._backward(loss)  # each micro-batch's part, scaled by the same scale
            losses.append(loss.detach())
        return losses[0]

    def _batch_loss(self, left: Tensor, right: Tensor) -> Tensor:
        """The training loss of one batch without gradients -> []: one forward, or with
        accumulation the embeddings of every micro-batch and the loss over all of them (what
        `_accumulate` evaluates, with one micro-batch's activations in memory at a time)."""
        n = self.cfg.loop.accum_steps
        with torch.no_grad(), self._autocast():
            if n == 1:
                return self.module(left, right, Loss())
            lefts, rights = _chunks(left, n), _chunks(right, n)
            embedded = [self.module(a, b, Embed()) for a, b in zip(lefts[:-1], rights[:-1])]
            # the last micro-batch is embedded inside the loss call, which replaces entry n-1
            zls = [z[0] for z in embedded] + [torch.empty(0)]
            zrs = [z[1] for z in embedded] + [torch.empty(0)]
            return self.module(lefts[-1], rights[-1], CachedLoss(zls, zrs, n - 1, True))

    def validation_loss(self) -> float:
        """The training loss averaged over the first `validation.batches` held-out batches, with
        the model in eval mode under no_grad (collective: every rank takes part)."""
        if self.validation is None:
            raise ConfigError("validation.every is 0: no validation data")
        wanted = self.cfg.validation.batches
        batches = self.validation(0)  # from the start every time: the same batches
        total = torch.zeros((), device=self.device)
        self.module.eval()
        try:
            for i in range(wanted):
                try:
                    batch = next(batches)
                except StopIteration:
                    raise ConfigError(
                        f"validation: the held-out sources gave {i} batches; "
                        f"validation.batches = {wanted}"
                    ) from None
                total += self._batch_loss(*self._inputs(batch)).float()
        finally:
            self.module.train()
        if self.dist.is_distributed:  # local_loss: each rank holds its share of the loss
            torch.distributed.all_reduce(total)
            total /= self.dist.world_size
        return float(total) / wanted

    # ---- checkpoints ---------------------------------------------------------------------------

    def save(self) -> Path | None:
        """Checkpoint the current state (collective under FSDP; rank 0 writes)."""
        model, loss, osd = self.model, self.core.loss.state_dict(), None
        if self.fsdp:  # every rank takes part in gathering the full state
            model, loss, osd = self._gather_full_state()
        path = None
        if hasattr(self.data, "state_dict"):
            self.state.data = self.data.state_dict(self.state.step)
        if self.dist.is_main:
            path = save_checkpoint(
                self.run_dir,
                self.state,
                save_model=model.save,
                loss_state=loss,
                optim_state={
                    "optimizer": osd if osd is not None else self.optimizer.state_dict(),
                    "rng": rng_state(),
                    # plain numbers (the scale, the growth tracker): JSON in optimizer.json
                    **({GRAD_SCALER: self.scaler.state_dict()} if self.scaler.is_enabled() else {}),
                },
                train_config=self.cfg.to_dict(),
                keep_last=self.cfg.checkpoint.keep_last,
            )
            if self.cfg.logging.loss_png and (self.run_dir / METRICS_FILE).exists():
                plot_loss_curve(self.run_dir)
        cdist.barrier()
        return path

    def _gather_full_state(self) -> tuple[AnyModel, dict[str, Tensor], dict[str, Any]]:
        """Under FSDP (collective): a CPU model of the same architecture (and tokenizer) with
        the full weights, the loss's full state and the full optimiser state. Only rank 0
        receives the tensors."""
        full, osd = gather_full_state(self.core, self.optimizer)
        tokenizer = self.model.tokenizer if isinstance(self.model, TokenModel) else None
        with torch.device("meta"):
            model = build_architecture(architecture_of(self.model), self.model.config, tokenizer)
        weights = _under(full, "model.")
        if weights:
            model.load_state_dict(weights, assign=True)
        return model, _under(full, "loss."), osd

    # ---- the loop ------------------------------------------------------------------------------

    def _scaler_values(self) -> dict[str, float]:
        """fp16: the loss scale and the steps skipped so far for inf/NaN gradients."""
        if not self.scaler.is_enabled():
            return {}
        return {
            "fp16/loss_scale": self.scaler.get_scale(),
            "fp16/skipped_steps": self.state.extra.get(SKIPPED, 0),
        }

    def _hooks(self, step: int) -> dict[str, Any]:
        if not self.hooks or not (self.dist.is_main or self.fsdp):
            return {}
        metrics: dict[str, Any] = {}
        self.model.eval()
        with torch.no_grad():
            if self.fsdp:
                self._sharded().unshard()
            for hook in self.hooks:
                metrics.update(hook(self.model, step))
            if self.fsdp:
                self._sharded().reshard()
        self.model.train()
        return metrics

    def update(self, batch: Any, stop_requested: bool = False) -> tuple[float, float, bool]:
        """One optimiser step -> (loss, grad norm, any rank asked to stop); raises on NaN/inf
        before the optimiser touches the weights. Under fp16 a gradient with inf/NaN skips the
        step instead (the grad norm returned is then inf or NaN), unless the scale is <= 1."""
        loss = self.step(batch)
        # one collective per step: the loss (for logging and the NaN check) and the SIGTERM flag
        flags = torch.stack([loss.float(), loss.new_tensor(float(stop_requested))])
        if self.dist.is_distributed:
            torch.distributed.all_reduce(flags)
            flags[0] /= self.dist.world_size
        loss_v, stop = flags.tolist()
        if not math.isfinite(loss_v):
            raise NonFiniteLossError(self.state.step, "loss", loss_v)
        # the accumulated gradient, unscaled once (a no-op unless fp16), then clipped
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.loop.clip_grad_norm or math.inf  # inf: measure the norm, do not clip
        gnorm = float(full_value(nn.utils.clip_grad_norm_(self.params, clip)))
        if not math.isfinite(gnorm):
            if not self.scaler.is_enabled() or self.scaler.get_scale() <= 1.0:
                raise NonFiniteLossError(self.state.step, "gradient norm", gnorm)
            self.state.extra[SKIPPED] = self.state.extra.get(SKIPPED, 0) + 1
        self.scaler.step(self.optimizer)  # skipped when unscale_ found inf/NaN
        self.scaler.update()  # fp16: halves the scale after a skip, doubles it every 2,000 good
        self.optimizer.zero_grad(set_to_none=True)
        if self.max_t is not None:  # CLIP's clamp: logit scale <= max_logit_scale
            with torch.no_grad():
                self.model.t.clamp_(max=self.max_t)
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
            self.run_dir,
            tensorboard=cfg.logging.tensorboard,
            enabled=main,
            resume_step=resume_step,
            wandb=cfg.logging.wandb,
            config=cfg.to_dict(),
            wandb_id=st.extra.get(WANDB_ID),
        )
        if self.logger.wandb_id is not None:  # saved with each checkpoint: resuming continues it
            st.extra[WANDB_ID] = self.logger.wandb_id
        bar = Progress(total, st.step, enabled=main and cfg.logging.progress)
        data = self.data(st.step)
        last: dict[str, Any] = {}
        ckpt, preempted, losses = None, False, []
        skipped: dict[str, int] = {}
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
                            "loss": loss,
                            "loss_avg": sum(losses) / len(losses),
                            "lr": lr,
                            "grad_norm": gnorm,
                            **self.core.log_values(),
                            "pairs_per_s": cfg.loop.batch_size / dt,
                            "step_time": dt,
                            "data_time": t_data,
                            "pairs_seen": st.pairs_seen,
                            "precision": self.precision.name,
                            **self._scaler_values(),
                            **{f"skipped/{k}": n for k, n in skipped.items()},
                        }
                        losses.clear()
                        self.logger.log(st.step, last)
                    vev = cfg.validation.every
                    if vev and (st.step % vev == 0 or st.step == total):
                        val = {"val/loss": self.validation_loss()}
                        self.logger.log(st.step, val)
                        last = {**last, **val}
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


def train(
    cfg: TrainConfig,
    *,
    hooks: Sequence[Hook] = (),
    data: DataFactory | None = None,
    model: AnyModel | None = None,
    allow_legacy_pickle: bool = False,
    step: StepFactory = contrastive_step,
) -> TrainResult:
    """Train per `cfg`; `data` replaces the pipeline built from `cfg.data`, `model` the one built
    from `cfg.model` (ignored when resuming), `step` the contrastive step. `allow_legacy_pickle`:
    resume a checkpoint written before the manifest (its optimizer.pt is a pickle: only for
    checkpoints you wrote). Raises NonFiniteLossError on a NaN/inf loss."""
    trainer = Trainer(cfg, data, hooks, model, allow_legacy_pickle=allow_legacy_pickle, step=step)
    return trainer.run()


__all__ = [
    "Batch",
    "DataFactory",
    "Hook",
    "NonFiniteLossError",
    "TrainResult",
    "ContrastiveStep",
    "StepFactory",
    "Trainer",
    "contrastive_step",
    "build_model",
    "local_batch_size",
    "restore_or_build_model",
    "run_tokenizer",
    "train",
]
