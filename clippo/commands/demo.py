"""`clippo demo`: train a small CLIPPO on the built-in synthetic corpus, then evaluate it.

The application layer: the only place (with the CLI) that joins training and evaluation. The
trainer runs the held-out evaluation as a hook (a callable handed in here); the library never
imports `clippo.eval`.

Task: pictures of one shape (colour, shape, size, position) with alt-text captions in ten
templates, plus text/text pairs that paraphrase captions. `heldout_pairs` of the 64
(colour, shape) pairs never occur in training; evaluation runs only on those unseen
combinations: image->text and text->image retrieval over 100 held-out pairs with distinct
captions (chance R@1 = 1%), and zero-shot colour and shape classification (chance 1/8).

The recipe (`RECIPE`, applied over the `demo` preset so the demo runs it whatever the preset
holds) came from a sweep on this project's 2-core CPU:
- sigmoid loss: with the softmax loss and batch 64 the embeddings collapse to one point within
  ~50 steps and sit at chance for 150-450 steps; the sigmoid loss has no such plateau;
- text/text pairs at 25% of each batch: with none, the model never learns to read in the time
  (chance after 900 steps); at 50% image/text learning is slower;
- 96 px (every caption still fits), patch 16: 112 and 128 px learn less in the same time;
- 4 blocks of width 128 (2 heads): 1.8x the steps per second of width 192, and more steps
  beat more width here (held-out R@1 0.59 after 1,100 steps vs 0.44 after 600 at width 192);
- batch 128 (better than 64 for the same time), AdamW (beta2 0.95), peak lr 5e-4 (1e-3 stayed
  at chance with a 30-step warm-up, and was no better with 100), cosine schedule, clipping 1.0,
  temperature init 10 (20 stayed at chance);
- bf16 only where the probe finds it faster: at width 128 it is slower on this project's CPU
  (AMX), at width 192 and 96 px about even; so this recipe runs in float32 there.
"""

from __future__ import annotations

import argparse
import io
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clippo.atomic import write_bytes_atomic
from clippo.data import synthetic
from clippo.eval.encoders import as_encoders
from clippo.eval.results import format_table, save_retrieval_examples, write_json
from clippo.eval.retrieval import retrieval_metrics, similarity
from clippo.eval.zeroshot import evaluate_zeroshot
from clippo.train.config import ConfigError, TrainConfig, config_from_dict, preset
from clippo.typed_config import deep_merge

# The synthetic world: one object per scene; 10 held-out (colour, shape) pairs leave 54 to train
# on (better generalisation than 48) and give exactly 100 distinct held-out scenes.
SCENE_OPTIONS: dict[str, Any] = {"counts": [1], "heldout_pairs": 10}

RECIPE: dict[str, Any] = {
    "data": {
        "image_text": [{"kind": "synthetic", "options": {"split": "train", **SCENE_OPTIONS}}],
        "text_pairs": [{"kind": "synthetic_paraphrase", "options": dict(SCENE_OPTIONS)}],
        "text_pair_fraction": 0.25,
        "render_on": "worker",
        "num_workers": 1,  # scenes and captions are drawn beside the training process
    },
    "model": {
        "variant": "Ti/16",  # patch 16; sizes below
        "image_size": 96,
        "width": 128,
        "depth": 4,
        "num_heads": 2,
        "mlp_dim": 512,
        "temperature_init": 10.0,
    },
    "optim": {"name": "adamw", "lr": 5e-4, "wd": 1e-4, "betas": [0.9, 0.95]},
    "schedule": {"kind": "cosine", "warmup_steps": 30, "cooldown_steps": 0},
    "loop": {
        "steps": 1000,
        "batch_size": 128,
        "accum_steps": 1,
        "loss": "sigmoid",
        "clip_grad_norm": 1.0,
        "device": "cpu",
        "seed": 0,
    },
    "checkpoint": {"every_steps": 0, "keep_last": 1, "resume": ""},  # one, at the end
    "logging": {"every_steps": 10, "tensorboard": False, "loss_png": False},
    "eval": [],
}

# `--quick`: a seconds-long smoke run of the same code path (tiny model, tiny evaluation).
QUICK: dict[str, Any] = {
    "model": {"image_size": 96, "width": 64, "depth": 1, "num_heads": 2, "mlp_dim": 128},
    "loop": {"steps": 4, "batch_size": 16},
    "schedule": {"warmup_steps": 1},
    "logging": {"every_steps": 1, "progress": False},
}


