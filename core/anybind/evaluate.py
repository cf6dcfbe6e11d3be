"""``anybind eval bind``: how well the shared space works on held-out data.

Per modality: zero-shot top-1 against text prompts (emergent for every modality but image,
which saw text in training), cross-modal retrieval R@1 (each held-out item's nearest
held-out image, or for image its nearest prompt, has the same label), and a supervised
linear probe on the same frozen embeddings as the upper bound zero-shot is compared to.
"""

from __future__ import annotations

from pathlib import Path

import torch

from anybind import plugins
from anybind.errors import InputError
from anybind.model import AnybindModel
from anybind.world import Manifest, read_manifest


def embed_rows(model: AnybindModel, rows: list[dict], modality: str, skip_bad: bool = True):
    """Embed each row's file; returns (kept rows, (N, D) embeddings)."""
    spec = plugins.get_modality(modality)
    kept, raws = [], []
    for row in rows:
        try:
            raws.append(spec.load(row[modality]))
            kept.append(row)
        except (InputError, FileNotFoundError):
            if not skip_bad:
                raise
    return kept, model.embed_raw(modality, raws) if raws else torch.empty(0, model.embed_dim)


def linear_probe(train_x, train_y, test_x, test_y) -> float:
    from sklearn.linear_model import LogisticRegression

    if len(set(train_y)) < 2 or not len(test_y):
        return float("nan")
    probe = LogisticRegression(max_iter=2000, C=1.0)
    probe.fit(train_x.numpy(), train_y)
    return float((probe.predict(test_x.numpy()) == test_y).mean())


def evaluate_bind(model: AnybindModel, manifest: Manifest | Path | str, modalities: list[str] | None = None,
                  prompt: str | None = None) -> dict[str, dict[str, float]]:
    import numpy as np

    manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    prompt = prompt or manifest.prompt
    labels = manifest.labels
    if not labels:
        raise InputError(manifest.path, "has no labels: zero-shot evaluation needs a 'label' on each row")
    prompts = model.embed_raw("text", [prompt.format(label=l) for l in labels])  # (L, D)
    label_index = {l: i for i, l in enumerate(labels)}
    test_images, image_emb = embed_rows(model, manifest.select("test", has=("image", "label")), "image") \
        if "image" in model.towers else ([], None)
    image_y = np.array([label_index[r["label"]] for r in test_images])
    wanted = modalities or [m for m in model.modalities if m != "text" and m in manifest.modalities()]
    results = {}
    for modality in wanted:
        test_rows, emb = embed_rows(model, manifest.select("test", has=(modality, "label")), modality)
        if not test_rows:
            continue
        y = np.array([label_index[r["label"]] for r in test_rows])
        zero_shot = float(((emb @ prompts.T).argmax(1).numpy() == y).mean())
        if modality == "image" or image_emb is None:
            retrieval = zero_shot  # image → nearest prompt
        else:
            retrieval = float((image_y[(emb @ image_emb.T).argmax(1).numpy()] == y).mean())
        train_rows, train_emb = embed_rows(model, manifest.select("train", has=(modality, "label")), modality)
        train_y = np.array([label_index[r["label"]] for r in train_rows])
        probe = linear_probe(train_emb, train_y, emb, y)
        results[modality] = {
            "zero_shot_top1": round(zero_shot, 4),
            "retrieval_r1": round(retrieval, 4),
            "linear_probe": round(probe, 4),
            "zero_shot_vs_probe": round(zero_shot / probe, 4) if probe == probe and probe > 0 else float("nan"),
            "n_test": len(test_rows),
            "emergent": modality != "image",
        }
    return results


def mentioned_label(answer: str, labels: list[str], aliases: dict[str, list[str]] | None = None) -> str | None:
    """The label an answer names first (by word, or an alias such as "7" for "seven"), if any."""
    import re

    best = None
    for label in labels:
        for spelling in [label, *(aliases or {}).get(label, [])]:
            match = re.search(rf"(?<![\w-]){re.escape(spelling)}(?![\w-])", answer, flags=re.IGNORECASE)
            if match and (best is None or match.start() < best[0]):
                best = (match.start(), label)
    return best[1] if best else None


def evaluate_chat(model, manifest: Manifest | Path | str, modalities: list[str] | None = None, limit: int = 100,
                  batch_size: int = 32, progress: bool = True) -> dict[str, dict]:
    """Ask the chat model which label each held-out attachment shows/says; accuracy per modality.

    ``image_projector``: through the projector trained on images (for other modalities this is
    emergent any-to-text); ``own_projector``: through the modality's own projector, if trained.
    """
    from tqdm.auto import tqdm

    from anybind.chat import BINDING_MODALITY
    from anybind.conversation import Attachment

    manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    if not manifest.labels:
        raise InputError(manifest.path, "has no labels: chat evaluation needs a 'label' on each row")
    question = manifest.question or "What is this?"
    wanted = modalities or [m for m in model.modalities if m != "text" and m in manifest.modalities()]
    results = {}
    for modality in wanted:
        rows = manifest.select("test", has=(modality, "label"))
        if limit and len(rows) > limit:
            rows = [rows[round(i * (len(rows) - 1) / (limit - 1))] for i in range(limit)] if limit > 1 else rows[:1]
        rows, embeddings = embed_rows(model, rows, modality)
        if not rows:
            continue
        attachments = [Attachment(modality, r[modality], e) for r, e in zip(rows, embeddings)]
        entry = {"n_test": len(rows), "question": question}
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
