"""A persistent retrieval index: a corpus embedded once into the shared space, searched many times.

``anybind retrieve`` without an index embeds the whole corpus for every query; with one it
embeds only the query. An index is a directory::

    INDEX/index.json            format, the model's fingerprint, dim, kind, count, modalities
    INDEX/vectors.safetensors   (N, D) float32, L2-normalised, in the order of paths.json
    INDEX/paths.json            [[modality, path], ...]
    INDEX/faiss.index           the FAISS index over the vectors (faiss's own format, no pickle)
    INDEX/.partial/             chunks embedded so far (a build that stops resumes from them)

Search is by inner product (cosine: the vectors are normalised). Below ``FLAT_BELOW`` vectors
the index is exact (``flat``); above it HNSW, which answers in milliseconds at a million
vectors with recall@10 near 1 (``bench/retrieve_speed.py``). ``kind`` overrides the choice.

The model's fingerprint is a hash of its towers' files: an index searched with another model
than it was built with is reported as stale, never silently wrong.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from anybind.errors import AnybindError, InputError
from anybind.models.feature_cache import file_hash
from anybind.persistence import check_writable, read_json
from anybind.retrieval import corpus_files, files_by_modality

FORMAT = "anybind.index"
FLAT_BELOW = 100_000
KINDS = ("auto", "flat", "hnsw", "ivf")
CHUNK = 256  # files embedded between two saved chunks of a build


class StaleIndex(AnybindError):
    pass


def model_fingerprint(model) -> str:
    """A hash of every tower's weights: it changes whenever the model does.

    A model loaded from a directory is hashed from its towers' files (config and safetensors),
    every tower the directory holds whether loaded or not, so a query loads only its own tower;
    a model that was never saved, from its weights in memory."""
    folder = getattr(model, "source", None) or getattr(model, "bound_dir", None)
    if folder is not None:
        return _files_fingerprint(Path(folder))
    digest = hashlib.sha256()
    for modality in sorted(model.towers):
        for name, tensor in sorted(model.towers[modality].state_dict().items()):
            digest.update(f"{modality}.{name}".encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _files_fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for modality in sorted(read_json(folder / "config.json").get("modalities", [])):
        for file in sorted((folder / modality).glob("*")):
            if file.name == "config.json" or file.suffix == ".safetensors":
                digest.update(f"{modality}/{file.name}:{file_hash(file)}".encode())
    return digest.hexdigest()[:16]


def _faiss():
    try:
        import faiss
    except ImportError:
        raise AnybindError("the retrieval index needs faiss: pip install faiss-cpu") from None
    return faiss


def make_faiss_index(vectors: np.ndarray, kind: str = "auto"):
    """A FAISS inner-product index over ``vectors`` (N, D): exact below FLAT_BELOW, else HNSW."""
    faiss = _faiss()
    n, dim = vectors.shape
    if kind == "auto":
        kind = "flat" if n < FLAT_BELOW else "hnsw"
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 128
    elif kind == "ivf":
        lists = max(1, min(n // 39, int(4 * np.sqrt(n))))  # faiss wants >= 39 training points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = max(1, lists // 16)
    else:
        raise AnybindError(f"unknown index kind {kind!r} (one of {', '.join(KINDS)})")
    index.add(vectors)
    return index, kind


class Index:
    """An index directory, loaded: its vectors, what each one is, and the FAISS index over them."""

    def __init__(self, path: Path, meta: dict, vectors: np.ndarray, entries: list[tuple[str, str]], faiss_index):
        self.path, self.meta, self.vectors, self.entries, self.faiss_index = path, meta, vectors, entries, faiss_index

    def __len__(self) -> int:
        return len(self.entries)

    @classmethod
    def load(cls, path: Path | str) -> "Index":
        from safetensors.numpy import load_file

        path = Path(path)
        meta = read_json(path / "index.json") if (path / "index.json").is_file() else None
        if not meta or meta.get("format") != FORMAT:
            raise InputError(path, "not an anybind index (no index.json); build one with anybind index build")
        try:
            vectors = load_file(str(path / "vectors.safetensors"))["vectors"]
            entries = [tuple(e) for e in json.loads((path / "paths.json").read_text())]
            faiss_index = _faiss().read_index(str(path / "faiss.index"))
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            raise InputError(path, f"the index is incomplete or damaged ({exc}); build it again") from None
        if not (len(vectors) == len(entries) == faiss_index.ntotal == meta.get("count")):
            raise InputError(path, "the index's vectors, paths and FAISS index disagree in size; build it again")
        return cls(path, meta, vectors, entries, faiss_index)

    def check_model(self, model) -> None:
        """Refuse a model other than the one the index was built with (its vectors would not compare)."""
        fingerprint = model_fingerprint(model)
        if self.meta["model"] != fingerprint:
            raise StaleIndex(f"{self.path}: the index was built with another model (fingerprint {self.meta['model']}, "
                             f"this model's is {fingerprint}); build it again: anybind index build "
                             f"CORPUS -o {self.path} --model MODEL")

    def search(self, query: np.ndarray, top_k: int = 5, modalities=()) -> list[tuple[float, str, str]]:
        """``(score, modality, path)`` of the ``top_k`` nearest entries, best first."""
        want = set(modalities)
        if not len(self):
            return []
        fetch = len(self) if want and not want >= set(self.meta["modalities"]) else top_k
        scores, ids = self.faiss_index.search(query.reshape(1, -1).astype(np.float32), min(fetch, len(self)))
        found = [(float(s), *self.entries[i]) for s, i in zip(scores[0], ids[0]) if i >= 0]
        return [f for f in found if not want or f[1] in want][:top_k]

    def save(self, kind: str | None = None) -> None:
        from safetensors.numpy import save_file

        self.faiss_index, self.meta["kind"] = make_faiss_index(self.vectors, kind or self.meta.get("requested", "auto"))
        self.meta.update(count=len(self.entries), modalities=sorted({m for m, _ in self.entries}))
        tmp = self.path / ".writing"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({"vectors": np.ascontiguousarray(self.vectors, dtype=np.float32)}, str(tmp / "vectors.safetensors"))
        (tmp / "paths.json").write_text(json.dumps([list(e) for e in self.entries]))
        _faiss().write_index(self.faiss_index, str(tmp / "faiss.index"))
        (tmp / "index.json").write_text(json.dumps(self.meta, indent=2, sort_keys=True))
        for name in ("vectors.safetensors", "paths.json", "faiss.index", "index.json"):  # index.json last: complete
            (tmp / name).replace(self.path / name)
        tmp.rmdir()


def _embed_new(model, files: list[str], partial: Path, progress: bool) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Embed ``files`` in chunks, each saved under ``partial`` (so a stopped build resumes);
    unreadable files are skipped and reported."""
    from safetensors.numpy import load_file, save_file
    from tqdm.auto import tqdm

    from anybind.models.space import embed_rows

    by_modality = files_by_modality(model, files)
    partial.mkdir(parents=True, exist_ok=True)
    vectors, entries, skipped = [], [], 0
    bar = tqdm(total=len(files), desc="index: embedding", unit="file", disable=not progress)
    for modality, paths in sorted(by_modality.items()):
        for start in range(0, len(paths), CHUNK):
            chunk = paths[start:start + CHUNK]
            key = hashlib.sha256(json.dumps([modality, chunk]).encode()).hexdigest()[:16]
            done = partial / f"{key}.safetensors"
            if done.is_file():  # embedded by an earlier run that stopped
                saved = load_file(str(done))["vectors"]
                kept = json.loads((partial / f"{key}.json").read_text())
            else:
                rows, emb = embed_rows(model, [{modality: p} for p in chunk], modality)
                saved, kept = emb.float().numpy(), [r[modality] for r in rows]
                save_file({"vectors": np.ascontiguousarray(saved)}, str(done))
                (partial / f"{key}.json").write_text(json.dumps(kept))
            skipped += len(chunk) - len(kept)
            vectors.append(saved)
            entries += [(modality, p) for p in kept]
            bar.update(len(chunk))
    bar.close()
    if skipped:
        print(f"index: skipped {skipped} unreadable file(s)")
    dim = model.embed_dim
    return (np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)), entries


