"""Evaluation speed: frozen-feature extraction, task heads, and the GLUE suite end to end.

    python benchmarks/eval.py                      # CPU rows (+ CUDA rows, B/16, when present)
    python benchmarks/eval.py --quick              # smoke run, well under a minute
    python benchmarks/eval.py --json eval.json     # the same numbers as JSON

Three tables, each with the baseline a user would otherwise write, measured in the same run:

1. Feature extraction, items/s: `clippo.eval.features.extract_features` (renders the next batch
   in a thread while the model runs this one) vs a plain loop that renders a batch, then runs
   `model.pooled` on it (no prefetch); same model, batch size, threads and items, the two
   interleaved over rounds, medians and the median of the per-round ratios. Items: GLUE sentence
   pairs (MRPC train, or synthetic pairs when the GLUE folder is absent) rendered as one image
   with `render_pair`, and VQA inputs (a JPEG photo decoded with `decode_image`, the question in
   a band above it with `render_on_image`). CPU: `--cpu-variants` (default tiny-test and S/16 at
   224 px, fp32); CUDA: B/16, bf16 autocast.
2. Head training on synthetic frozen features (N=5,000, D=768, float32): `fit_head` for C=3
   classes (its full-batch L-BFGS; one fit at the default grid's first weight decay, one at
   weight decay 1/N, which is LogisticRegression's default C=1 objective exactly, and the
   default selection grid: 6 weight decays on a held-out 10% slice + refit) vs scikit-learn's
   `LogisticRegression` (lbfgs, multinomial, on standardised features, default C) and, for the
   grid, `LogisticRegressionCV` over 6 values of C on the same kind of 10% slice; the held-out
   accuracy of each beside its time. VQA-like soft targets (K=3,129 answers,
   min(n/3, 1) values): one `fit_head` fit vs a plain full-batch torch loop (Adam, the same
   loss, L2 and standardisation) run until it reaches our held-out soft score or `--max-steps`;
   the score is the VQA-style credit of each row's top answer.
3. The GLUE suite on frozen features (`run_glue`: cola, sst2, mrpc, stsb, rte, wnli, at most
   `--max-examples` rows per split, 3 seeds, default heads) for tiny-test at 224 px (random
   weights: the time does not depend on them): cold (empty feature cache) and warm (the same
   cache directory, second run).
4. Retrieval metrics over random L2-normalised embeddings (5,000 images x 25,000 captions, five
   per image, D=768; `--quick`: 1,000 x 5,000): `retrieval_recalls` (scores computed in blocks of
   queries) vs the full-matrix form (`zimg @ ztxt.T` + `retrieval_metrics`): seconds and peak
   memory (tracemalloc: numpy's allocations), with the same recalls from both.
Everything runs with `--threads` torch threads (default 1; scikit-learn's BLAS gets the same):
on 2 cores that leaves `extract_features`' render thread a core, and on a shared 2-core machine
two torch threads stall each other (a head fit measured 10x slower with 2 than with 1 there).
The machine (processor, cores, torch threads, load average before and after) is printed with the
tables: on a shared machine, compare the columns of one run, not runs.
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import platform
import statistics
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from clippo.atomic import write_json_atomic
from clippo.data import synthetic
from clippo.data.images import decode_image
from clippo.eval.features import extract_features
from clippo.eval.glue import GlueOptions, run_glue
from clippo.eval.glue_data import read_split
from clippo.eval.heads import LINEAR_WEIGHT_DECAYS, HeadConfig, fit_head, head_loss
from clippo.eval.results import format_table, jsonable
from clippo.eval.retrieval import retrieval_metrics, retrieval_recalls
from clippo.model.one_tower import CLIPPO
from clippo.preprocess import images_to_pixels
from clippo.render import render_on_image, render_pair

GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "rte", "wnli")  # the measurable ones in glue_data
DEFAULT_GLUE_DIR = Path(__file__).resolve().parents[2] / "shared" / "glue_data"
QUESTIONS = (
    "what colour is the shape on the left?",
    "how many objects are in the picture?",
    "is the large square above the small circle?",
    "what is the person next to the bus holding?",
    "which shape is nearest to the top right corner of the image?",
)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(threads: int) -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "cores": cores,
        "torch_threads": threads,
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "load_average_start": os.getloadavg()[0],
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# --- 1. feature extraction -------------------------------------------------------------------


def glue_pairs(glue_dir: Path, n: int) -> tuple[list[tuple[str, str]], str]:
    """n sentence pairs: MRPC train (cycled) when the GLUE folder is there, else synthetic."""
    if (glue_dir / "MRPC").is_dir():
        rows = read_split(glue_dir, "mrpc", "train", max_examples=n).examples
        pairs = [(ex.text_a, ex.text_b or "") for ex in rows]
        source = f"MRPC train ({glue_dir})"
    else:
        ds = synthetic.SyntheticTextPairs(synthetic.SyntheticConfig())
        pairs = [ds[i] for i in range(n)]
        source = "synthetic caption pairs (no GLUE folder)"
    return (pairs * (n // len(pairs) + 1))[:n], source


def vqa_items(n: int, photos: int = 32) -> list[tuple[bytes, str]]:
    """n (JPEG bytes, question) rows: synthetic scenes saved as 640x480 JPEGs (COCO's usual
    size), so each item costs a decode, a resize and a render as a real VQA row does."""
    ds = synthetic.SyntheticImageText(synthetic.SyntheticConfig(image_size=128))
    jpegs = []
    for i in range(photos):
        buf = io.BytesIO()
        Image.fromarray(ds[i][0]).resize((640, 480), Image.Resampling.BILINEAR).save(
            buf, format="JPEG", quality=90
        )
        jpegs.append(buf.getvalue())
    return [(jpegs[i % photos], QUESTIONS[i % len(QUESTIONS)]) for i in range(n)]


def pair_renderer(model: CLIPPO) -> Callable[[Sequence[tuple[str, str]]], np.ndarray]:
    """What the GLUE suite renders: pairs -> uint8 [B, S, S, 3], one image per pair."""
    r = model.renderer

    def to_images(batch: Sequence[tuple[str, str]]) -> np.ndarray:
        return np.stack([render_pair(r, a, b) for a, b in batch])

    return to_images


def vqa_renderer(model: CLIPPO) -> Callable[[Sequence[tuple[bytes, str]]], np.ndarray]:
    """(JPEG, question) rows -> uint8 [B, S, S, 3]: the question in the top half, the photo below."""
    r = model.renderer

    def to_images(batch: Sequence[tuple[bytes, str]]) -> np.ndarray:
        return np.stack([render_on_image(r, decode_image(jpg), q) for jpg, q in batch])

    return to_images


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def plain_loop(
    model: CLIPPO,
    items: Sequence[Any],
    to_images: Callable[[Any], np.ndarray],
    batch_size: int,
    device: torch.device,
    bf16: bool,
) -> np.ndarray:
    """The baseline: render a batch, then encode it, one after the other -> float32 [N, width]."""
    out = []
    for lo in range(0, len(items), batch_size):
        pixels = images_to_pixels(to_images(items[lo : lo + batch_size])).to(device)
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            out.append(model.pooled(pixels).float().cpu().numpy())
    return np.concatenate(out)


def bench_extraction(
    variant: str, device: torch.device, bf16: bool, n: int, batch: int, rounds: int, glue_dir: Path
) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    model = CLIPPO.from_variant(variant, image_size=224).eval().to(device)
    pairs, source = glue_pairs(glue_dir, n)
    kinds: dict[str, tuple[Sequence[Any], Callable[[Any], np.ndarray]]] = {
        "GLUE pairs (render_pair)": (pairs, pair_renderer(model)),
        "VQA photo + question (JPEG, render_on_image)": (vqa_items(n), vqa_renderer(model)),
    }
    methods: dict[str, Callable[[Sequence[Any], Callable[[Any], np.ndarray]], np.ndarray]] = {
        "plain": lambda items, fn: plain_loop(model, items, fn, batch, device, bf16),
        "ours": lambda items, fn: extract_features(
            model, items, fn, batch_size=batch, device=device, bf16=bf16, progress=False
        ),
    }
    rows = []
    for kind, (items, fn) in kinds.items():
        for method in methods.values():  # warm-up: glyph tables, allocator, kernels
            method(items[: 2 * batch], fn)
        times: dict[str, list[float]] = {m: [] for m in methods}
        for rnd in range(rounds):
            # interleaved, alternating who goes first: load changes hit both alike
            order = list(methods) if rnd % 2 == 0 else list(methods)[::-1]
            for name in order:
                sync(device)
                t0 = time.perf_counter()
                methods[name](items, fn)
                sync(device)
                times[name].append(time.perf_counter() - t0)
        plain, ours = (statistics.median(times[m]) for m in ("plain", "ours"))
        rows.append(
            {
                "device": device.type,
                "model": f"{variant} @224" + (" bf16" if bf16 else " fp32"),
                "items": kind,
                "batch": batch,
                "plain loop items/s": n / plain,
                "extract_features items/s": n / ours,
                "speed-up": statistics.median(p / o for p, o in zip(times["plain"], times["ours"])),
                "slowest/fastest round": max(times["plain"]) / min(times["plain"]),
            }
        )
        print(f"  done: extraction {variant} {device.type} {kind}", flush=True)
    rows[0]["source"] = source
    return rows


# --- 2. head training ------------------------------------------------------------------------


def classification_data(
    n: int, n_test: int, d: int, c: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian classes around random means, features at unequal scales (as frozen features
    are), 5% of labels flipped: a linear problem with room for over- and underfitting."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(c, d)) * 0.06
    scales = rng.lognormal(0.0, 1.0, size=d)
    y = rng.integers(0, c, size=n + n_test)
    x = (means[y] + rng.normal(size=(n + n_test, d))) * scales
    flip = rng.random(n + n_test) < 0.05
    y = np.where(flip, rng.integers(0, c, size=n + n_test), y)
    x = x.astype(np.float32)
    return x[:n], y[:n], x[n:], y[n:]


def soft_target_data(
    n: int, n_test: int, d: int, k: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """VQA-like rows: a main answer drawn from a linear teacher plus a Zipf prior over K answers
    (credit 1.0, or 0.6 on a third of rows), and on half the rows a second answer at 0.3."""
    rng = np.random.default_rng(seed)
    total = n + n_test
    x = rng.normal(size=(total, d)).astype(np.float32)
    teacher = rng.normal(size=(d, k)).astype(np.float32) * 0.08
    prior = -1.2 * np.log(np.arange(1, k + 1))
    logits = x @ teacher + prior + rng.gumbel(size=(total, k))
    main = logits.argmax(1)
    y = np.zeros((total, k), np.float32)
    y[np.arange(total), main] = np.where(rng.random(total) < 1 / 3, 0.6, 1.0)
    second = rng.integers(0, k, size=total)
    extra = (rng.random(total) < 0.5) & (second != main)
    y[np.flatnonzero(extra), second[extra]] = 0.3
    return x[:n], y[:n], x[n:], y[n:]


def accuracy(scores: np.ndarray, y: np.ndarray) -> float:
    return float((scores.argmax(1) == y).mean())


def soft_score(scores: np.ndarray, y: np.ndarray) -> float:
    """VQA-style credit of each row's top answer, averaged over rows."""
    return float(y[np.arange(len(y)), scores.argmax(1)].mean())


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """(fn(*args, **kwargs), wall seconds)."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def sklearn_baselines(
    x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, threads: int, seed: int
) -> dict[str, tuple[float, float]]:
    """(seconds, held-out accuracy) of a single LogisticRegression fit and a 6-point C grid."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import ShuffleSplit
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    out = {}
    with (
        threadpool_limits(threads),  # the same number of threads as torch's
        warnings.catch_warnings(),  # defaults that change in later versions: not ours to set
    ):
        warnings.simplefilter("ignore", FutureWarning)
        one = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        _, t = timed(one.fit, x, y)
        out["one"] = (t, float(one.score(x_test, y_test)))
        grid = make_pipeline(
            StandardScaler(),
            LogisticRegressionCV(
                Cs=6,
                cv=ShuffleSplit(n_splits=1, test_size=0.1, random_state=seed),
                max_iter=1000,
            ),
        )
        _, t = timed(grid.fit, x, y)
        out["grid"] = (t, float(grid.score(x_test, y_test)))
    return out


