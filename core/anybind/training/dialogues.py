"""The instruct stage's training conversations, templated from a manifest and its ``world.json``.

* a question about an attachment of any bound modality, answered with its label;
* a request for an output (an image), answered by the output;
* a request to say something and then make an output: a sentence naming the label, then the output;
* follow-ups that refer to an earlier turn: "Now draw it." after a question about an
  attachment, "Which digit did you draw?" after the model's own output, "Name it in one word.";
* the same after a plain question in between (a distractor turn), and asked again later;
* a change of subject: after talking about one label, "write about B, then draw it" is about B;
* several attachments in one turn, each named;
* plain chat, answered by the frozen LM's own words (so the adapters keep its manners).

Every world-specific word comes from the manifest (:meth:`~anybind.data.manifest.Manifest.fill`,
``questions``, ``facts``), and how to ask for an output from its decoder's prompts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from anybind.chat.conversation import Attachment, Encoded, Turn, _tokenize, encode
from anybind.data.manifest import Manifest
from anybind.data.prompts import ASK, CHAT, FOLLOW_NAME, SAY_AGAIN, SEVERAL, TOPICS, OutputPrompts

#: An assistant turn in a history whose words are the frozen LM's own (written in before encoding).
OWN = "\x00own\x00"


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


class _Maker:
    """Builds one dialogue of each kind; ``i`` picks the label, the attachment pool and the output."""

    def __init__(self, manifest: Manifest, attachments, outputs: dict[str, OutputPrompts], seed: int):
        self.m, self.attachments, self.outputs = manifest, attachments, outputs
        self.rng = random.Random(seed)
        self.answer_of = manifest.answer or "{label}."
        self.caption_of = (manifest.prompt or "{label}").format
        self.question = manifest.question or "What is this?"
        self.modalities, self.made = sorted(attachments), sorted(outputs)

    def pool(self, i):
        return self.attachments[self.modalities[i // 8 % len(self.modalities)]]

    def output(self, i):
        return self.made[i // 8 % len(self.made)] if self.made else None

    def asked(self, attachment, label) -> list[Turn]:
        """A question about an attachment, and its answer (the start of a follow-up)."""
        return [Turn("user", self.question, [attachment]), Turn("assistant", self.answer_of.format(label=label))]

    def ask(self):
        rng = self.rng
        return rng.choice(self.m.questions) if self.m.question and self.m.questions else self.question

    def plain(self) -> list[Turn]:
        topic = self.rng.choice(TOPICS).format(**self.m.fill(self.rng.choice(self.m.labels)))
        return [Turn("user", self.rng.choice(ASK).format(t=topic)), Turn("assistant", OWN)]

    def dialogue(self, i: int, label: str) -> Dialogue:
        kind, rng, prompts, output = i % 12, self.rng, self.outputs.get(self.output(i)), self.output(i)
        caption = self.caption_of(label=label)
        fill = self.m.fill(label, caption)
        if kind in (0, 1):  # a question about an attachment of any modality
            attachment, label = rng.choice(self.pool(i))
            return Dialogue([Turn("user", self.ask(), [attachment])], [("text", self.answer_of.format(label=label))])
        if kind == 2 and prompts:  # make an output
            return Dialogue([Turn("user", rng.choice(prompts.request).format(**fill))], [("output", output, caption)])
        if kind == 3 and prompts:  # say something, then make an output
            return Dialogue([Turn("user", rng.choice(prompts.write_and).format(**fill))],
                            [("text", about(self.m, label, caption, rng)), ("output", output, caption)])
        if kind in (4, 9) and prompts:  # follow-up: make what the attachment was (9: after a plain question)
            attachment, label = rng.choice(self.pool(i))
            history = self.asked(attachment, label) + (self.plain() if kind == 9 else [])
            follow = rng.choice(prompts.follow).format(**self.m.fill(label))
            return Dialogue(history + [Turn("user", follow)], [("output", output, self.caption_of(label=label))])
        if kind == 5 and prompts and output in self.attachments:  # follow-up about the model's own output
            made_one, label = rng.choice(self.attachments[output])
            asked = self.m.fill(label, self.caption_of(label=label))
            history = [Turn("user", rng.choice(prompts.request).format(**asked)), Turn("assistant", "", [made_one])]
            ask = rng.choice(prompts.ask_made).format(**asked)
            return Dialogue(history + [Turn("user", ask)], [("text", self.answer_of.format(label=label))])
        return self._more(kind, i, label, caption, fill, prompts, output)

    def _more(self, kind, i, label, caption, fill, prompts, output) -> Dialogue:
        rng = self.rng
        if kind == 6:  # follow-up in words
            attachment, label = rng.choice(self.pool(i))
            return Dialogue(self.asked(attachment, label) + [Turn("user", rng.choice(FOLLOW_NAME))],
                            [("text", label[:1].upper() + label[1:] + ".")])
        if kind == 8 and prompts:  # a change of subject: the new label is written about and made, not the old
            attachment, before = rng.choice([p for p in self.pool(i) if p[1] != label] or self.pool(i))
            return Dialogue(self.asked(attachment, before) + [Turn("user", rng.choice(prompts.write_and).format(**fill))],
                            [("text", about(self.m, label, caption, rng)), ("output", output, caption)])
        if kind == 10:  # several attachments in one turn, each named in order
            (a, la), (b, lb) = rng.sample(self.pool(i), 2) if len(self.pool(i)) > 1 else [rng.choice(self.pool(i))] * 2
            ask = rng.choice(SEVERAL).format(kind=self.m.kind)
            return Dialogue([Turn("user", ask, [a, b])], [("text", " ".join(self.answer_of.format(label=x) for x in (la, lb)))])
        if kind == 11:  # asked again which one it was, after a plain question in between
            attachment, label = rng.choice(self.pool(i))
            ask = rng.choice(SAY_AGAIN).format(kind=self.m.kind)
            return Dialogue(self.asked(attachment, label) + self.plain() + [Turn("user", ask)],
                            [("text", self.answer_of.format(label=label))])
        topic = rng.choice(TOPICS).format(**fill)  # plain chat: the frozen LM's own answer (filled in later)
        ask = rng.choice(CHAT) if rng.random() < 0.3 else rng.choice(ASK).format(t=topic)
        return Dialogue([Turn("user", ask)], [("own", "")])


def make_dialogues(manifest: Manifest, attachments: dict[str, list[tuple[Attachment, str]]], count: int, seed: int,
                   outputs: dict[str, OutputPrompts]) -> list[Dialogue]:
    """``count`` templated conversations. ``attachments[modality]`` holds (attachment, label) pairs;
    those of an output's modality also stand in for the model's own outputs in follow-ups.
    ``outputs``: the prompts of each output modality the model makes (none: text only). History
    turns whose text is :data:`OWN` get the frozen LM's own answer before encoding."""
    maker = _Maker(manifest, attachments, outputs, seed)
    return [maker.dialogue(i, manifest.labels[i % len(manifest.labels)]) for i in range(count)]


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
