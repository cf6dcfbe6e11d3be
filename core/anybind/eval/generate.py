"""``anybind eval generate``: generated outputs judged by an independent classifier."""

from __future__ import annotations

from pathlib import Path

from anybind.chat.batch import draw_batch, greedy_answers
from anybind.data.manifest import Manifest, read_manifest
from anybind.data.prompts import EVAL_WRITE_AND_ALL, EVAL_WRITE_ONLY
from anybind.errors import InputError
from anybind.eval.chat import mentioned_label
from anybind.eval.judge import Judge
from anybind.models.decoders import decoder_for, output_verbs
from anybind.specs import resolve


def _judged(judge: Judge, by_label: dict[str, list]) -> dict:
    per_label, images_total, correct_total = {}, 0, 0
    for label, images in by_label.items():
        predicted = judge.predict(images)
        correct = sum(p == label for p in predicted)
        distinct = len({judge.key(im) for im in images})
        per_label[label] = {"n": len(images), "correct": correct, "distinct": distinct,
                            "diversity": round(judge.diversity(label, images), 3)}
        images_total += len(images)
        correct_total += correct
    diversity = [v["diversity"] for v in per_label.values() if v["n"] > 1]
    return {"accuracy": round(correct_total / images_total, 4) if images_total else 0.0, "images": images_total,
            "diversity": round(sum(diversity) / len(diversity), 3) if diversity else 0.0, "per_label": per_label}


def evaluate_generate(manifest: Manifest | Path | str, *, decoder=None, model=None, modality: str | None = None,
                      per_label: int = 10, steps: int | None = None, seed: int = 0, progress: bool = True,
                      judge: Judge | None = None) -> dict:
    """Judge generated outputs of ``modality`` (default: the model's main output, see
    :meth:`~anybind.chat.model.ChatModel.output`, else the only installed decoder's) with the
    judge its decoder plugin gives (:class:`~anybind.eval.judge.Judge`).

    ``decoder``: the world's caption of each label for that modality ("a handwritten {label}",
    "the spoken word {label}") straight into the decoder. ``model`` (a chat model trained with
    align-out): requests for each label, worded unlike the training templates, through the LM's
    generative tokens; and requests for a sentence then an output, counted as good when the
    answer has text naming the label and an output the judge reads as the label. Diversity is
    the outputs' mean pairwise distance relative to real held-out files of the same label (1.0 =
    as varied as the real ones). ``judge``: one already trained for that modality (else it is trained here).
    """
    manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    if not manifest.labels:
        raise InputError(manifest.path, "has no labels: generation evaluation needs a 'label' on each row")
    if model is not None and not model.outputs:
        model = None
    modality = modality or (model.output().modality if model is not None else decoder_for().modality)
    judge = judge or _judge(manifest, modality)
    results: dict = {"modality": modality,
                     "judge_accuracy_on_real": round(judge.accuracy, 4) if judge.accuracy is not None else None}
    if decoder is not None:
        results["decoder"] = _from_captions(judge, manifest, decoder, per_label, steps, seed, progress)
    if model is not None:
        prompts = decoder_for(modality).output_prompts()
        results["chat_draw"] = _asked(judge, manifest, model, prompts.eval_request, per_label, steps, seed, progress)
        results["chat_write_and_draw"] = _write_and(judge, manifest, model, prompts.eval_write_and, steps, seed, progress)
    return results


def evaluate_together(manifest: Manifest | Path | str, model, *, steps: int | None = None, seed: int = 0,
                      progress: bool = True, judges: dict[str, Judge] | None = None) -> dict:
    """Requests for a sentence and then every output the model makes, in one answer ("Write a
    sentence about the number four, then draw it and say it."), one per label: complete when the
    answer has text and each output in the asked order, agreeing when the text names the label
    and every output's judge reads it as that label. ``judges``: those already trained, by modality."""
    from tqdm.auto import tqdm

    manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    order = model.output_order()  # the main output (images) first
    judges = {m: (judges or {}).get(m) or _judge(manifest, m) for m in order}
    verbs = output_verbs(order)
    jobs = [(t.format(verbs=verbs, **manifest.fill(label)), label) for t in EVAL_WRITE_AND_ALL for label in manifest.labels]
    complete = agree = 0
    examples = []
    for start in tqdm(range(0, len(jobs), 10), desc="eval generate (chat: text and every output)", unit="batch",
                      leave=False, disable=not progress):
        chunk = jobs[start:start + 10]
        answers = greedy_answers(model, [model.conversation(p) for p, _ in chunk], max_new_tokens=64, make=True,
                                 seed=seed + 2000 + start, steps=steps, max_outputs=len(order))
        for answer, (prompt_text, label) in zip(answers, chunk):
            whole = len(answer.text.split()) >= 3 and answer.modalities == order
            ok = whole and mentioned_label(answer.text, manifest.labels, manifest.aliases) == label and all(
                judges[m].predict([v])[0] == label for v, m in zip(answer.outputs, answer.modalities))
            complete += whole
            agree += ok
            if len(examples) < 3:
                examples.append({"prompt": prompt_text, "text": answer.text, "outputs": answer.modalities, "agree": ok})
    n = len(jobs)
    return {"prompts": [t.replace("{verbs}", verbs) for t in EVAL_WRITE_AND_ALL], "order": order, "asked": n,
            "complete": round(complete / n, 4), "complete_and_agree": round(agree / n, 4), "examples": examples}


