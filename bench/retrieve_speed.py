"""Query latency and recall@10 of the retrieval index (anybind.index) on synthetic vectors.

Vectors are 128-d and L2-normalised like the shared space's, drawn around 1,000 random
centres (embeddings of a real corpus cluster by what they show; uniform random vectors
would be a harder and unrealistic case). Queries are other points near those centres,
answered one at a time as `anybind retrieve --index` does. Recall@10 is against exact search.

    python bench/retrieve_speed.py                 # 10k, 100k and 1M
    python bench/retrieve_speed.py --sizes 10000   # quick
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def clustered(n: int, dim: int, centres: np.ndarray, rng: np.random.Generator, spread: float = 0.35) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + rng.normal(0, spread / np.sqrt(dim), (n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    import faiss

    from anybind.index import make_faiss_index

    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(1000, args.dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    print(f"{'vectors':>9}  {'kind':>5}  {'build s':>8}  {'ms/query':>8}  {'exact ms':>8}  {'speed-up':>8}  {'recall@10':>9}")
    for n in args.sizes:
        vectors = clustered(n, args.dim, centres, rng)
        queries = clustered(args.queries, args.dim, centres, rng)
        began = time.perf_counter()
        index, kind = make_faiss_index(vectors)
        build = time.perf_counter() - began
        exact = faiss.IndexFlatIP(args.dim)
        exact.add(vectors)
        found, truth = [], []
        began = time.perf_counter()
        for q in queries:
            found.append(index.search(q[None], 10)[1][0])
        per_query = (time.perf_counter() - began) / len(queries) * 1000
        began = time.perf_counter()
        for q in queries:
            truth.append(exact.search(q[None], 10)[1][0])
        per_exact = (time.perf_counter() - began) / len(queries) * 1000
        recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
        print(f"{n:>9,}  {kind:>5}  {build:>8.1f}  {per_query:>8.2f}  {per_exact:>8.2f}  {per_exact / per_query:>7.1f}x  {recall:>9.3f}",
              flush=True)


if __name__ == "__main__":
    main()
