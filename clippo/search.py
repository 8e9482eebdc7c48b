"""Nearest-neighbour search over embeddings (the library side of `clippo index` / `clippo search`).

An `Index` holds L2-normalised float32 vectors [N, D] in a faiss index (inner product, so scores
are cosine similarities), a metadata table row-aligned with the vectors, and a small JSON meta.
Up to `exact_up_to` vectors it is exact (`IndexFlatIP`); beyond, approximate (HNSW or IVF-flat),
and the build measures its recall@10 against exact search with queries that are not indexed
rows: held-out queries when the caller has them (e.g. the other modality's embeddings), else
perturbed rows (`perturbed_queries`). Indexed rows as queries would flatter a graph index: HNSW
reaches the row itself and its links are its neighbours.

On disk (a folder): `index.faiss`, `metadata.parquet` (row i describes vector i) and
`meta.json` (format version, kind, embedding size, count, model, metadata columns, recall).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from clippo.atomic import atomic_path, write_json_atomic

FORMAT_VERSION = 1
INDEX_FILE, META_FILE, METADATA_FILE = "index.faiss", "meta.json", "metadata.parquet"
KINDS = ("exact", "hnsw", "ivf")
Approximate = Literal["hnsw", "ivf"]
RECALL_K = 10


def normalize(vectors: np.ndarray) -> np.ndarray:
    """float32 [N, D] rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(vectors, np.float32)
    if x.ndim != 2:
        raise ValueError(f"vectors must be [N, D], got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norms > 0, norms, 1.0), np.float32)


def combined_query(image_vec: np.ndarray, text_vec: np.ndarray, weight: float) -> np.ndarray:
    """ALIGN's image+text query: normalise(W * image + (1 - W) * text), [D] or [B, D] each."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    image, text = np.atleast_2d(image_vec), np.atleast_2d(text_vec)
    if image.shape != text.shape:
        raise ValueError(f"image query {image.shape} and text query {text.shape} differ in shape")
    mixed = normalize(weight * normalize(image) + (1.0 - weight) * normalize(text))
    return mixed if np.ndim(image_vec) == 2 else mixed[0]


def brute_force_topk(
    data: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k with numpy: (scores [B, k], ids [B, k]), best first."""
    sims = np.asarray(queries, np.float32) @ np.asarray(data, np.float32).T
    k = min(k, sims.shape[1])
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, axis=1), ids


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of `truth` [B, k] ids that `found` [B, k'] holds."""
    hits = [len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth)]
    return float(np.sum(hits) / truth.size) if truth.size else 1.0


@dataclass(frozen=True)
class IndexParams:
    """Approximate-index settings. hnsw: `hnsw_m` links per node, `ef_search` candidates per
    query; ivf: `nlist` cells (None: sqrt(N)), `nprobe` cells visited per query. The recall at
    build uses `recall_sample` queries; without held-out ones, rows perturbed by
    `recall_noise` (see `perturbed_queries`)."""

    approximate: Approximate = "hnsw"
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    nlist: int | None = None
    nprobe: int = 32
    recall_sample: int = 1000
    recall_noise: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.approximate not in ("hnsw", "ivf"):
            raise ValueError(f"approximate must be 'hnsw' or 'ivf', got {self.approximate!r}")
        for name in ("hnsw_m", "ef_construction", "ef_search", "nprobe", "recall_sample"):
            if getattr(self, name) < 1:
                raise ValueError(f"IndexParams.{name} must be >= 1, got {getattr(self, name)}")
        if not self.recall_noise > 0:
            raise ValueError(f"IndexParams.recall_noise must be > 0, got {self.recall_noise}")


def perturbed_queries(x: np.ndarray, count: int, noise: float, seed: int) -> np.ndarray:
    """`count` queries near the data but not in it: normalise(row + noise * g), a random row of
    unit vectors `x` [N, D] and g a random unit direction, so cos(query, row) ~ 1 / sqrt(1 +
    noise^2) (0.71 at noise 1): a query that resembles some indexed item without being it."""
    rng = np.random.default_rng(seed)
    rows = x[rng.choice(len(x), min(len(x), count), replace=False)]
    g = normalize(rng.standard_normal(rows.shape).astype(np.float32))
    return normalize(rows + noise * g)