def evaluate_words_only(manifest: Manifest | Path | str, model, *, seed: int = 0) -> dict:
    """Requests for a sentence about each label that ask for no output ("Write a sentence about
    the number four."): right when the answer names the label and the model makes nothing. The
    other side of every request to make something: an output's gate must follow the words that
    ask for it, not the subject."""
    manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    jobs = [(t.format(**manifest.fill(label)), label) for t in EVAL_WRITE_ONLY for label in manifest.labels]
    silent = named = right = 0
    examples = []
    for start in range(0, len(jobs), 10):
        chunk = jobs[start:start + 10]
        # one sampling step per output: what an output shows does not count here, only that there is one
        answers = greedy_answers(model, [model.conversation(p) for p, _ in chunk], max_new_tokens=48, make=True,
                                 seed=seed + 3000 + start, steps=1, max_outputs=max(1, len(model.outputs)))
        for answer, (prompt_text, label) in zip(answers, chunk):
            names = mentioned_label(answer.text, manifest.labels, manifest.aliases) == label
            silent += not answer.outputs
            named += names
            right += names and not answer.outputs
            if len(examples) < 3 and answer.outputs:
                examples.append({"prompt": prompt_text, "text": answer.text, "outputs": answer.modalities})
    n = len(jobs)
    return {"prompts": list(EVAL_WRITE_ONLY), "asked": n, "no_output": round(silent / n, 4),
            "named": round(named / n, 4), "named_and_no_output": round(right / n, 4), "examples": examples}


def _judge(manifest: Manifest, modality: str) -> Judge:
    spec = decoder_for(modality)
    if spec.judge is None:
        raise InputError(manifest.path, f"the {spec.name} decoder's plugin gives no judge of {modality} outputs")
    return resolve(spec.judge, what=f"judge of decoder {spec.name!r}")(manifest, modality)


def output_judge(model, manifest: Manifest | Path | str, modality: str | None = None) -> Judge | None:
    """The judge of ``model``'s ``modality`` outputs (default: its main one), trained on
    ``manifest``'s real files (None if it makes none)."""
    if not model.outputs:
        return None
    manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    return _judge(manifest, model.output(modality).modality)


def _from_captions(judge: Judge, manifest: Manifest, decoder, per_label: int, steps, seed: int, progress: bool) -> dict:
    """The world's caption of each label straight into the decoder."""
    from tqdm.auto import tqdm

    by_label = {}
    for i, label in enumerate(tqdm(manifest.labels, desc="eval generate (decoder)", unit="label", leave=False,
                                   disable=not progress)):
        by_label[label] = decoder.generate([manifest.caption(judge.modality, label)] * per_label, steps=steps,
                                           seed=seed + i)
    return {"prompt": manifest.caption(judge.modality, "{label}"), **_judged(judge, by_label)}


def _asked(judge: Judge, manifest: Manifest, model, templates, per_label: int, steps, seed: int, progress: bool) -> dict:
    """Requests for each label through the chat model; a missing output counts as wrong."""
    from tqdm.auto import tqdm

    by_label = {label: [] for label in manifest.labels}
    asked, made = 0, 0
    jobs = [(t.format(**manifest.fill(label)), label) for t in templates for label in manifest.labels]
    jobs = jobs * max(1, per_label // len(templates))
    for start in tqdm(range(0, len(jobs), 10), desc="eval generate (chat: asked)", unit="batch", leave=False,
                      disable=not progress):
        chunk = jobs[start:start + 10]
        for (_, outputs), (_, label) in zip(draw_batch(model, [p for p, _ in chunk], max_new_tokens=24,
                                                       seed=seed + start, image_steps=steps,
                                                       modality=judge.modality), chunk):
            asked += 1
            made += bool(outputs)
            by_label[label] += outputs[:1]
    judged = _judged(judge, {k: v for k, v in by_label.items() if v})
    correct = sum(v["correct"] for v in judged["per_label"].values())
    return {"prompts": list(templates), "asked": asked, "drew": round(made / asked, 4), **judged,
            "accuracy": round(correct / asked, 4)}


def _write_and(judge: Judge, manifest: Manifest, model, templates, steps, seed: int, progress: bool) -> dict:
    """Requests for a sentence then an output: good when the text names the label and the judge reads the output as it."""
    from tqdm.auto import tqdm

    both, agree, n, examples = 0, 0, 0, []
    jobs = [(t.format(**manifest.fill(label)), label) for t in templates for label in manifest.labels]
    for start in tqdm(range(0, len(jobs), 10), desc="eval generate (chat: write and make)", unit="batch", leave=False,
                      disable=not progress):
        chunk = jobs[start:start + 10]
        for (text, outputs), (prompt_text, label) in zip(draw_batch(model, [p for p, _ in chunk], max_new_tokens=64,
                                                                    seed=seed + 1000 + start, image_steps=steps,
                                                                    modality=judge.modality), chunk):
            n += 1
            has_both = len(text.split()) >= 3 and bool(outputs)
            both += has_both
            ok = has_both and mentioned_label(text, manifest.labels, manifest.aliases) == label \
                and judge.predict(outputs[:1])[0] == label
            agree += ok
            if len(examples) < 3:
                examples.append({"prompt": prompt_text, "text": text, "images": len(outputs), "agree": ok})
    return {"prompts": list(templates), "asked": n, "both": round(both / n, 4), "both_and_agree": round(agree / n, 4),
            "examples": examples}
