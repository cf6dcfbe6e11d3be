"""Cross-modal retrieval: rank a corpus's files by similarity to a query in the shared space."""

from __future__ import annotations

from pathlib import Path

from anybind import plugins
from anybind.data.manifest import read_manifest
from anybind.errors import AnybindError
from anybind.models.space import embed_rows, resolve_input
from anybind.specs import attachable


def corpus_files(corpus: Path | str) -> list[str]:
    """Every file of a corpus: a manifest's (a .jsonl file, or a folder with manifest.jsonl) or,
    for a plain folder, each file an installed plugin reads."""
    corpus = Path(corpus)
    if corpus.is_file() or (corpus / "manifest.jsonl").is_file():
        parsed = read_manifest(corpus)
        return [row[m] for row in parsed.rows for m in attachable(parsed.modalities(), row)]
    known = {s for spec in plugins.modalities().values() for s in spec.suffixes}
    return sorted(str(p) for p in corpus.rglob("*") if p.is_file() and p.suffix.lower() in known)


def files_by_modality(model, files, modalities=()) -> dict[str, list[str]]:
    """``files`` grouped by the modality that reads each, keeping those the model embeds (and,
    given ``modalities``, only those)."""
    by_modality: dict[str, list[str]] = {}
    for f in files:
        spec = plugins.modality_for_path(f)
        if spec.name in model.towers and (not modalities or spec.name in modalities):
            by_modality.setdefault(spec.name, []).append(f)
    return by_modality


def retrieve(model, query: str, corpus: Path | str, top_k: int = 5,
             modalities: list[str] | tuple[str, ...] = ()) -> list[tuple[float, str, str]]:
    """The ``top_k`` corpus files nearest ``query`` (a file or text): ``(score, modality, path)``, best first."""
    by_modality = files_by_modality(model, corpus_files(corpus), modalities)
    if not by_modality:
        raise AnybindError(f"{corpus}: no files of a modality this model embeds ({', '.join(model.modalities)})")
    query_vec = model.embed_resolved([resolve_input(query)])[0]
    scored = []
    for modality, paths in by_modality.items():
        rows, emb = embed_rows(model, [{modality: p} for p in paths], modality)
        scored += [(float(s), modality, r[modality]) for s, r in zip((emb @ query_vec).tolist(), rows)]
    scored.sort(reverse=True)
    return scored[:top_k]
