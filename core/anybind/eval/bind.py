"""``anybind eval bind``: how well the shared space works on held-out data.

Per modality: zero-shot top-1 against text prompts (emergent for every modality but the
binding one, which saw text in training), cross-modal retrieval R@1 (each held-out item's
nearest held-out binding-modality item, or for that modality its nearest prompt, has the same
label), and a supervised linear probe on the same frozen embeddings as the upper bound
zero-shot is compared to.
"""

from __future__ import annotations

from pathlib import Path

from anybind.data.manifest import Manifest, read_manifest
from anybind.errors import InputError
from anybind.specs import BINDING_MODALITY, attachable
from anybind.models.space import AnybindModel, embed_rows


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
    test_images, image_emb = embed_rows(model, manifest.select("test", has=(BINDING_MODALITY, "label")), BINDING_MODALITY) \
        if BINDING_MODALITY in model.towers else ([], None)
    image_y = np.array([label_index[r["label"]] for r in test_images])
    wanted = modalities or attachable(model.modalities, manifest.modalities())
    results = {}
    for modality in wanted:
        test_rows, emb = embed_rows(model, manifest.select("test", has=(modality, "label")), modality)
        if not test_rows:
            continue
        y = np.array([label_index[r["label"]] for r in test_rows])
        zero_shot = float(((emb @ prompts.T).argmax(1).numpy() == y).mean())
        if modality == BINDING_MODALITY or image_emb is None or not len(image_emb):
            retrieval = zero_shot  # the binding modality (or no held-out images to retrieve) → nearest prompt
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
            "emergent": modality != BINDING_MODALITY,
        }
    return results