def _approximate(x: np.ndarray, params: IndexParams) -> Any:
    import faiss

    d = x.shape[1]
    index: Any
    if params.approximate == "hnsw":
        index = faiss.IndexHNSWFlat(d, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
        index.hnsw.efSearch = params.ef_search
        index.add(x)
        return index
    nlist = params.nlist or max(1, int(np.sqrt(len(x))))
    nlist = min(nlist, len(x))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    # k-means on at most 256 points per cell: faiss's own guidance, and it bounds build time
    rng = np.random.default_rng(params.seed)
    train = x[rng.choice(len(x), min(len(x), 256 * nlist), replace=False)]
    index.train(train)
    index.add(x)
    index.nprobe = min(params.nprobe, nlist)
    return index


@dataclass
class Index:
    """A faiss index over unit vectors, with row-aligned metadata and its meta (see module)."""

    faiss_index: Any
    meta: dict[str, Any]
    metadata: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def kind(self) -> str:
        return str(self.meta["kind"])

    def __len__(self) -> int:
        return int(self.meta["count"])

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        metadata: Mapping[str, Sequence[Any]] | None = None,
        *,
        exact_up_to: int = 100_000,
        params: IndexParams = IndexParams(),
        model: str | None = None,
        modality: str | None = None,
        recall_queries: np.ndarray | None = None,
    ) -> Index:
        """Index `embeddings` [N, D] (normalised here). Exact when N <= exact_up_to; else the
        approximate kind in `params`, whose recall@10 against exact search is stored in
        `meta["recall_at_10"]`, measured with up to `params.recall_sample` of `recall_queries`
        [Q, D] (held-out queries) or, without them, `perturbed_queries` of the data; how is
        in `meta["recall_queries"]`."""
        import faiss

        x = normalize(embeddings)
        n, d = x.shape
        if n == 0:
            raise ValueError("cannot index 0 embeddings")
        columns = {k: list(v) for k, v in (metadata or {}).items()}
        for name, values in columns.items():
            if len(values) != n:
                raise ValueError(f"metadata column {name!r} has {len(values)} rows for {n} vectors")
        meta: dict[str, Any] = {
            "version": FORMAT_VERSION,
            "dim": d,
            "count": n,
            "model": model,
            "modality": modality,
            "columns": list(columns),
        }
        if n <= exact_up_to:
            index = faiss.IndexFlatIP(d)
            index.add(x)
            meta.update(kind="exact", recall_at_10=1.0)
        else:
            index = _approximate(x, params)
            if recall_queries is not None:
                held = normalize(recall_queries)
                if held.shape[1] != d or len(held) == 0:
                    raise ValueError(f"recall_queries {held.shape} do not fit embeddings [N, {d}]")
                pick = np.random.default_rng(params.seed).permutation(len(held))
                sample = held[np.sort(pick[: params.recall_sample])]
                meta["recall_queries"] = f"held-out ({len(sample)})"
            else:
                sample = perturbed_queries(
                    x, params.recall_sample, params.recall_noise, params.seed
                )
                meta["recall_queries"] = (
                    f"perturbed rows ({len(sample)}, noise {params.recall_noise})"
                )
            exact = faiss.IndexFlatIP(d)
            exact.add(x)
            _, truth = exact.search(sample, RECALL_K)
            _, found = index.search(sample, RECALL_K)
            meta.update(kind=params.approximate, recall_at_10=recall_at_k(found, truth))
            meta["params"] = {k: v for k, v in vars(params).items()}
            if params.approximate == "ivf":
                meta["params"].update(nlist=int(index.nlist), nprobe=int(index.nprobe))
        return cls(index, meta, columns)

    def query(self, vectors: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """queries [B, D] (or [D]) -> (scores float32 [B, k'], ids int64 [B, k']), best first;
        k' = min(k, len(self)). Queries are normalised, so scores are cosine similarities."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = normalize(np.atleast_2d(vectors))
        if q.shape[1] != self.dim:
            raise ValueError(f"query size {q.shape[1]} differs from the index's {self.dim}")
        scores, ids = self.faiss_index.search(q, min(k, len(self)))
        return scores, ids

    def rows(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """Metadata of rows `ids` as dicts (the columns present)."""
        return [{c: v[int(i)] for c, v in self.metadata.items()} for i in ids]

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the folder (each file atomically; meta.json last, so a folder with a meta.json
        is complete). Returns the folder."""
        import faiss
        import pyarrow as pa
        import pyarrow.parquet as pq

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / INDEX_FILE) as tmp:
            faiss.write_index(self.faiss_index, str(tmp))
        table = pa.table({c: pa.array(v) for c, v in self.metadata.items()})
        with atomic_path(out / METADATA_FILE) as tmp:
            pq.write_table(table, tmp)
        write_json_atomic(self.meta, out / META_FILE)
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Index:
        """Read a folder written by `save`. Errors name the file: missing (FileNotFoundError),
        an unknown version or an unreadable/inconsistent file (ValueError)."""
        import faiss
        import pyarrow.parquet as pq

        folder = Path(directory)
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: no index here (meta.json is missing)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{meta_path}: not a valid index meta file ({e})") from None
        if not isinstance(meta, dict) or meta.get("version") != FORMAT_VERSION:
            found = meta.get("version") if isinstance(meta, dict) else None
            raise ValueError(
                f"{meta_path}: unknown index version {found!r} (this clippo reads {FORMAT_VERSION})"
            )
        missing = [k for k in ("dim", "count", "kind", "columns") if k not in meta]
        if missing or meta["kind"] not in KINDS:
            raise ValueError(f"{meta_path}: missing keys {missing} or unknown kind")
        index_path = folder / INDEX_FILE
        if not index_path.is_file():
            raise FileNotFoundError(f"{index_path}: index file is missing")
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError as e:  # faiss reports a bad file as a RuntimeError with C++ context
            raise ValueError(f"{index_path}: not a readable faiss index ({str(e)[:80]})") from None
        if index.d != meta["dim"] or index.ntotal != meta["count"]:
            raise ValueError(
                f"{index_path}: holds {index.ntotal} x {index.d}, meta.json says "
                f"{meta['count']} x {meta['dim']}"
            )
        metadata: dict[str, list[Any]] = {}
        if meta["columns"]:
            table = pq.read_table(folder / METADATA_FILE)
            if table.num_rows != meta["count"]:
                raise ValueError(
                    f"{folder / METADATA_FILE}: {table.num_rows} rows, expected {meta['count']}"
                )
            metadata = {c: table.column(c).to_pylist() for c in meta["columns"]}
        return cls(index, meta, metadata)
