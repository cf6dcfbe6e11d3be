"""The instruct stage's training conversations, templated from a manifest and its ``world.json``.

* a question about an attachment of any bound modality, answered with its label;
* a request for an output (an image), answered by the output;
* a request to say something and then make an output: a sentence naming the label, then the output;
* with several output modalities, a sentence and then every output ("..., then draw it and say it");
* follow-ups that refer to an earlier turn: "Now draw it." after a question about an
  attachment, "Which digit did you draw?" after the model's own output, "Name it in one word.";
* plain chat, answered by the frozen LM's own words (so the adapters keep its manners).

Every world-specific word comes from the manifest (:meth:`~anybind.data.manifest.Manifest.fill`,
``questions``, ``facts``), and how to ask for an output from its decoder's prompts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from anybind.chat.conversation import Attachment, Encoded, Turn, _tokenize, encode
from anybind.data.manifest import Manifest
from anybind.data.prompts import ASK, CHAT, FOLLOW_NAME, TOPICS, WRITE_AND_ALL, OutputPrompts
from anybind.specs import BINDING_MODALITY


@dataclass
class Dialogue:
    """One training conversation: the turns before the answer, and the answer as segments."""

    turns: list[Turn]
    answer: list[tuple]  # ("text", words) | ("own", "") | ("output", modality, caption)
    encoded: Encoded | None = None
    outputs: list[tuple[int, str, str]] = field(default_factory=list)  # (position of [TOK0], modality, caption)
    targets: list[tuple[int, int]] = field(default_factory=list)  # (position predicting it, id)


def about(manifest: Manifest, label: str, caption: str, rng: random.Random) -> str:
    """One sentence that names ``label`` first: one of the world's facts about it, if it has any."""
    facts = manifest.facts.get(label)
    if not facts:
        return f"{label[:1].upper() + label[1:]}: here is {caption}."
    return rng.choice(facts)


def every_output(manifest: Manifest, outputs: dict[str, OutputPrompts], label: str, rng: random.Random) -> Dialogue:
    """A request for a sentence and then every output, in a random order its words give
    ("..., then say it and draw it"), answered in that order."""
    order = rng.sample(sorted(outputs), len(outputs))
    verbs = " and ".join(rng.choice(outputs[m].verb or ("make it",)) for m in order)
    caption = manifest.caption(order[0], label)
    ask = rng.choice(WRITE_AND_ALL).format(verbs=verbs, **manifest.fill(label, caption))
    return Dialogue([Turn("user", ask)], [("text", about(manifest, label, caption, rng))]
                    + [("output", m, manifest.caption(m, label)) for m in order])


