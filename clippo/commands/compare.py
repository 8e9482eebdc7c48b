"""`clippo compare`: the paper's comparison as a command. CLIPPO dense, CLIPPO ink-only, CLIP* and
1T-CLIP trained side by side on the same data, the same step budget and the same seeds, each
evaluated with the same suites.

Rows (`--architectures`, default all four): "clippo" (pixels only, every text patch),
"clippo-ink" (`model.ink_only_text`: only inked text patches, in training and evaluation),
"clip-star" (image ViT + its own text transformer on tokens) and "1t-clip" (one transformer, two
input embeddings). The token rows set `model.architecture`; their tokenizer is trained on the
run's texts (`model.tokenizer = ""`) unless the config names a tokenizer.json. Everything else is
the config's, the same for every row: a row differs from another only in its [model] keys.

Data: CONFIG (a preset name or a TOML file; default: the demo's recipe on the enlarged world
`synthetic.COMPARE_WORLD`) must draw from the built-in synthetic world, whose held-out
(colour, shape) pairs the evaluation uses. Seeds: `loop.seed + k` for k < `--seeds`; a seed sets
the initialisation and the batch order, the world stays the same.

Per row and seed (results.json "seeds"): params; train/pairs_per_s (the median over the
optimiser steps); text_encode/ms_per_text (encoding the held-out captions as evaluation does:
rendering or tokenising included, after one warm-up call); held-out retrieval R@1/R@5 both ways
and the modality gap (`clippo.eval.retrieval.evaluate_retrieval`); zero-shot colour and shape
accuracy (the demo's caption-like prompts); the demo's VQA and paraphrase-pair numbers
(`clippo.commands.compare_tasks`). "mean" and "std" (population, ddof 0) over the seeds.

Threads: one torch math thread by default, beside one data worker (see `clippo demo`).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clippo.atomic import write_bytes_atomic, write_json_atomic
from clippo.commands.args import positive_int
from clippo.commands.compare_tasks import run_tasks
from clippo.commands.demo import HeldoutEval, scene_config
from clippo.commands.demo_tasks import QUICK_TASKS, TaskPlan
from clippo.data import synthetic
from clippo.eval.encoders import as_encoders
from clippo.eval.results import format_table, jsonable
from clippo.eval.retrieval import evaluate_retrieval
from clippo.eval.zeroshot import evaluate_zeroshot
from clippo.train.config import (
    ConfigError,
    ModelSection,
    TrainConfig,
    config_from_dict,
    load_train_config,
    preset,
)

ROWS: tuple[str, ...] = ("clippo", "clippo-ink", "clip-star", "1t-clip")
TOKEN_ROWS = frozenset({"clip-star", "1t-clip"})

# Optimiser steps of the default run. Measured on this 2-core Xeon (one math thread, batch 128,
# 96 px, width 128 x 3 blocks, MLP 256; CPU seconds of the training process per step, steps 4-13
# of the real trainer, under a load of ~6 from other jobs): clippo 0.69, clippo-ink 0.58,
# clip-star 0.32, 1t-clip 0.28; each run's evaluation (600 retrieval pairs, 400 zero-shot images,
# VQA, pairs) ~30-40 s, start-up and tokenizer ~20 s. 2 seeds x 4 rows x 600 steps: 2 x 1.87 x
# 600 = 2,250 s + 8 x ~60 s = ~46 minutes, leaving room under 90 for a busier machine.
DEFAULT_STEPS = 600
# The token rows' [model] keys in the default run: the synthetic captions use ~60 words, so a
# small vocabulary already holds every word whole, 32 tokens hold the longest caption (CLIPPO
# reads 36 patches of 16 px at 96 px), and 10,000 texts show every word many times (drawing
# them renders the image_text source's scenes too: ~5 s; the trainer's default 100,000: ~50 s).
TOKEN_OPTIONS: Mapping[str, Any] = {
    "tokenizer": "",
    "vocab_size": 1024,
    "text_max_length": 32,
    "tokenizer_texts": 10_000,
}
QUICK_TOKENIZER_TEXTS = 1000
# Held-out evaluation sizes: every distinct held-out scene of the compare world (600).
RETRIEVAL_PAIRS = 600
ZEROSHOT_IMAGES = 400

# The metrics of one seed, in table order (timings first, then quality).
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("params", "params"),
    ("train/pairs_per_s", "pairs/s"),
    ("text_encode/ms_per_text", "ms/text"),
    ("img2txt/r@1", "i->t R@1"),
    ("img2txt/r@5", "i->t R@5"),
    ("txt2img/r@1", "t->i R@1"),
    ("txt2img/r@5", "t->i R@5"),
    ("zeroshot/colour", "0-shot colour"),
    ("zeroshot/shape", "0-shot shape"),
    ("vqa/accuracy", "VQA"),
    ("pairs/accuracy", "pairs acc"),
    ("pairs/f1", "pairs F1"),
    ("modality_gap", "gap"),
)
# Metrics that are timings: they differ between runs of the same seed; everything else is a
# pure function of the config and the seed on one machine.
TIMINGS = ("train/pairs_per_s", "text_encode/ms_per_text", "seconds/train", "seconds/eval")


@dataclass(frozen=True)
class ComparePlan:
    """One comparison: the shared training config, the rows, the seeds, the evaluation sizes."""

    train: TrainConfig
    architectures: tuple[str, ...] = ROWS
    seeds: tuple[int, ...] = (0, 1)
    retrieval_pairs: int = RETRIEVAL_PAIRS
    zeroshot_images: int = ZEROSHOT_IMAGES
    tasks: TaskPlan = TaskPlan()
    token_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    out: Path = Path("runs/compare")


def default_config() -> TrainConfig:
    """The demo's recipe on the enlarged world (`synthetic.COMPARE_WORLD`), DEFAULT_STEPS."""
    cfg = preset("demo")
    d = cfg.data
    world = dict(synthetic.COMPARE_WORLD)
    return cfg.replace(
        data=dataclasses.replace(
            d,
            image_text=tuple(
                dataclasses.replace(s, options={**s.options, **world}) for s in d.image_text
            ),
            text_pairs=tuple(
                dataclasses.replace(s, options={**s.options, **world}) for s in d.text_pairs
            ),
        ),
        # the demo reads inked patches only; here each row says (`row_config`), dense by default
        model=dataclasses.replace(cfg.model, ink_only_text=False),
        loop=dataclasses.replace(cfg.loop, steps=DEFAULT_STEPS),
    )