@dataclass(frozen=True)
class DemoPlan:
    """What one demo run does: the training config and the evaluation sizes."""

    train: TrainConfig
    retrieval_pairs: int = 100
    zeroshot_images: int = 200
    out: Path = Path("runs/demo")


def demo_plan(
    out: str | Path, precision: str, quick: bool = False, steps: int | None = None
) -> DemoPlan:
    """The `demo` preset with `RECIPE` on top, writing to `out/train`.

    precision: "bf16" or "fp32" (see `probe_precision`). steps: run length; the warm-up is
    shortened to at most a fifth of it. Held-out metrics are logged 5 times during training.
    """
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be 'bf16' or 'fp32', got {precision!r}")
    out = Path(out)
    cfg = deep_merge(preset("demo").to_dict(), RECIPE)
    if quick:
        cfg = deep_merge(cfg, QUICK)
    n = cfg["loop"]["steps"] if steps is None else steps
    if n < 1:
        raise ConfigError(f"steps must be >= 1, got {n}")
    warmup = min(cfg["schedule"]["warmup_steps"], n // 5)
    cfg = deep_merge(
        cfg,
        {
            "loop": {"steps": n, "precision": precision},
            "schedule": {"warmup_steps": warmup},
            "logging": {"run_dir": str(out / "train"), "eval_every_steps": max(n // 5, 1)},
        },
    )
    return DemoPlan(
        config_from_dict(cfg),
        retrieval_pairs=20 if quick else 100,
        zeroshot_images=32 if quick else 200,
        out=out,
    )


def _scene_options(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in ("split", "length")}


def scene_config(cfg: TrainConfig) -> synthetic.SyntheticConfig:
    """The synthetic world the trainer draws from (same options, so the same held-out pairs).

    Raises ConfigError unless both sources are the synthetic ones with the same world: a text
    pair source with other held-out pairs would leak the evaluation combinations.
    """
    d = cfg.data
    if [s.kind for s in d.image_text] != ["synthetic"] or [s.kind for s in d.text_pairs] not in (
        [],
        ["synthetic_paraphrase"],
    ):
        raise ConfigError("the demo needs data.image_text = [synthetic] (+ synthetic_paraphrase)")
    world = _scene_options(d.image_text[0].options)
    if d.text_pairs and _scene_options(d.text_pairs[0].options) != world:
        raise ConfigError(
            f"data.text_pairs.0.options {dict(d.text_pairs[0].options)} describe another world "
            f"than data.image_text.0.options {dict(d.image_text[0].options)}"
        )
    return synthetic.SyntheticConfig.from_dict({"image_size": cfg.model.image_size, **world})


@dataclass(frozen=True)
class PrecisionProbe:
    """Seconds for one forward+backward of the probe in each precision, and the choice."""

    fp32_s: float
    bf16_s: float
    choice: str

    def to_dict(self) -> dict[str, Any]:
        return {"fp32_s": self.fp32_s, "bf16_s": self.bf16_s, "choice": self.choice}


def probe_precision(
    model_config: Any, batch_size: int, repeats: int = 3, gain: float = 0.9
) -> PrecisionProbe:
    """Time one training forward+backward of a one-block copy of the run's model (same width,
    heads, patch and image size; a batch of `batch_size` random images) in float32 and under
    bf16 autocast; choose bf16 only if it takes under `gain` of the float32 time (best of
    `repeats`). bf16 matmuls are fast only on CPUs with bf16 units (AVX512-BF16, AMX), and even
    there the casts around LayerNorm, GELU and softmax can eat the gain for small widths: timing
    matmuls alone overstates it (2.8x for the matmuls vs 1.04x for the step at width 192, 96 px
    on this project's CPU), timing one block matches the full step to a few percent."""
    import dataclasses

    import torch

    from clippo.model.one_tower import CLIPPO

    torch.manual_seed(0)
    one_block = dataclasses.replace(model_config.vit, depth=1)
    model = CLIPPO(dataclasses.replace(model_config, vit=one_block))
    size = one_block.image_size
    x = torch.rand(batch_size, 3, size, size) * 2 - 1

    def best(bf16: bool) -> float:
        times = []
        for _ in range(repeats + 1):  # the first call sets up kernels: not timed
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                z = model.encode(x)
            z.float().square().sum().backward()
            times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
        return min(times[1:])

    fp32, bf16 = best(False), best(True)
    return PrecisionProbe(fp32, bf16, "bf16" if bf16 < gain * fp32 else "fp32")


def caption_prompts(world: synthetic.SyntheticConfig, task: str) -> tuple[str, ...]:
    """Zero-shot prompts written like the captions the model trained on: the first caption
    template with "{}" for the class and every value of the other attributes (the ensemble
    averages them out): "a photo of a small {} star on the left", ... Short prompts such as
    "a photo of a red {}" lack the size and position every training caption has, and score
    far lower (e.g. colour 0.26 vs 0.98 for the same model)."""
    if task not in ("colour", "shape"):
        raise ValueError(f"task must be 'colour' or 'shape', got {task!r}")
    other = "shape" if task == "colour" else "colour"
    prompts = []
    for value in getattr(world, other + "s"):
        for size in world.sizes:
            for position in world.positions:
                fields = {task: "{}", other: value, "size": size, "position": position}
                scene = synthetic.Scene(count=1, **fields)
                prompts.append(synthetic.caption(scene, synthetic.CAPTION_TEMPLATES[0]))
    return tuple(prompts)


class HeldoutEval:
    """The trainer hook: held-out retrieval and zero-shot metrics, `demo/<metric>` -> number.

    Builds the evaluation sets once; keeps every call's metrics (`history`) and the last
    similarity matrix (for the retrieval-examples PNG).
    """

    def __init__(self, world: synthetic.SyntheticConfig, n_pairs: int, n_zeroshot: int) -> None:
        self.retrieval = synthetic.retrieval_set(world, n_pairs)
        self.zeroshot = synthetic.zeroshot_sets(world, n_zeroshot)
        self.prompts = {task: caption_prompts(world, task) for task in self.zeroshot}
        self.history: list[dict[str, float]] = []
        self.last_step = -1
        self.last_sim: np.ndarray | None = None
        self.seconds = 0.0  # time spent evaluating (inside the trainer's wall time)

    def evaluate(self, model: Any) -> tuple[dict[str, float], np.ndarray]:
        """-> ({"img2txt/r@1", "img2txt/r@5", "txt2img/r@1", "txt2img/r@5", "zeroshot/colour",
        "zeroshot/shape", "zeroshot/colour_short", "zeroshot/shape_short"}, similarity float32
        [N_img, N_txt]). `_short`: the corpus's own short prompts ("a photo of a {} star")."""
        encoders = as_encoders(model)
        rs = self.retrieval
        sim = similarity(*encoders, rs.images, list(rs.texts))
        metrics = dict(retrieval_metrics(sim, rs.image_ids_for_text, ks=(1, 5)))
        for task, zs in self.zeroshot.items():
            for key, templates in ((task, self.prompts[task]), (f"{task}_short", zs.templates)):
                r = evaluate_zeroshot(encoders, zs.images, zs.labels, zs.class_names, templates)
                metrics[f"zeroshot/{key}"] = r["accuracy"]
        return {k: float(v) for k, v in metrics.items()}, sim

    def __call__(self, model: Any, step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        metrics, self.last_sim = self.evaluate(model)
        self.seconds += time.perf_counter() - t0
        self.last_step = step
        self.history.append({"step": step, **metrics})
        return {f"demo/{k}": v for k, v in metrics.items()}


def chance_levels(plan: DemoPlan, world: synthetic.SyntheticConfig) -> dict[str, float]:
    """Expected value of each metric for random embeddings."""
    n = plan.retrieval_pairs
    out = {f"{d}/r@{k}": min(k / n, 1.0) for d in ("img2txt", "txt2img") for k in (1, 5)}
    out["zeroshot/colour"] = 1 / len(world.colours)
    out["zeroshot/shape"] = 1 / len(world.shapes)
    return out


_LABELS = {
    "img2txt/r@1": "image -> text recall@1",
    "img2txt/r@5": "image -> text recall@5",
    "txt2img/r@1": "text -> image recall@1",
    "txt2img/r@5": "text -> image recall@5",
    "zeroshot/colour": "zero-shot colour accuracy",
    "zeroshot/shape": "zero-shot shape accuracy",
}


def result_rows(metrics: Mapping[str, float], chance: Mapping[str, float]) -> list[dict]:
    return [
        {"metric": label, "held-out": metrics[k], "chance": chance[k]}
        for k, label in _LABELS.items()
    ]


def plot_training(records: list[dict], history: list[dict], path: Path, loss: str) -> Path:
    """PNG: training loss per logged step (left) and held-out recall@1 per evaluation (right)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100)
    ax, ax2 = fig.subplots(1, 2)
    pts = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), (int, float))]
    if pts:
        ax.plot(*zip(*pts), lw=1, label="loss (logged step)")
    ax.set(xlabel="step", title=f"training loss ({loss} contrastive)")
    ax.grid(True, alpha=0.3)
    for key, label in (("img2txt/r@1", "image->text R@1"), ("txt2img/r@1", "text->image R@1")):
        if history:
            ax2.plot([h["step"] for h in history], [h[key] for h in history], "o-", label=label)
    ax2.set(xlabel="step", ylim=(0, 1), title="held-out retrieval (unseen colour+shape)")
    ax2.grid(True, alpha=0.3)
    ax2.legend(loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return write_bytes_atomic(path, buf.getvalue())


def run_demo(
    out: str | Path = "runs/demo",
    *,
    quick: bool = False,
    steps: int | None = None,
    precision: str = "auto",
    threads: int | None = None,
) -> dict[str, Any]:
    """Train, evaluate on the held-out split, write `out/results.json`, `out/loss_curve.png`,
    `out/retrieval_examples.png` (and the trainer's run in `out/train/`), print a table.

    precision: "auto" (a quick probe, `probe_precision`), "bf16" or "fp32". threads: torch
    intra-op threads (None: torch's default, one per core). Returns the results dict.
    """
    import torch

    from clippo.train import train
    from clippo.train.log import read_metrics

    t_start = time.perf_counter()
    if threads is not None:
        torch.set_num_threads(threads)
    out = Path(out)
    probe = None
    if precision == "auto":  # probe with the run's own model sizes and batch
        train_cfg = demo_plan(out, "fp32", quick, steps).train
        probe = probe_precision(train_cfg.model.model_config(), train_cfg.loop.batch_size)
        precision = probe.choice
    plan = demo_plan(out, precision, quick, steps)
    world = scene_config(plan.train)
    run_dir = Path(plan.train.logging.run_dir)
    if run_dir.exists():  # the demo's own scratch run: start afresh every time
        shutil.rmtree(run_dir)
    hook = HeldoutEval(world, plan.retrieval_pairs, plan.zeroshot_images)
    t_train = time.perf_counter()
    result = train(plan.train, hooks=[hook])
    train_seconds = time.perf_counter() - t_train
    if hook.last_step != result.step:  # the trainer runs hooks at the end; be safe anyway
        hook(result.model.eval(), result.step)
    metrics = {k: v for k, v in hook.history[-1].items() if k != "step"}
    chance = chance_levels(plan, world)
    rows = result_rows(metrics, chance)

    records = read_metrics(run_dir / "metrics.jsonl")
    loss_png = plot_training(records, hook.history, out / "loss_curve.png", plan.train.loop.loss)
    rs = hook.retrieval
    examples_png = save_retrieval_examples(
        out / "retrieval_examples.png",
        rs.images,
        list(rs.texts),
        hook.last_sim,
        rs.image_ids_for_text,
        indices=np.linspace(0, len(rs.texts) - 1, 8).astype(int),
    )
    results = {
        "metrics": metrics,
        "chance": chance,
        "table": rows,
        "history": hook.history,
        "steps": result.step,
        "preempted": result.preempted,
        "final_loss": result.metrics.get("loss"),
        "precision": precision,
        "precision_probe": probe.to_dict() if probe else None,
        "threads": torch.get_num_threads(),
        "seconds": {  # setup: probe + evaluation sets; train: the trainer's wall time,
            "setup": t_train - t_start,  # of which "eval" in the held-out hook
            "train": train_seconds,
            "eval": hook.seconds,
            "total": time.perf_counter() - t_start,
        },
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "heldout_pairs": [list(p) for p in synthetic.heldout_pairs(world)],
        "config": plan.train.to_dict(),
        "world": world.to_dict(),
        "model": result.model.config.to_dict(),
        "files": {"loss_curve": str(loss_png), "retrieval_examples": str(examples_png)},
    }
    write_json(out / "results.json", results)
    n = plan.retrieval_pairs
    print(f"\nheld-out split: {n} unseen (colour, shape) scenes with distinct captions")
    print(format_table(rows))
    print(
        f"{result.step} steps ({precision}, batch {plan.train.loop.batch_size}) in "
        f"{train_seconds:.0f} s (held-out evaluation {hook.seconds:.0f} s of it); "
        f"results in {out / 'results.json'}"
    )
    return results


# ---- the command --------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    run_demo(
        args.out,
        quick=args.quick,
        steps=args.steps,
        precision=args.precision,
        threads=args.threads,
    )
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="train and evaluate a small CLIPPO on synthetic scenes (CPU, minutes)",
        description=__doc__,
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tiny model)")
    p.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="auto: bf16 only if a quick probe finds it faster on this CPU (default: %(default)s)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: one per core)"
    )
    p.set_defaults(func=_run)