def make_dialogues(manifest: Manifest, attachments: dict[str, list[tuple[Attachment, str]]], count: int, seed: int,
                   outputs: dict[str, OutputPrompts]) -> list[Dialogue]:
    """``count`` templated conversations. ``attachments[modality]`` holds (attachment, label) pairs;
    those of an output's modality also stand in for the model's own outputs in follow-ups.
    ``outputs``: the prompts of each output modality the model makes (none: text only). With
    several, a share of the requests asks for a sentence and then every output, in either order."""
    rng = random.Random(seed)
    labels = manifest.labels
    answer_of = manifest.answer or "{label}."
    question = manifest.question or "What is this?"
    modalities = sorted(attachments)
    made = sorted(outputs)
    # None: every output in one answer. The main output (images, what "draw it" asks for) keeps
    # as many requests as all others: with an equal share, requests drawn right fell from 0.95 to 0.86.
    main = BINDING_MODALITY if BINDING_MODALITY in made else made[0] if made else None
    others = [m for m in made if m != main]
    slots = [main, *others, None, main, None] if others else made
    out = []
    for i in range(count):
        kind = i % 8
        label = labels[i % len(labels)]
        output = slots[i // 8 % len(slots)] if made else None
        caption = manifest.caption(output or BINDING_MODALITY, label)
        fill = manifest.fill(label, caption)
        prompts = outputs.get(output)
        pool = attachments[modalities[i // 8 % len(modalities)]]
        if kind in (0, 1):  # a question about an attachment of any modality
            attachment, label = rng.choice(pool)
            ask = rng.choice(manifest.questions) if manifest.question and manifest.questions else question
            out.append(Dialogue([Turn("user", ask, [attachment])], [("text", answer_of.format(label=label))]))
        elif kind in (2, 3, 4, 5) and made and output is None:  # a sentence, then every output
            out.append(every_output(manifest, outputs, label, rng))
        elif kind == 2 and prompts:  # make an output
            out.append(Dialogue([Turn("user", rng.choice(prompts.request).format(**fill))], [("output", output, caption)]))
        elif kind == 3 and prompts:  # say something, then make an output
            out.append(Dialogue([Turn("user", rng.choice(prompts.write_and).format(**fill))],
                                [("text", about(manifest, label, caption, rng)), ("output", output, caption)]))
        elif kind == 4 and prompts:  # follow-up: make what the attachment was
            attachment, label = rng.choice(pool)
            history = [Turn("user", question, [attachment]), Turn("assistant", answer_of.format(label=label))]
            follow = rng.choice(prompts.follow).format(**manifest.fill(label))
            out.append(Dialogue(history + [Turn("user", follow)], [("output", output, manifest.caption(output, label))]))
        elif kind == 5 and prompts and output in attachments:  # follow-up about the model's own output
            made_one, label = rng.choice(attachments[output])
            asked = manifest.fill(label, manifest.caption(output, label))
            history = [Turn("user", rng.choice(prompts.request).format(**asked)), Turn("assistant", "", [made_one])]
            ask = rng.choice(prompts.ask_made).format(**asked)
            out.append(Dialogue(history + [Turn("user", ask)], [("text", answer_of.format(label=label))]))
        elif kind == 6:  # follow-up in words
            attachment, label = rng.choice(pool)
            history = [Turn("user", question, [attachment]), Turn("assistant", answer_of.format(label=label))]
            out.append(Dialogue(history + [Turn("user", rng.choice(FOLLOW_NAME))], [("text", label[:1].upper() + label[1:] + ".")]))
        else:  # plain chat: the frozen LM's own answer (filled in later)
            topic = rng.choice(TOPICS).format(**fill)
            ask = rng.choice(CHAT) if rng.random() < 0.3 else rng.choice(ASK).format(t=topic)
            out.append(Dialogue([Turn("user", ask)], [("own", "")]))
    return out


def encode_dialogue(tokenizer, dialogue: Dialogue, soft_tokens: int, vocab, end_id: int) -> None:
    """Token ids of the prompt and answer. ``vocab`` is the :class:`~anybind.chat.outputs.OutputVocab`:
    an output's ``[TOK0]`` is its gate (``V + index``) in the targets, its forced ``[TOK1..]`` get
    no loss, and all are placeholders (pad) in ``encoded.ids``, overwritten by the learned rows."""
    prompt = encode(tokenizer, dialogue.turns, soft_tokens)
    ids, true_ids, forced = list(prompt.ids), list(prompt.ids), -1
    index_of = {o.modality: i for i, o in enumerate(vocab.outputs)}
    for segment in dialogue.answer:
        if segment[0] == "text":
            piece = _tokenize(tokenizer, segment[1])
            ids += piece
            true_ids += piece
        else:
            _, modality, caption = segment
            k = vocab.outputs[index_of[modality]].tokens
            dialogue.outputs.append((len(ids), modality, caption))
            ids += [tokenizer.pad_token_id] * k
            true_ids += [vocab.vocab + index_of[modality]] + [forced] * (k - 1)
    ids.append(end_id)
    true_ids.append(end_id)
    start = len(prompt.ids)
    dialogue.targets = [(p - 1, true_ids[p]) for p in range(start, len(true_ids)) if true_ids[p] != forced]
    dialogue.encoded = Encoded(ids, prompt.slots, start)
