"""`clippo demo`: train a small CLIPPO on the built-in synthetic corpus, then evaluate it.

The application layer: the only place (with the CLI) that joins training and evaluation. It runs
the `demo` preset, which holds the recipe and the reasons for it, through the real trainer; the
held-out evaluation runs as a trainer hook (a callable handed in here), so the library never
imports `clippo.eval`.

Task: pictures of one shape (colour, shape, size, position) with alt-text captions in ten
templates, plus text/text pairs that paraphrase captions. `heldout_pairs` of the 64
(colour, shape) pairs never occur in training; evaluation runs only on those unseen
combinations: image->text and text->image retrieval over 100 held-out pairs with distinct
captions (chance R@1 = 1%), and zero-shot colour and shape classification (chance 1/8). After
training, two tasks through the GLUE/VQA engine (frozen features + a seeded head, each beside
its majority-answer baseline; `clippo.commands.demo_tasks`): VQA on held-out scenes, and an
MRPC-style paraphrase task on the captions.

Threads: one torch math thread by default, beside the one data worker: on two shared cores,
two math threads stall each other as soon as anything else runs.

Precision: the preset's unless `--precision` says otherwise; "auto" follows the fixed rule of
`clippo.train.precision` (on a CPU, bf16 only with AMX-BF16). results.json records the precision
used and why.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clippo.atomic import write_bytes_atomic, write_json_atomic
from clippo.commands.args import positive_int
from clippo.commands.demo_tasks import QUICK_TASKS, TaskPlan, pair_task, vqa_task
from clippo.data import synthetic
from clippo.eval.encoders import as_encoders
from clippo.eval.results import format_table, jsonable, save_retrieval_examples
from clippo.eval.retrieval import retrieval_metrics, similarity
from clippo.eval.zeroshot import evaluate_zeroshot
from clippo.train.config import ConfigError, TrainConfig, preset
from clippo.train.precision import FLAGS, choose_precision, parse_flag


@dataclass(frozen=True)
class DemoPlan:
    """What one demo run does: the training config and the evaluation sizes."""

    train: TrainConfig
    retrieval_pairs: int = 100
    zeroshot_images: int = 200
    out: Path = Path("runs/demo")
    tasks: TaskPlan = TaskPlan()


def demo_plan(
    out: str | Path, quick: bool = False, steps: int | None = None, precision: str | None = None
) -> DemoPlan:
    """The `demo` preset, writing to `out/train`, held-out metrics logged 5 times.

    quick: a seconds-long smoke run of the same code path (a one-block model of width 64, 4
    steps of batch 16, a small evaluation). steps: run length (default: the preset's); the
    warm-up and cool-down are kept to a fifth of it each. precision: "bf16", "fp32" or "auto"
    (default: the preset's).
    """
    cfg = preset("demo")
    model, loop, logging = cfg.model, cfg.loop, cfg.logging
    if quick:
        model = dataclasses.replace(model, width=64, depth=1, mlp_dim=128)
        loop = dataclasses.replace(loop, steps=4, batch_size=16)
        logging = dataclasses.replace(logging, every_steps=1, progress=False)
    n = loop.steps if steps is None else steps
    if n < 1:
        raise ConfigError(f"steps must be >= 1, got {n}")
    cfg = cfg.replace(
        model=model,
        loop=dataclasses.replace(
            loop, steps=n, precision=loop.precision if precision is None else parse_flag(precision)
        ),
        schedule=cfg.schedule.within(n),
        logging=dataclasses.replace(
            logging, run_dir=str(Path(out) / "train"), eval_every_steps=max(n // 5, 1)
        ),
    )
    return DemoPlan(
        cfg,
        retrieval_pairs=20 if quick else 100,
        zeroshot_images=32 if quick else 200,
        out=Path(out),
        tasks=QUICK_TASKS if quick else TaskPlan(),
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
    "vqa/accuracy": "VQA accuracy (official; majority answer per question)",
    "pairs/accuracy": "paraphrase pairs accuracy (majority label)",
    "pairs/f1": "paraphrase pairs F1 (majority label)",
}


def result_rows(metrics: Mapping[str, float], baseline: Mapping[str, float]) -> list[dict]:
    """Table rows: each metric beside its baseline (chance for retrieval and zero-shot, the
    majority answer for the trained-head tasks). Metrics that did not run are left out."""
    return [
        {"metric": label, "held-out": metrics[k], "baseline": baseline[k]}
        for k, label in _LABELS.items()
        if k in metrics
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
    precision: str | None = None,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Train, evaluate on the held-out split, run the VQA and paraphrase tasks, write
    `out/results.json`, `out/loss_curve.png`, `out/retrieval_examples.png` (and the trainer's
    run in `out/train/`), print a table.

    precision: "bf16", "fp32" or "auto" (default: the preset's). threads: torch intra-op threads
    (None: torch's default, one per core). Returns the results dict.
    """
    import torch

    from clippo.train import train
    from clippo.train.log import read_metrics

    t_start = time.perf_counter()
    if threads is not None:
        torch.set_num_threads(threads)
    out = Path(out)
    plan = demo_plan(out, quick, steps, precision)
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
    # the trainer's own rule on the trainer's device, so this is what it ran in
    device = next(result.model.parameters()).device
    chosen = choose_precision(plan.train.loop.precision, device)
    chance = chance_levels(plan, world)
    t_tasks = time.perf_counter()
    seed = plan.train.loop.seed
    tasks = {
        "vqa": vqa_task(result.model.eval(), world, plan.tasks, seed),
        "pairs": pair_task(result.model.eval(), world, plan.tasks, seed),
    }
    tasks_seconds = time.perf_counter() - t_tasks
    baseline = dict(chance)
    for task in tasks.values():
        metrics.update(task["metrics"])
        baseline.update(task["baseline"])
    rows = result_rows(metrics, baseline)

    records = read_metrics(run_dir / "metrics.jsonl")
    loss_png = plot_training(records, hook.history, out / "loss_curve.png", plan.train.loop.loss)
    rs = hook.retrieval
    assert hook.last_sim is not None  # the hook ran at the last step
    examples_png = save_retrieval_examples(
        out / "retrieval_examples.png",
        rs.images,
        list(rs.texts),
        hook.last_sim,
        rs.image_ids_for_text,
        indices=np.linspace(0, len(rs.texts) - 1, 8).astype(int),
    )
    total_seconds = time.perf_counter() - t_start
    results: dict[str, Any] = {
        "metrics": metrics,
        "chance": chance,
        "baseline": baseline,
        "tasks": {
            name: {k: v for k, v in t.items() if k not in ("metrics", "baseline")}
            for name, t in tasks.items()
        },
        "table": rows,
        "history": hook.history,
        "steps": result.step,
        "preempted": result.preempted,
        "final_loss": result.metrics.get("loss"),
        "precision": chosen.to_dict(),
        "threads": torch.get_num_threads(),
        "seconds": {  # setup: evaluation sets; train: the trainer's wall time,
            "setup": t_train - t_start,  # of which "eval" in the held-out hook
            "train": train_seconds,
            "eval": hook.seconds,
            "tasks": tasks_seconds,  # VQA and paraphrase features and heads
            "total": total_seconds,
        },
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "heldout_pairs": [list(p) for p in synthetic.heldout_pairs(world)],
        "config": plan.train.to_dict(),
        "world": world.to_dict(),
        "model": result.model.config.to_dict(),
        "files": {"loss_curve": str(loss_png), "retrieval_examples": str(examples_png)},
    }
    write_json_atomic(jsonable(results), out / "results.json")
    n = plan.retrieval_pairs
    vqa, pairs = tasks["vqa"]["rows"], tasks["pairs"]["rows"]
    print(
        f"\nheld-out split: {n} unseen (colour, shape) scenes with distinct captions; VQA: "
        f"{vqa['eval']} questions on unseen-pair scenes (head: {vqa['train']} on trained pairs); "
        f"paraphrase pairs: {pairs['eval']} (head: {pairs['train']})"
    )
    print(format_table(rows))
    print(
        f"{result.step} steps ({chosen}, batch {plan.train.loop.batch_size}, "
        f"{torch.get_num_threads()} thread(s)) in {train_seconds:.0f} s (held-out evaluation "
        f"{hook.seconds:.0f} s of it), tasks {tasks_seconds:.0f} s, total "
        f"{total_seconds:.0f} s; results in {out / 'results.json'}"
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
    p.add_argument(
        "--steps", type=positive_int, default=None, help="training steps (default: the recipe's)"
    )
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tiny model)")
    p.add_argument(
        "--precision",
        choices=FLAGS,
        default=None,
        help=f"default: the demo preset's ({preset('demo').loop.precision}); "
        "auto: on a CPU, bf16 only with AMX-BF16",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch math threads (default: %(default)s, beside one data worker)",
    )
    p.set_defaults(func=_run)