def _indexable(model, files: list[str], modalities) -> list[str]:
    return [f for paths in files_by_modality(model, files, modalities).values() for f in paths]


def build_index(model, corpus, out, *, modalities=(), kind: str = "auto", progress: bool = True) -> Index:
    """Embed every file of ``corpus`` (a folder or manifest) the model reads into a new index at ``out``."""
    out = Path(out)
    if (out / "index.json").is_file():
        raise AnybindError(f"{out}: an index is already there; add files with anybind index add, or remove it first")
    if not out.is_dir():
        check_writable(out)  # its folder exists and is writable, before any embedding
        out.mkdir()
    files = _indexable(model, corpus_files(corpus), modalities)
    if not files:
        raise AnybindError(f"{corpus}: no files of a modality this model embeds ({', '.join(model.modalities)})")
    vectors, entries = _embed_new(model, files, out / ".partial", progress)
    if not entries:
        raise AnybindError(f"{corpus}: none of its {len(files)} files could be read")
    meta = {"format": FORMAT, "model": model_fingerprint(model), "dim": model.embed_dim, "requested": kind,
            "corpus": str(corpus)}
    index = Index(out, meta, vectors, entries, None)
    index.save(kind)
    shutil.rmtree(out / ".partial", ignore_errors=True)
    return index


def add_to_index(model, path, sources, *, modalities=(), progress: bool = True) -> tuple[Index, int]:
    """Embed the files of ``sources`` (folders, manifests or files) that the index lacks, and add them."""
    index = Index.load(path)
    index.check_model(model)
    have = {p for _, p in index.entries}
    files = []
    for source in sources:
        files += [str(source)] if Path(source).is_file() and not str(source).endswith(".jsonl") else corpus_files(source)
    new = [f for f in dict.fromkeys(_indexable(model, files, modalities)) if f not in have]
    if new:
        vectors, entries = _embed_new(model, new, index.path / ".partial", progress)
        index.vectors = np.concatenate([index.vectors, vectors])
        index.entries += entries
        index.save()
        shutil.rmtree(index.path / ".partial", ignore_errors=True)
    return index, len(new)
