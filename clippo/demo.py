"""`clippo demo`: train a small CLIPPO on the built-in synthetic corpus, then evaluate it.

The application layer: the only place (with the CLI) that joins training and evaluation. The
trainer gets the evaluation as a hook (a callable); the library never imports `clippo.eval`.

Task: photos of simple scenes (one shape with a colour, size and position) with alt-text
captions, plus text/text pairs that paraphrase captions. 16 of the 64 (colour, shape) pairs
never appear in training; evaluation runs on those unseen combinations: image->text and
text->image retrieval over 100 held-out pairs with distinct captions (chance R@1 = 1%), and
zero-shot colour and shape classification (chance 1/8).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clippo.data import synthetic
from clippo.eval.encoders import as_encoders
from clippo.eval.results import format_table, save_retrieval_examples, write_json
from clippo.eval.retrieval import retrieval_metrics, similarity
from clippo.eval.zeroshot import evaluate_zeroshot
from clippo.train_config import TrainConfig, load_train_config

# The synthetic world of the demo: one object per scene (so every caption fits the canvas).
SCENE_OPTIONS: dict[str, Any] = {"counts": [1]}


@dataclass(frozen=True)
class DemoPlan:
    """What one demo run does: the training config and the evaluation sizes."""

    train: TrainConfig
    retrieval_pairs: int = 100
    zeroshot_images: int = 200


def demo_plan(out: Path, precision: str, quick: bool = False, steps: int | None = None) -> DemoPlan:
    """The `demo` preset, pointed at `out/train`; `quick` is a seconds-long smoke run."""
    overrides = [
        f"logging.run_dir={json.dumps(str(out / 'train'))}",
        "logging.tensorboard=false",
        f"loop.precision={precision}",
        "checkpoint.every_steps=0",
        "checkpoint.keep_last=1",
    ]
    for kind in ("image_text", "text_pairs"):  # both draw from the same synthetic world
        for key, value in SCENE_OPTIONS.items():
            overrides.append(f"data.{kind}.0.options.{key}={json.dumps(value)}")
    if quick:
        overrides += [
            "model.image_size=64",
            "model.width=64",
            "model.depth=1",
            "model.num_heads=2",
            "model.mlp_dim=128",
            "loop.batch_size=16",
            "loop.steps=4",
            "schedule.warmup_steps=1",
            "logging.every_steps=1",
            "logging.progress=false",
        ]
    if steps is not None:
        overrides.append(f"loop.steps={steps}")
    cfg = load_train_config("demo", overrides)
    # held-out metrics logged 4 times during training (the trainer runs hooks at the end too)
    cfg = load_train_config(
        "demo", [*overrides, f"logging.eval_every_steps={max(cfg.loop.steps // 4, 1)}"]
    )
    return DemoPlan(cfg, retrieval_pairs=20 if quick else 100, zeroshot_images=32 if quick else 200)


def scene_config(cfg: TrainConfig) -> synthetic.SyntheticConfig:
    """The synthetic world the trainer draws from (same options, same held-out pairs)."""
    options = {
        k: v for k, v in cfg.data.image_text[0].options.items() if k not in ("split", "length")
    }
    return synthetic.SyntheticConfig.from_dict({"image_size": cfg.model.image_size, **options})


def evaluate(model: Any, world: synthetic.SyntheticConfig, plan: DemoPlan) -> dict[str, Any]:
    """Held-out retrieval and zero-shot metrics, plus the similarity matrix for the PNG."""
    rs = synthetic.retrieval_set(world, plan.retrieval_pairs)
    encoders = as_encoders(model)
    sim = similarity(*encoders, rs.images, list(rs.texts))
    metrics: dict[str, Any] = dict(retrieval_metrics(sim, rs.image_ids_for_text, ks=(1, 5)))
    for task, zs in synthetic.zeroshot_sets(world, plan.zeroshot_images).items():
        r = evaluate_zeroshot(encoders, zs.images, zs.labels, zs.class_names, zs.templates)
        metrics[f"zeroshot/{task}"] = r["accuracy"]
    return {"metrics": metrics, "sim": sim, "set": rs}


def eval_hook(world: synthetic.SyntheticConfig, plan: DemoPlan) -> Callable[[Any, int], dict]:
    """A trainer hook: held-out metrics under `demo/` (the trainer logs them to metrics.jsonl)."""

    def hook(model: Any, step: int) -> dict[str, float]:
        return {f"demo/{k}": float(v) for k, v in evaluate(model, world, plan)["metrics"].items()}

    return hook


CHANCE = {"img2txt/r@1": 0.01, "img2txt/r@5": 0.05, "txt2img/r@1": 0.01, "txt2img/r@5": 0.05}


def result_rows(metrics: dict[str, float], plan: DemoPlan, world: synthetic.SyntheticConfig):
    n = plan.retrieval_pairs
    chance = {k: v * 100 / n for k, v in CHANCE.items()}
    chance["zeroshot/colour"] = 1 / len(world.colours)
    chance["zeroshot/shape"] = 1 / len(world.shapes)
    return [{"metric": k, "held-out": metrics[k], "chance": chance[k]} for k in chance]


def run_demo(out: str | Path = "runs/demo", quick: bool = False, steps: int | None = None) -> dict:
    """Train, evaluate, write results.json, loss_curve.png, retrieval_examples.png; print a table."""
    import torch

    from clippo.train import train, use_bf16
    from clippo.train_log import plot_loss_curve

    out = Path(out)
    # bf16 only where this CPU runs it faster (a quick probe), recorded in the config
    precision = "bf16" if use_bf16("auto", torch.device("cpu")) else "fp32"
    plan = demo_plan(out, precision, quick, steps)
    world = scene_config(plan.train)
    run_dir = Path(plan.train.logging.run_dir)
    if run_dir.exists():  # the demo's own scratch run: start fresh every time
        shutil.rmtree(run_dir)
    start = time.perf_counter()
    result = train(plan.train, hooks=[eval_hook(world, plan)])
    train_seconds = time.perf_counter() - start
    model = result.model.eval()
    ev = evaluate(model, world, plan)
    metrics = {k: float(v) for k, v in ev["metrics"].items()}
    loss_png = plot_loss_curve(run_dir, out / "loss_curve.png")
    examples_png = out / "retrieval_examples.png"
    rs = ev["set"]
    save_retrieval_examples(
        examples_png,
        rs.images,
        list(rs.texts),
        ev["sim"],
        rs.image_ids_for_text,
        indices=np.arange(min(8, len(rs.texts))),
    )
    rows = result_rows(metrics, plan, world)
    results = {
        "metrics": metrics,
        "table": rows,
        "train_seconds": train_seconds,
        "steps": result.step,
        "final_loss": result.metrics.get("loss"),
        "precision": precision,
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "heldout_pairs": [list(p) for p in synthetic.heldout_pairs(world)],
        "config": plan.train.to_dict(),
        "world": world.to_dict(),
        "files": {"loss_curve": str(loss_png), "retrieval_examples": str(examples_png)},
    }
    write_json(out / "results.json", results)
    print(format_table(rows))
    print(
        f"trained {result.step} steps in {train_seconds:.0f} s; results in {out / 'results.json'}"
    )
    return results
