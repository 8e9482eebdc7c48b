"""Index build time, queries/s and recall@10 for random 768-d unit vectors: exact (IndexFlatIP,
the baseline) vs the approximate kinds `clippo index` builds beyond --exact-up-to. Recall is
shown twice: on held-out random queries, and as the build measured it (perturbed rows). Wall
and CPU seconds side by side: on a shared machine the wall time also counts waiting for a core
(with one thread, CPU seconds are what the work costs).

    python benchmarks/search.py            # 100k vectors
    python benchmarks/search.py --million  # 1M vectors as well
    python benchmarks/search.py --sizes 1000000 --kinds exact,ivf
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from clippo.eval.results import format_table
from clippo.search import Index, IndexParams, normalize, recall_at_k


def bench(n: int, dim: int, queries: int, kinds: list[str]) -> list[dict[str, object]]:
    rng = np.random.default_rng(0)
    data = normalize(rng.standard_normal((n, dim), dtype=np.float32))
    q = normalize(rng.standard_normal((queries, dim), dtype=np.float32))
    rows, truth = [], None
    for kind in kinds:
        params = IndexParams(approximate="ivf" if kind == "ivf" else "hnsw", recall_sample=200)
        start, cpu = time.perf_counter(), time.process_time()
        index = Index.build(data, exact_up_to=n if kind == "exact" else 0, params=params)
        build, build_cpu = time.perf_counter() - start, time.process_time() - cpu
        start, cpu = time.perf_counter(), time.process_time()
        _, ids = index.query(q, 10)
        qps = queries / (time.perf_counter() - start)
        qps_cpu = queries / max(time.process_time() - cpu, 1e-9)
        if truth is None:  # exact runs first: held-out queries' true top 10
            truth = ids
        rows.append(
            {
                "vectors": n,
                "index": kind,
                "build s": build,
                "build CPU s": build_cpu,
                "queries/s": qps,
                "queries/CPU s": qps_cpu,
                "recall@10 (held-out)": recall_at_k(ids, truth),
                "recall@10 (at build)": index.meta["recall_at_10"],
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--million", action="store_true", help="also 1M vectors (memory: ~3 GB)")
    p.add_argument(
        "--sizes", default=None, help="comma-separated vector counts (overrides --million)"
    )
    p.add_argument("--kinds", default="exact,hnsw,ivf", help="exact first: it gives the truth")
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--queries", type=int, default=1000)
    args = p.parse_args()
    rows = []
    kinds = args.kinds.split(",")
    if kinds[0] != "exact":
        p.error("--kinds must start with exact (its results are the recall's ground truth)")
    sizes = (100_000, 1_000_000) if args.million else (100_000,)
    if args.sizes:
        sizes = tuple(int(x) for x in args.sizes.split(","))
    for n in sizes:
        rows += bench(n, args.dim, args.queries, kinds)
        print(format_table(rows, floatfmt=".3f"), flush=True)


if __name__ == "__main__":
    main()
