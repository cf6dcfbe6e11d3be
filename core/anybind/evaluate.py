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
    emergent any-to-text, unless the instruct stage has since trained the model on every
    modality: ``instructed`` says so); ``own_projector``: through the modality's own projector.
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
        entry = {"n_test": len(rows), "question": question, "instructed": bool(getattr(model, "instructed", False))}
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


class ImageJudge:
    """An independent classifier of a manifest's labels from pixels (RBF SVM on small grey
    thumbnails), trained on the manifest's *real* training images and never on generated ones."""

    def __init__(self, manifest: Manifest, size: int = 16):
        from sklearn.svm import SVC

        self.size = size
        self.labels = manifest.labels
        spec = plugins.get_modality("image")
        train = manifest.select("train", has=("image", "label"))
        test = manifest.select("test", has=("image", "label"))
        if not train:
            raise InputError(manifest.path, "no labelled training images to train the image judge on")
        self.svm = SVC(C=10.0, gamma="scale").fit(self.features([spec.load(r["image"]) for r in train]),
                                                  [r["label"] for r in train])
        self.accuracy = None
        if test:
            predicted = self.predict([spec.load(r["image"]) for r in test])
            self.accuracy = sum(p == r["label"] for p, r in zip(predicted, test)) / len(test)
        self.real = {label: self.features([spec.load(r["image"]) for r in test if r["label"] == label][:20])
                     for label in self.labels}

    def features(self, images):
        import numpy as np
        from PIL import Image

        if not images:  # e.g. a label with no held-out image in a small world
            return np.zeros((0, self.size * self.size), dtype="float32")
        return np.stack([np.asarray(im.convert("L").resize((self.size, self.size), Image.BILINEAR), dtype="float32")
                         .ravel() / 255.0 for im in images])

    def predict(self, images) -> list[str]:
        return list(self.svm.predict(self.features(images))) if images else []

    def diversity(self, label: str, images) -> float:
        """Mean pairwise distance between ``images`` over that between real held-out images of ``label``."""
        def spread(x):
            if len(x) < 2:
                return 0.0
            x = torch.as_tensor(x)
            return float(torch.cdist(x, x).sum() / (len(x) * (len(x) - 1)))

        real = spread(self.real.get(label, []))
        return spread(self.features(images)) / real if real else 0.0


DRAW_PROMPTS = ("Draw the digit {label}.", "Can you show me a {label}?")
WRITE_AND_DRAW_PROMPTS = ("Write a sentence about the number {label} and then draw it.",)


def _judged(judge: ImageJudge, by_label: dict[str, list]) -> dict:
    per_label, images_total, correct_total = {}, 0, 0
    for label, images in by_label.items():
        predicted = judge.predict(images)
        correct = sum(p == label for p in predicted)
        distinct = len({im.tobytes() for im in images})
        per_label[label] = {"n": len(images), "correct": correct, "distinct": distinct,
                            "diversity": round(judge.diversity(label, images), 3)}
        images_total += len(images)
        correct_total += correct
    diversity = [v["diversity"] for v in per_label.values() if v["n"] > 1]
    return {"accuracy": round(correct_total / images_total, 4) if images_total else 0.0, "images": images_total,
            "diversity": round(sum(diversity) / len(diversity), 3) if diversity else 0.0, "per_label": per_label}


def evaluate_generate(manifest: Manifest | Path | str, *, decoder=None, model=None, per_label: int = 10,
                      steps: int | None = None, seed: int = 0, progress: bool = True) -> dict:
    """Judge generated images with :class:`ImageJudge`.

    ``decoder``: captions (the world's prompt, "a handwritten {label}") straight into the
    decoder. ``model`` (a chat model trained with align-out): requests to draw each label,
    worded unlike the training templates, through the LM's ``[IMG]`` tokens; and requests
    for a sentence then a drawing, counted as good when the answer has text naming the label
    and an image the judge reads as the label. Diversity is the images' mean pairwise distance
    relative to real held-out images of the same label (1.0 = as varied as real handwriting).
    """
    from tqdm.auto import tqdm

    from anybind.chat import draw_batch

    manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    if not manifest.labels:
        raise InputError(manifest.path, "has no labels: generation evaluation needs a 'label' on each row")
    judge = ImageJudge(manifest)
    results: dict = {"judge_accuracy_on_real": round(judge.accuracy, 4) if judge.accuracy is not None else None}
    labels = manifest.labels
    if decoder is not None:
        prompt = manifest.prompt or "{label}"
        by_label = {}
        for i, label in enumerate(tqdm(labels, desc="eval generate (decoder)", unit="label", leave=False, disable=not progress)):
            by_label[label] = decoder.generate([prompt.format(label=label)] * per_label, steps=steps, seed=seed + i)
        results["decoder"] = {"prompt": prompt, **_judged(judge, by_label)}
    if model is not None and model.can_draw:
        by_label = {label: [] for label in labels}
        asked, drew = 0, 0
        jobs = [(t.format(label=label), label) for t in DRAW_PROMPTS for label in labels]
        jobs = jobs * max(1, per_label // len(DRAW_PROMPTS))
        for start in tqdm(range(0, len(jobs), 10), desc="eval generate (chat: draw)", unit="batch", leave=False, disable=not progress):
            chunk = jobs[start:start + 10]
            for (text, images), (_, label) in zip(draw_batch(model, [p for p, _ in chunk], max_new_tokens=24,
                                                             seed=seed + start, image_steps=steps), chunk):
                asked += 1
                drew += bool(images)
                by_label[label] += images[:1]
        judged = _judged(judge, {k: v for k, v in by_label.items() if v})
        # Correct = asked for a label and got an image of it; a missing image counts as wrong.
        correct = sum(v["correct"] for v in judged["per_label"].values())
        results["chat_draw"] = {"prompts": list(DRAW_PROMPTS), "asked": asked, "drew": round(drew / asked, 4),
                                **judged, "accuracy": round(correct / asked, 4)}
        both, agree, n = 0, 0, 0
        examples = []
        jobs = [(t.format(label=label), label) for t in WRITE_AND_DRAW_PROMPTS for label in labels]
        for start in tqdm(range(0, len(jobs), 10), desc="eval generate (chat: write and draw)", unit="batch", leave=False,
                          disable=not progress):
            chunk = jobs[start:start + 10]
            for (text, images), (prompt_text, label) in zip(draw_batch(model, [p for p, _ in chunk], max_new_tokens=64,
                                                                       seed=seed + 1000 + start, image_steps=steps), chunk):
                n += 1
                has_both = len(text.split()) >= 3 and bool(images)
                both += has_both
                ok = has_both and mentioned_label(text, labels, manifest.aliases) == label \
                    and judge.predict(images[:1])[0] == label
                agree += ok
                if len(examples) < 3:
                    examples.append({"prompt": prompt_text, "text": text, "images": len(images), "agree": ok})
        results["chat_write_and_draw"] = {"prompts": list(WRITE_AND_DRAW_PROMPTS), "asked": n,
                                          "both": round(both / n, 4), "both_and_agree": round(agree / n, 4),
                                          "examples": examples}
    return results