def parse_architectures(text: str | Sequence[str]) -> tuple[str, ...]:
    """ "clippo,clip-star" -> ("clippo", "clip-star"): known rows, no duplicates (ValueError)."""
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else list(text)
    unknown = [n for n in names if n not in ROWS]
    if unknown or not names:
        raise ValueError(f"--architectures: unknown {unknown or names}; known: {', '.join(ROWS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"--architectures: {names} names a row twice")
    return tuple(names)


def compare_plan(
    config: str | Path | None = None,
    out: str | Path = "runs/compare",
    *,
    seeds: int | None = None,
    steps: int | None = None,
    architectures: Sequence[str] = ROWS,
    quick: bool = False,
) -> ComparePlan:
    """The plan for CONFIG (None: `default_config()`). quick: the demo's quick model (one block
    of width 64), 4 steps of batch 16, one seed, small evaluation sets; `steps`/`seeds` still
    apply. Raises ConfigError when the config does not draw from the synthetic world."""
    cfg = default_config() if config is None else load_train_config(config)
    scene_config(cfg)  # the evaluation needs the synthetic world; a clear error otherwise
    model, loop = cfg.model, cfg.loop
    if quick:
        model = dataclasses.replace(model, width=64, depth=1, mlp_dim=128)
        loop = dataclasses.replace(loop, steps=4, batch_size=16)
    n = loop.steps if steps is None else steps
    if n < 1:
        raise ConfigError(f"steps must be >= 1, got {n}")
    n_seeds = (1 if quick else 2) if seeds is None else seeds
    if n_seeds < 1:
        raise ConfigError(f"seeds must be >= 1, got {n_seeds}")
    cfg = cfg.replace(
        model=model,
        loop=dataclasses.replace(loop, steps=n),
        schedule=cfg.schedule.within(n),
        # every step logged (the pairs/s median), evaluation after training only, one checkpoint
        logging=dataclasses.replace(
            cfg.logging, every_steps=1, eval_every_steps=0, progress=False, loss_png=False
        ),
        checkpoint=dataclasses.replace(cfg.checkpoint, every_steps=0, keep_last=1, resume=""),
    )
    token_options = dict(TOKEN_OPTIONS) if config is None else {}
    if quick and config is None:
        token_options["tokenizer_texts"] = QUICK_TOKENIZER_TEXTS
    return ComparePlan(
        train=cfg,
        architectures=parse_architectures(architectures),
        seeds=tuple(cfg.loop.seed + k for k in range(n_seeds)),
        retrieval_pairs=100 if quick else RETRIEVAL_PAIRS,
        zeroshot_images=32 if quick else ZEROSHOT_IMAGES,
        tasks=QUICK_TASKS if quick else TaskPlan(),
        token_options=token_options,
        out=Path(out),
    )


def row_config(plan: ComparePlan, architecture: str, seed: int) -> TrainConfig:
    """The shared config with this row's [model] keys, this seed and its own run directory
    (`out/runs/<architecture>/seed<seed>`). Raises ConfigError naming an unknown [model] key
    (a trainer without the baselines' `model.architecture`)."""
    if architecture not in ROWS:
        raise ValueError(f"unknown row {architecture!r}; known: {', '.join(ROWS)}")
    d = plan.train.to_dict()
    model: dict[str, Any] = dict(d["model"])
    model["ink_only_text"] = architecture == "clippo-ink"
    if architecture in TOKEN_ROWS:
        model.update(plan.token_options)
        model["architecture"] = architecture
    elif "architecture" in {f.name for f in dataclasses.fields(ModelSection)}:
        model["architecture"] = "clippo"
    d["model"] = model
    d["loop"] = {**d["loop"], "seed": seed}
    run_dir = plan.out / "runs" / architecture / f"seed{seed}"
    d["logging"] = {**d["logging"], "run_dir": str(run_dir)}
    try:
        return config_from_dict(d)
    except ConfigError as e:
        raise ConfigError(f"row {architecture!r}: {e}") from None


def param_count(model: Any) -> int:
    """Number of parameters (every tensor of `model.parameters()`, shared ones once)."""
    return int(sum(p.numel() for p in model.parameters()))


def heldout_metrics(hook: HeldoutEval, model: Any) -> dict[str, float]:
    """Held-out retrieval (R@1/R@5 both ways, modality gap) and zero-shot accuracy on the
    sets of `hook` (the demo's, with its caption-like prompts)."""
    encoders = as_encoders(model)
    rs = hook.retrieval
    out = evaluate_retrieval(*encoders, rs.images, list(rs.texts), rs.image_ids_for_text, ks=(1, 5))
    metrics = {k: float(v) for k, v in out.items() if k not in ("n_images", "n_texts")}
    for task, zs in hook.zeroshot.items():
        r = evaluate_zeroshot(encoders, zs.images, zs.labels, zs.class_names, hook.prompts[task])
        metrics[f"zeroshot/{task}"] = float(r["accuracy"])
    return metrics


def text_encode_ms(model: Any, texts: Sequence[str]) -> float:
    """Milliseconds per text to encode `texts` as evaluation does (rendering or tokenising
    included; ink-only as trained), after one warm-up call on a few of them."""
    import torch

    _, encode_texts = as_encoders(model)
    with torch.no_grad():
        encode_texts(list(texts[:8]))
        t0 = time.perf_counter()
        encode_texts(list(texts))
        return 1000 * (time.perf_counter() - t0) / len(texts)


def run_row(
    plan: ComparePlan,
    architecture: str,
    seed: int,
    world: synthetic.SyntheticConfig,
    hook: HeldoutEval,
) -> dict[str, Any]:
    """Train one row with one seed, evaluate it -> {"metrics": {...}, "checkpoint": path,
    "steps": int}."""
    from clippo.train import train
    from clippo.train.log import read_metrics

    cfg = row_config(plan, architecture, seed)
    run_dir = Path(cfg.logging.run_dir)
    if run_dir.exists():  # compare's own scratch run: start afresh every time
        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    result = train(cfg)
    t_train = time.perf_counter() - t0
    model = result.model.eval()
    records = read_metrics(run_dir / "metrics.jsonl")
    rates = [r["pairs_per_s"] for r in records if isinstance(r.get("pairs_per_s"), (int, float))]
    # the first step pays for start-up (worker spawn, allocation): left out when there are more
    rates = rates[1:] if len(rates) > 1 else rates
    t1 = time.perf_counter()
    metrics: dict[str, float] = {
        "params": param_count(model),
        "train/pairs_per_s": float(np.median(rates)),
        **heldout_metrics(hook, model),
        "text_encode/ms_per_text": text_encode_ms(model, hook.retrieval.texts),
    }
    for task in run_tasks(model, world, plan.tasks, seed).values():
        metrics.update(task["metrics"])
    metrics["seconds/train"] = t_train
    metrics["seconds/eval"] = time.perf_counter() - t1
    return {
        "metrics": metrics,
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "steps": result.step,
    }


def summarise(seeds: Sequence[Mapping[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Per-seed metrics -> (mean, std over seeds, population std) of every metric all seeds have."""
    keys = [k for k in seeds[0] if all(k in s for s in seeds)]
    values = {k: np.array([s[k] for s in seeds], dtype=np.float64) for k in keys}
    return (
        {k: float(v.mean()) for k, v in values.items()},
        {k: float(v.std()) for k, v in values.items()},
    )


def table_rows(rows: Sequence[Mapping[str, Any]], stat: str = "mean") -> list[dict[str, Any]]:
    """A printed table: one line per row, each metric's `stat` over the seeds ("mean" or
    "std"; params as an int)."""
    out = []
    for row in rows:
        line: dict[str, Any] = {"architecture": row["architecture"], "seeds": len(row["seeds"])}
        for key, label in TABLE_COLUMNS:
            line[label] = row["params"] if key == "params" else row[stat].get(key)
        out.append(line)
    return out


def recall_at_1(metrics: Mapping[str, float]) -> float:
    """Held-out R@1, the mean of image->text and text->image."""
    return (metrics["img2txt/r@1"] + metrics["txt2img/r@1"]) / 2


PLOT_MARKERS = ("o", "s", "^", "D")


def spread_labels(
    boxes: Sequence[tuple[float, float, float]],
    height: float,
    obstacles: Sequence[tuple[float, float, float]] = (),
) -> list[float]:
    """Vertical centres (display units) for labels spanning x0..x1 at centre y, each box given
    as (x0, x1, y): a label moves up past every label placed before it (lowest first) and every
    obstacle (x0, x1, y), such as a marker, whose span it overlaps and that lies closer than
    `height`. Rows often coincide (CLIPPO and CLIPPO ink-only share a parameter count; CLIP*
    and 1T-CLIP land on one point), and their names must stay readable."""
    placed: list[tuple[float, float, float]] = list(obstacles)
    ys = [b[2] for b in boxes]
    for i in sorted(range(len(boxes)), key=lambda i: boxes[i][2]):
        x0, x1, _ = boxes[i]
        moved = True
        while moved:  # each move can bring a new neighbour into reach
            moved = False
            for a0, a1, ay in placed:
                # (not abs(ys - ay) < height: (ay + height) - ay can round below height)
                if a0 < x1 and x0 < a1 and ay - height < ys[i] < ay + height:
                    ys[i], moved = ay + height, True
        placed.append((x0, x1, ys[i]))
    return ys


def plot_compare(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """PNG: held-out R@1 (mean of both directions; error bars: std over seeds) against the
    text-encode time per text (left) and the parameter count (right), one point per row."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), dpi=100)
    axes = fig.subplots(1, 2)
    points: list[list[tuple[float, float]]] = [[], []]
    for i, row in enumerate(rows):
        per_seed = [recall_at_1(s) for s in row["seeds"]]
        y, dy = float(np.mean(per_seed)), float(np.std(per_seed))
        ms = [s["text_encode/ms_per_text"] for s in row["seeds"]]
        xs = ((float(np.mean(ms)), float(np.std(ms))), (row["params"] / 1e6, 0.0))
        marker = PLOT_MARKERS[i % len(PLOT_MARKERS)]
        for k, (ax, (x, dx)) in enumerate(zip(axes, xs)):
            ax.errorbar(x, y, yerr=dy, xerr=dx, fmt=marker, capsize=4, label=row["architecture"])
            points[k].append((x, y))
    for ax, xlabel in zip(axes, ("text encoding (ms per text)", "parameters (M)")):
        # from zero, so that the distances read as cost ratios
        ax.set(xlabel=xlabel, ylabel="held-out R@1 (mean of both directions)", ylim=(0, 1))
        ax.set_xlim(left=0, right=ax.get_xlim()[1] * 1.1)  # room for the labels
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc="best")
    fig.suptitle("quality against cost (error bars: std over seeds)")
    fig.tight_layout()
    names = [row["architecture"] for row in rows]
    for ax, data_points in zip(axes, points):
        # labels are placed in display pixels, once the layout has fixed the axes' transforms
        shown = [tuple(ax.transData.transform(p)) for p in data_points]
        # centred above each point: clear of the horizontal error bars (timings vary most)
        half = [3.5 * len(n) + 2 for n in names]
        boxes = [(x - h, x + h, y + 14) for h, (x, y) in zip(half, shown)]
        markers = [(x - 6, x + 6, y) for x, y in shown]
        ys = spread_labels(boxes, height=15.0, obstacles=markers)
        for name, (x, y), (_, _, first), ly in zip(names, shown, boxes, ys):
            ax.annotate(
                name,
                (x, y),
                xycoords="figure pixels",
                xytext=(0, ly - y),
                textcoords="offset pixels",
                ha="center",
                va="center",
                # a label moved away from its point is tied to it by a thin line
                arrowprops={"arrowstyle": "-", "lw": 0.5, "alpha": 0.5} if ly != first else None,
            )
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return write_bytes_atomic(path, buf.getvalue())


def run_compare(plan: ComparePlan, threads: int | None = 1) -> dict[str, Any]:
    """Train and evaluate every row with every seed; write `out/results.json` and
    `out/compare.png`, print the table. Returns the results dict."""
    import torch

    t_start = time.perf_counter()
    if threads is not None:
        torch.set_num_threads(threads)
    # every row's config is checked before the first (long) training
    for arch in plan.architectures:
        row_config(plan, arch, plan.seeds[0])
    world = scene_config(plan.train)
    hook = HeldoutEval(world, plan.retrieval_pairs, plan.zeroshot_images)
    rows = []
    for arch in plan.architectures:
        runs = [run_row(plan, arch, seed, world, hook) for seed in plan.seeds]
        seeds = [r["metrics"] for r in runs]
        mean, std = summarise(seeds)
        rows.append(
            {
                "architecture": arch,
                "params": int(seeds[0]["params"]),
                "model": row_config(plan, arch, plan.seeds[0]).to_dict()["model"],
                "seeds": seeds,
                "mean": mean,
                "std": std,
                "seed_values": list(plan.seeds),
                "checkpoints": [r["checkpoint"] for r in runs],
                "steps": runs[0]["steps"],
            }
        )
    png = plot_compare(rows, plan.out / "compare.png")
    table = table_rows(rows)
    total = time.perf_counter() - t_start
    results: dict[str, Any] = {
        "rows": rows,
        "config": plan.train.to_dict(),
        "world": world.to_dict(),
        "evaluation": {
            "retrieval_pairs": plan.retrieval_pairs,
            "zeroshot_images": plan.zeroshot_images,
            "tasks": dataclasses.asdict(plan.tasks),
        },
        "token_options": dict(plan.token_options),
        "table": table,
        "threads": torch.get_num_threads(),
        "seconds": total,
        "files": {"plot": str(png)},
    }
    write_json_atomic(jsonable(results), plan.out / "results.json")
    print(
        f"\n{len(plan.seeds)} seed(s) x {len(rows)} row(s), {plan.train.loop.steps} steps of "
        f"batch {plan.train.loop.batch_size}; held-out retrieval over {plan.retrieval_pairs} "
        "unseen (colour, shape) scenes; means over seeds:"
    )
    print(format_table(table))
    if len(plan.seeds) > 1:
        print("\nstandard deviations over the seeds:")
        print(format_table(table_rows(rows, "std")))
    print(f"total {total:.0f} s; results in {plan.out / 'results.json'}, plot in {png}")
    return results


# ---- the command --------------------------------------------------------------------------------


def _architectures_arg(text: str) -> tuple[str, ...]:
    """`type=` for --architectures: a bad name is a usage error listing the known rows."""
    try:
        return parse_architectures(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--architectures: ")) from None


def _run(args: argparse.Namespace) -> int:
    plan = compare_plan(
        args.config,
        args.out,
        seeds=args.seeds,
        steps=args.steps,
        architectures=args.architectures,
        quick=args.quick,
    )
    run_compare(plan, threads=args.threads)
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "compare",
        help="train CLIPPO, CLIPPO ink-only, CLIP* and 1T-CLIP side by side and compare them",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "config",
        nargs="?",
        default=None,
        help="preset name or TOML file (default: the demo's recipe on the compare world)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--seeds", type=positive_int, default=None, help="seeds per row (default: 2; --quick: 1)"
    )
    p.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help=f"training steps per run (default: the config's; {DEFAULT_STEPS} by default)",
    )
    p.add_argument(
        "--architectures",
        type=_architectures_arg,
        default=ROWS,
        help=f"comma-separated rows (default: {','.join(ROWS)})",
    )
    p.add_argument("--quick", action="store_true", help="a few steps of each row, one seed")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch math threads (default: %(default)s, beside one data worker)",
    )
    p.set_defaults(func=_run)