def full_batch_loop(
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    target: float,
    max_steps: int,
    lr: float,
    wd: float,
    seed: int,
) -> tuple[float, float, int]:
    """The baseline for soft targets: standardise, Linear(D, K), full-batch Adam on the same
    loss and L2 as `fit_head`, until the held-out soft score reaches `target` (checked every 5
    steps, the checks timed too) or `max_steps` -> (seconds, score, steps)."""
    t0 = time.perf_counter()
    mean, std = x.mean(0), np.maximum(x.std(0), 1e-6)
    xs, xt = torch.from_numpy((x - mean) / std), torch.from_numpy((x_test - mean) / std)
    targets = torch.from_numpy(y)
    torch.manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], y.shape[1])
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    score, step = 0.0, 0
    while step < max_steps:
        loss = head_loss("soft_multilabel", head(xs), targets) + wd / 2 * (head.weight**2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 5 == 0 or step == max_steps:
            with torch.no_grad():
                score = soft_score(head(xt).numpy(), y_test)
            if score >= target:
                break
    return time.perf_counter() - t0, score, step


def bench_heads(args: argparse.Namespace, threads: int) -> list[dict[str, Any]]:
    n, n_test, d = args.head_rows, args.head_rows // 2, 768
    x, y, xt, yt = classification_data(n, n_test, d, 3)
    rows = []
    one_cfg = HeadConfig(weight_decays=LINEAR_WEIGHT_DECAYS[:1])  # the default grid's first point
    # sklearn's default C = 1 is weight decay 1 / N in fit_head's convention: the same objective
    same_cfg = HeadConfig(weight_decays=(1 / n,))
    for label, cfg in (
        ("one fit", one_cfg),
        ("one fit, sklearn's objective (C=1)", same_cfg),
        ("default grid (6 points + refit)", HeadConfig()),
    ):
        head, t = timed(fit_head, x, y, cfg, seed=0, select_metric=accuracy)
        rows.append(
            {
                "task": f"classification N={n} D={d} C=3",
                "fit": label,
                "method": "clippo fit_head",
                "seconds": t,
                "held-out score": accuracy(head.predict(xt), yt),
            }
        )
        print(f"  done: fit_head classification {label}", flush=True)
    base = sklearn_baselines(x, y, xt, yt, threads, seed=0)
    for key, label, method in (
        ("one", "one fit, sklearn's objective (C=1)", "sklearn LogisticRegression lbfgs"),
        ("grid", "default grid (6 points + refit)", "sklearn LogisticRegressionCV, 6 Cs"),
    ):
        t, acc = base[key]
        rows.append(
            {
                "task": f"classification N={n} D={d} C=3",
                "fit": label,
                "method": method,
                "seconds": t,
                "held-out score": acc,
            }
        )
    print("  done: sklearn", flush=True)

    k = 3129
    x, y, xt, yt = soft_target_data(n, n_test, d, k)
    cfg = HeadConfig(kind="soft_multilabel", learning_rates=(1e-2,), weight_decays=(1e-4,))
    head, t = timed(fit_head, x, y, cfg, seed=0, select_metric=soft_score)
    ours = soft_score(head.predict(xt), yt)
    task = f"soft targets N={n} D={d} K={k}"
    rows.append(
        {
            "task": task,
            "fit": "one fit",
            "method": "clippo fit_head",
            "seconds": t,
            "held-out score": ours,
        }
    )
    t, score, steps = full_batch_loop(x, y, xt, yt, ours, args.max_steps, 1e-2, 1e-4, seed=0)
    rows.append(
        {
            "task": task,
            "fit": "one fit",
            "method": f"torch full-batch Adam ({steps} steps, until our score)",
            "seconds": t,
            "held-out score": score,
        }
    )
    print("  done: soft targets", flush=True)
    return rows


# --- 3. GLUE end to end ----------------------------------------------------------------------


def bench_glue(args: argparse.Namespace) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    model = CLIPPO.from_variant("tiny-test", image_size=224).eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        options = GlueOptions(
            data_dir=str(args.glue_dir),
            tasks=GLUE_TASKS,
            max_examples=args.max_examples,
            seeds=args.seeds,
            cache_dir=str(Path(tmp) / "cache"),
        )
        for label in ("cold (empty cache)", "warm (same cache dir)"):
            _, t = timed(run_glue, model, options, Path(tmp) / "out", log=lambda s: None)
            rows.append(
                {
                    "model": "tiny-test @224 fp32",
                    "tasks": ",".join(GLUE_TASKS),
                    "max examples": args.max_examples,
                    "seeds": args.seeds,
                    "run": label,
                    "seconds": t,
                }
            )
            print(f"  done: glue {label}", flush=True)
    rows[1]["speed-up"] = rows[0]["seconds"] / rows[1]["seconds"]
    return rows


# --- 4. retrieval metrics ------------------------------------------------------------------------


def peak_run(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(fn(), seconds, peak MiB allocated while it ran, as tracemalloc sees numpy's buffers)."""
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return out, seconds, peak


def bench_retrieval(n_images: int, per_image: int = 5, dim: int = 768) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)

    def unit(n: int) -> np.ndarray:
        z = rng.standard_normal((n, dim)).astype(np.float32)
        return z / np.linalg.norm(z, axis=1, keepdims=True)

    zimg = unit(n_images)
    ids = np.repeat(np.arange(n_images), per_image)
    # captions a little nearer their image than chance (cosine ~0.16 where unrelated ones
    # scatter with std 1/sqrt(768) ~ 0.036), so the recalls are neither 0 nor 1
    ztxt = zimg[ids] + 6.0 * unit(len(ids))
    ztxt /= np.linalg.norm(ztxt, axis=1, keepdims=True)
    rows = []
    results = {}
    for name, fn in (
        ("blocked (retrieval_recalls)", lambda: retrieval_recalls(zimg, ztxt, ids)),
        ("full matrix (zimg @ ztxt.T + retrieval_metrics)",
         lambda: retrieval_metrics(zimg @ ztxt.T, ids)),
    ):  # fmt: skip
        out, seconds, peak = peak_run(fn)
        results[name] = out
        rows.append(
            {
                "method": name,
                "images x texts": f"{n_images:,} x {len(ids):,}",
                "seconds": seconds,
                "peak MiB": peak,
                "img2txt R@1": out["img2txt/r@1"],
                "txt2img R@1": out["txt2img/r@1"],
            }
        )
        print(f"  done: retrieval {name}", flush=True)
    a, b = results.values()
    if a != b:
        raise AssertionError(f"blocked and full-matrix recalls differ: {a} vs {b}")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    p.add_argument("--cpu-variants", default=None, help="default tiny-test,S/16 (quick: tiny-test)")
    p.add_argument("--gpu-variant", default="B/16")
    p.add_argument("--items", type=int, default=None, help="items per round (CPU)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 3, quick 1)")
    p.add_argument("--head-rows", type=int, default=None, help="head train rows (5000)")
    p.add_argument("--max-steps", type=int, default=None, help="full-batch baseline's limit")
    p.add_argument("--glue-dir", type=Path, default=DEFAULT_GLUE_DIR)
    p.add_argument("--max-examples", type=int, default=None, help="GLUE rows per split (500)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0: torch's default); 1 leaves extract_features' render thread "
        "a core of its own on 2 cores, and on a shared machine 2 threads stall each other",
    )
    p.add_argument(
        "--skip", default="", help="comma list of sections to skip: extract,heads,glue,retrieval"
    )
    p.add_argument(
        "--retrieval-images",
        type=int,
        default=None,
        help="retrieval section: images (5 captions each; default 5000, quick 1000)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    q = args.quick
    args.cpu_variants = args.cpu_variants or ("tiny-test" if q else "tiny-test,S/16")
    args.items = args.items or (128 if q else 512)
    args.rounds = args.rounds or (1 if q else 3)
    args.head_rows = args.head_rows or (1000 if q else 5000)
    args.max_steps = args.max_steps or (20 if q else 150)
    args.max_examples = args.max_examples or (50 if q else 500)
    args.retrieval_images = args.retrieval_images or (1000 if q else 5000)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    info = machine(threads)

    tables: dict[str, list[dict[str, Any]]] = {}
    if "extract" not in skip:
        rows = []
        for variant in args.cpu_variants.split(","):
            # the bigger tower is slower per item: fewer items keep its rounds short
            n = args.items if variant == "tiny-test" else max(args.items // 2, 2 * args.batch_size)
            rows += bench_extraction(
                variant, torch.device("cpu"), False, n, args.batch_size, args.rounds, args.glue_dir
            )
        if torch.cuda.is_available():
            rows += bench_extraction(
                args.gpu_variant,
                torch.device("cuda"),
                True,
                4 * args.items,
                4 * args.batch_size,
                args.rounds,
                args.glue_dir,
            )
        tables["extraction"] = rows
    if "heads" not in skip:
        tables["heads"] = bench_heads(args, threads)
    if "glue" not in skip:
        if (args.glue_dir / "CoLA").is_dir():
            tables["glue"] = bench_glue(args)
        else:
            print(f"GLUE suite skipped: no GLUE folder at {args.glue_dir} (--glue-dir)")
    if "retrieval" not in skip:
        tables["retrieval"] = bench_retrieval(args.retrieval_images)
    info["load_average_end"] = os.getloadavg()[0]

    print(
        f"\n{info['cpu']}, {info['cores']} cores, torch {info['torch']} with {threads} threads"
        + (f", {info['gpu']}" if "gpu" in info else "")
        + f"; load average {info['load_average_start']:.2f} at the start, "
        f"{info['load_average_end']:.2f} at the end; {info['date']}" + ("; --quick" if q else "")
    )
    titles = {
        "extraction": "Feature extraction (model.pooled), items/s, median of "
        f"{args.rounds} interleaved rounds",
        "heads": "Head training on synthetic features, seconds (held-out accuracy / soft score)",
        "glue": "GLUE suite on frozen features, wall seconds",
        "retrieval": "Retrieval recall@1/5/10 both ways from random embeddings (D=768): seconds "
        "and peak memory",
    }
    for name, rows in tables.items():
        columns = [c for c in dict.fromkeys(k for r in rows for k in r) if c != "source"]
        print(f"\n{titles[name]}")
        if name == "extraction":
            print(f"GLUE pairs from {rows[0]['source']}")
        print(
            format_table(rows, columns, floatfmt=".3f" if name in ("heads", "retrieval") else ".2f")
        )
    if args.json:
        write_json_atomic(jsonable({"machine": info, "args": vars(args), **tables}), args.json)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
