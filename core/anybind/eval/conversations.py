"""The multi-turn evaluation: conversations of 3-5 turns that mix modalities, refer back to
earlier turns, change subject and chat in between, each behaviour scored on its own.

Behaviours (every one worded unlike the training conversations):

* ``current``: a question about the turn's own attachment names its label, after other turns;
* ``plain``: a plain question between them is answered in words, with no output, naming no
  label (the earlier subject must not leak into it);
* ``refer_back_make``: "make a picture of that one" makes the last attachment's label (judged
  by the output modality's independent judge, as ``eval generate`` does);
* ``refer_back_say``: asked again which one the last attachment was, after a plain question;
* ``subject_change``: "write a sentence about B, then draw it" names B and draws B, not the
  earlier subject;
* ``several``: one turn with two attachments names both labels.

Conversations advance together, one turn at a time for all of them, through the batched
greedy decoder; an output the model makes joins the conversation like a user's attachment.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from anybind.chat.batch import greedy_answers
from anybind.chat.conversation import Attachment, Turn
from anybind.data.manifest import Manifest
from anybind.data.prompts import EVAL_PLAIN, EVAL_SAY_AGAIN, EVAL_SEVERAL
from anybind.errors import InputError
from anybind.eval.chat import mentioned_label, mentioned_labels
from anybind.models.space import embed_rows
from anybind.specs import attachable

BEHAVIOURS = ("current", "plain", "refer_back_make", "refer_back_say", "subject_change", "several")
#: conversations scored by default (about 110 s for SmolLM2 on 2 cores): at 30, a behaviour's
#: score moved by 0.1-0.3 between retrains of the same instruct recipe
CONVERSATIONS = 90


@dataclass
class Step:
    """One user turn, and what a right answer holds."""

    text: str
    attachments: list[Attachment] = field(default_factory=list)
    behaviour: str = "current"
    labels: tuple[str, ...] = ()  # the label(s) the answer must name, or its output must show


def _scripts(manifest: Manifest, pool: list[tuple[Attachment, str]], prompts, rng: random.Random) -> list[list[Step]]:
    """Three conversation shapes, each drawn from held-out attachments of every modality."""
    def ask(attachment, label):
        return Step(manifest.ask(rng), [attachment], "current", (label,))

    (a, la), (b, lb) = rng.sample(pool, 2)
    while lb == la:
        b, lb = rng.choice(pool)
    other = rng.choice([l for l in manifest.labels if l not in (la, lb)])
    fill = manifest.fill(other)
    follow = rng.choice(prompts.eval_follow or prompts.follow)
    plain = Step(rng.choice(EVAL_PLAIN), behaviour="plain")
    say = Step(rng.choice(EVAL_SAY_AGAIN).format(kind=manifest.kind), behaviour="refer_back_say", labels=(lb,))
    change = Step(rng.choice(prompts.eval_write_and).format(**fill), behaviour="subject_change", labels=(other,))
    several = Step(rng.choice(EVAL_SEVERAL).format(kind=manifest.kind), [a, b], "several", (la, lb))
    return [
        [ask(a, la), plain, Step(follow, behaviour="refer_back_make", labels=(la,)), change],
        [ask(a, la), ask(b, lb), Step(rng.choice(EVAL_PLAIN), behaviour="plain"), say],
        [several, ask(b, lb), Step(follow, behaviour="refer_back_make", labels=(lb,)), change, plain],
    ]


def _pool(model, manifest: Manifest, per_modality: int, rng: random.Random) -> list[tuple[Attachment, str]]:
    pool = []
    for modality in attachable(model.modalities, manifest.modalities()):
        rows = [r for r in manifest.select("test", has=(modality, "label"))]
        rows, embeddings = embed_rows(model, rng.sample(rows, min(per_modality, len(rows))), modality)
        pool += [(Attachment(modality, r[modality], e), r["label"]) for r, e in zip(rows, embeddings)]
    if len({label for _, label in pool}) < 3:
        raise InputError(manifest.path, "the multi-turn evaluation needs held-out attachments of at least 3 labels")
    return pool


def _score(step: Step, text: str, outputs: list, judge, manifest: Manifest) -> bool:
    named = mentioned_labels(text, manifest.labels, manifest.aliases)
    if step.behaviour == "plain":
        return len(text.split()) >= 2 and not outputs and not named
    if step.behaviour == "several":
        return set(step.labels) <= set(named)
    if step.behaviour in ("current", "refer_back_say"):
        return mentioned_label(text, manifest.labels, manifest.aliases) == step.labels[0]
    made = bool(outputs) and judge is not None and judge.predict(outputs[:1])[0] == step.labels[0]
    if step.behaviour == "subject_change":
        return made and mentioned_label(text, manifest.labels, manifest.aliases) == step.labels[0]
    return made  # refer_back_make


def evaluate_conversations(model, manifest: Manifest, *, conversations: int = CONVERSATIONS, seed: int = 0, judge=None,
                           max_new_tokens: int = 40, per_modality: int = 30, progress: bool = False,
                           failures: int = 6) -> dict:
    """Accuracy of each behaviour over ``conversations`` held-out conversations (see the module
    docstring); ``judge`` (a :class:`~anybind.eval.judge.Judge`) scores the outputs; the first
    ``failures`` wrong answers are kept as examples."""
    from tqdm.auto import tqdm

    from anybind.models.decoders import parse_reference

    rng = random.Random(seed)
    prompts = parse_reference(model.decoder_reference())[0].output_prompts()
    pool = _pool(model, manifest, per_modality, rng)
    scripts = [_scripts(manifest, pool, prompts, rng)[i % 3] for i in range(conversations)]
    histories: list[list[Turn]] = [[] for _ in scripts]
    scores: dict[str, list[bool]] = {b: [] for b in BEHAVIOURS}
    examples = []
    for turn in tqdm(range(max(len(s) for s in scripts)), desc="eval conversations", unit="turn", disable=not progress,
                     leave=False):
        active = [i for i, s in enumerate(scripts) if turn < len(s)]
        asked = [model.conversation(scripts[i][turn].text, scripts[i][turn].attachments, histories[i]) for i in active]
        answers = greedy_answers(model, asked, max_new_tokens=max_new_tokens, make=True, seed=seed + turn)
        for i, conversation, answer in zip(active, asked, answers):
            step = scripts[i][turn]
            judged = [v for v, m in zip(answer.outputs, answer.modalities) if judge is None or m == judge.modality]
            ok = _score(step, answer.text, answer.outputs if step.behaviour == "plain" else judged, judge, manifest)
            scores[step.behaviour].append(ok)
            histories[i] = conversation + [Turn("assistant", answer.text, _made(model, answer))]
            if len(examples) < failures and not ok:
                examples.append({"behaviour": step.behaviour, "asked": step.text, "expected": list(step.labels),
                                 "answer": answer.text, "outputs": len(answer.outputs),
                                 "earlier": [list(s.labels) for s in scripts[i][:turn]]})
    result = {b: round(sum(v) / len(v), 4) for b, v in scores.items() if v}
    return {"behaviours": result, "n": {b: len(v) for b, v in scores.items() if v}, "conversations": len(scripts),
            "failures": examples}


def _made(model, answer) -> list[Attachment]:
    """What the model made, each embedded like a user's attachment of its modality (so later
    turns can refer to it); an output of a modality the model has no tower for is left out."""
    made = []
    for modality in dict.fromkeys(answer.modalities):
        if modality in model.modalities:
            values = [v for v, m in zip(answer.outputs, answer.modalities) if m == modality]
            made += [Attachment(modality, f"{modality} {len(made) + i + 1}", e)
                     for i, e in enumerate(model.embed_raw(modality, values))]
    return made
