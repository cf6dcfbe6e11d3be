"""``anybind eval chat``: ask the chat model which label each held-out attachment shows or says."""

from __future__ import annotations

from pathlib import Path

from anybind.chat.conversation import Attachment
from anybind.data.manifest import Manifest, read_manifest
from anybind.errors import InputError
from anybind.specs import BINDING_MODALITY, attachable
from anybind.models.space import embed_rows


def mentioned_labels(answer: str, labels: list[str], aliases: dict[str, list[str]] | None = None) -> list[str]:
    """Every label an answer names (by word, or an alias such as "7" for "seven"), in the order it
    names them. A numeral inside a larger number ("2,000", "2/5", "2.5") names no label."""
    import re

    found = {}
    for label in labels:
        for spelling in [label, *(aliases or {}).get(label, [])]:
            match = re.search(rf"(?<![\w-])(?<!\d[.,/]){re.escape(spelling)}(?![\w-])(?![.,/]\d)", answer,
                              flags=re.IGNORECASE)
            if match:
                found[label] = min(found.get(label, match.start()), match.start())
    return sorted(found, key=found.get)


def mentioned_label(answer: str, labels: list[str], aliases: dict[str, list[str]] | None = None) -> str | None:
    """The label an answer names first, if any."""
    named = mentioned_labels(answer, labels, aliases)
    return named[0] if named else None


def evaluate_chat(model, manifest: Manifest | Path | str, modalities: list[str] | None = None, limit: int = 100,
                  batch_size: int = 32, progress: bool = True) -> dict[str, dict]:
    """Ask the chat model which label each held-out attachment shows/says; accuracy per modality.

    ``image_projector``: through the projector trained on images (for other modalities this is
    emergent any-to-text, unless the instruct stage has since trained the model on every
    modality: ``instructed`` says whether instruct's conversations held this modality's
    attachments); ``own_projector``: through the modality's own projector.
    """
    from tqdm.auto import tqdm

    manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    if not manifest.labels:
        raise InputError(manifest.path, "has no labels: chat evaluation needs a 'label' on each row")
    question = manifest.question or "What is this?"
    wanted = modalities or attachable(model.modalities, manifest.modalities())
    results = {}
    for modality in wanted:
        rows = manifest.select("test", has=(modality, "label"))
        if limit and len(rows) > limit:
            rows = [rows[round(i * (len(rows) - 1) / (limit - 1))] for i in range(limit)] if limit > 1 else rows[:1]
        rows, embeddings = embed_rows(model, rows, modality)
        if not rows:
            continue
        attachments = [Attachment(modality, r[modality], e) for r, e in zip(rows, embeddings)]
        taught = getattr(model, "instructed_modalities", set())  # a bound model: none
        entry = {"n_test": len(rows), "question": question,
                 "instructed": bool(getattr(model, "instructed", False)) and modality in taught}
        routes = [("image_projector", BINDING_MODALITY)]
        if modality != BINDING_MODALITY and modality in model.projectors:
            routes.append(("own_projector", modality))
        for key, projector in routes:
            if projector not in model.projectors:
                continue
            answers = []
            for start in tqdm(range(0, len(rows), batch_size), desc=f"eval chat {modality} ({key})", unit="batch",
                              leave=False, disable=not progress):
                chunk = attachments[start : start + batch_size]
                answers += model.answer_batch([question] * len(chunk), chunk, projector=projector)
            correct = [mentioned_label(a, manifest.labels, manifest.aliases) == r["label"] for a, r in zip(answers, rows)]
            entry[key] = round(sum(correct) / len(rows), 4)
            entry.setdefault("examples", [{"file": Path(r[modality]).name, "label": r["label"], "answer": a}
                                          for r, a in list(zip(rows, answers))[:3]])
        results[modality] = entry
    return results
