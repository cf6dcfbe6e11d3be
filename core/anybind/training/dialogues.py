"""The instruct stage's training conversations, templated from a manifest and its ``world.json``.

A conversation is a history of 0-3 earlier exchanges and a final request. The exchanges are
the ones users have: a question about an attachment of any modality, a plain question
(answered by the frozen LM's own words), a request for an output (the model's output joins
the history as an attachment, as in a chat session), and several attachments at once. The
final request is one of:

* a question about the turn's own attachment, whatever came before (``current``);
* several attachments in one turn, each named in order (``several``);
* make an output, or write a sentence and then make it: the label asked for now, not the
  earlier subject (a change of subject when the history had one);
* follow-ups that refer back to the last subject, possibly across a plain turn: "Now draw
  it.", "Which digit was it again?", "Name it in one word.", "Which digit did you draw?";
* plain chat.

Every assistant turn in words is a training target, not only the last: a history answer is a
question about an attachment asked after other turns, which is what a conversation needs.

Every world-specific word comes from the manifest (:meth:`~anybind.data.manifest.Manifest.fill`,
``questions``, ``facts``), and how to ask for an output from its decoder's prompts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from anybind.chat.conversation import Attachment, Encoded, Turn, _tokenize, encode
from anybind.data.manifest import Manifest
from anybind.data.prompts import ASK, CHAT, FOLLOW_NAME, SAY_AGAIN, SEVERAL, TOPICS, OutputPrompts

#: An assistant turn of a history whose words are the frozen LM's own, written in before encoding.
OWN = "\x00own\x00"

#: Final requests, in the proportions they are made (a cycle, so every kind appears early).
FINALS = ("current", "current", "current", "several", "write_and", "write_and", "request", "follow",
          "follow", "say_again", "name_word", "ask_made", "current", "several", "plain", "plain")


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


class _Composer:
    """Builds histories and final requests; ``subject`` is the label "it" refers to (None: none)."""

    def __init__(self, manifest: Manifest, attachments: dict[str, list[tuple[Attachment, str]]],
                 outputs: dict[str, OutputPrompts], seed: int):
        self.m, self.attachments, self.outputs = manifest, attachments, outputs
        self.rng = random.Random(seed)
        self.answer_of = (manifest.answer or "{label}.").format
        self.caption_of = (manifest.prompt or "{label}").format
        self.modalities, self.made = sorted(attachments), sorted(outputs)
        # Plain questions come from a bounded set, so the frozen LM answers each once.
        rng = random.Random(seed + 1)
        self.plain_questions = [rng.choice(ASK).format(t=rng.choice(TOPICS).format(**manifest.fill(label)))
                                for label in manifest.labels for _ in range(3)] + list(CHAT)

    def pick(self) -> tuple[Attachment, str]:
        """An attachment of a random modality, and its label."""
        return self.rng.choice(self.attachments[self.rng.choice(self.modalities)])

    def question(self) -> str:
        return self.rng.choice(self.m.questions or [self.m.question or "What is this?"])

    # -- earlier exchanges: (turns, the subject they leave) --

    def asked(self) -> tuple[list[Turn], str]:
        attachment, label = self.pick()
        return [Turn("user", self.question(), [attachment]), Turn("assistant", self.answer_of(label=label))], label

    def plain(self) -> list[Turn]:
        return [Turn("user", self.rng.choice(self.plain_questions)), Turn("assistant", OWN)]

    def made_one(self, output: str | None) -> tuple[list[Turn], str] | None:
        """A request the model answered with an output, which joins the history as an attachment."""
        if output is None or output not in self.attachments:
            return None
        attachment, label = self.rng.choice(self.attachments[output])
        prompts, fill = self.outputs[output], self.m.fill(label, self.caption_of(label=label))
        if self.rng.random() < 0.5:
            return [Turn("user", self.rng.choice(prompts.request).format(**fill)), Turn("assistant", "", [attachment])], label
        words = about(self.m, label, fill["c"], self.rng)
        return [Turn("user", self.rng.choice(prompts.write_and).format(**fill)), Turn("assistant", words, [attachment])], label

    def several(self) -> tuple[list[Turn], list[str]]:
        chosen = [self.pick() for _ in range(self.rng.choice((2, 2, 3)))]
        ask = self.rng.choice(SEVERAL).format(kind=self.m.kind)
        labels = [label for _, label in chosen]
        answer = " ".join(self.answer_of(label=label) for label in labels)
        return [Turn("user", ask, [a for a, _ in chosen]), Turn("assistant", answer)], labels

    def history(self, output: str | None, need_subject: bool) -> tuple[list[Turn], str | None]:
        """0-3 earlier exchanges. With ``need_subject``, the last one that is not plain chat leaves a subject."""
        turns, subject = [], None
        for _ in range(self.rng.choice((0, 1, 1, 2, 2, 3))):
            roll = self.rng.random()
            if roll < 0.2:
                turns += self.plain()
                continue
            exchange = self.made_one(output) if roll < 0.45 else None
            if exchange is None and roll < 0.6:
                exchange = self.several()[0], None
            exchange = exchange or self.asked()
            turns += exchange[0]
            subject = exchange[1]
        if need_subject and subject is None:
            exchange = self.made_one(output) if self.rng.random() < 0.3 else None
            exchange = exchange or self.asked()
            turns += exchange[0]
            subject = exchange[1]
        return turns, subject

    # -- the final request --

    def dialogue(self, i: int) -> Dialogue:
        kind = FINALS[i % len(FINALS)]
        output = self.made[i // len(FINALS) % len(self.made)] if self.made else None
        prompts = self.outputs.get(output)
        if kind in ("write_and", "request", "follow", "ask_made") and prompts is None:
            kind = "current"
        label = self.m.labels[i % len(self.m.labels)]
        caption = self.caption_of(label=label)
        refers = kind in ("follow", "say_again", "name_word", "ask_made")
        history, subject = self.history(output, need_subject=refers)
        if kind == "ask_made":
            made = self.made_one(output)
            if made is None:
                kind = "say_again"
            else:
                history, subject = history + made[0], made[1]
        if kind in ("follow", "say_again") and self.rng.random() < 0.4:
            history += self.plain()  # a plain turn in between: "it" is still the subject
        return self._final(kind, history, subject, label, caption, prompts, output)

    def _final(self, kind, history, subject, label, caption, prompts, output) -> Dialogue:
        rng, fill = self.rng, self.m.fill(label, caption)
        if kind == "current":
            attachment, label = self.pick()
            return Dialogue(history + [Turn("user", self.question(), [attachment])], [("text", self.answer_of(label=label))])
        if kind == "several":
            turns, _ = self.several()
            return Dialogue(history + turns[:1], [("text", turns[1].text)])
        if kind == "request":
            return Dialogue(history + [Turn("user", rng.choice(prompts.request).format(**fill))], [("output", output, caption)])
        if kind == "write_and":  # about the label asked for now, whatever the earlier subject was
            return Dialogue(history + [Turn("user", rng.choice(prompts.write_and).format(**fill))],
                            [("text", about(self.m, label, caption, rng)), ("output", output, caption)])
        if kind == "follow":
            ask = rng.choice(prompts.follow).format(**self.m.fill(subject))
            return Dialogue(history + [Turn("user", ask)], [("output", output, self.caption_of(label=subject))])
        if kind == "name_word":
            return Dialogue(history + [Turn("user", rng.choice(FOLLOW_NAME))], [("text", subject[:1].upper() + subject[1:] + ".")])
        if kind == "ask_made":
            ask = rng.choice(prompts.ask_made).format(**self.m.fill(subject, self.caption_of(label=subject)))
            return Dialogue(history + [Turn("user", ask)], [("text", self.answer_of(label=subject))])
        if kind == "say_again":
            ask = rng.choice(SAY_AGAIN).format(kind=self.m.kind)
            return Dialogue(history + [Turn("user", ask)], [("text", self.answer_of(label=subject))])
        ask = rng.choice(CHAT) if rng.random() < 0.3 else rng.choice(self.plain_questions)
        return Dialogue(history + [Turn("user", ask)], [("own", "")])  # plain chat: the frozen LM's own answer


def make_dialogues(manifest: Manifest, attachments: dict[str, list[tuple[Attachment, str]]], count: int, seed: int,
                   outputs: dict[str, OutputPrompts]) -> list[Dialogue]:
    """``count`` templated conversations. ``attachments[modality]`` holds (attachment, label) pairs;
    those of an output's modality also stand in for the model's own outputs in histories.
    ``outputs``: the prompts of each output modality the model makes (none: text only).
    Assistant turns whose text is :data:`OWN`, and answers ``("own", "")``, get the frozen LM's
    own words (:func:`fill_own`) before encoding."""
    composer = _Composer(manifest, attachments, outputs, seed)
    return [composer.dialogue(i) for i in range(count)]


def own_questions(dialogues: list[Dialogue]) -> list[str]:
    """The plain questions whose answers are the frozen LM's own words, each once."""
    asked = [d.turns[-1].text for d in dialogues if d.answer[0][0] == "own"]
    asked += [d.turns[j - 1].text for d in dialogues for j, t in enumerate(d.turns) if t.text == OWN]
    return list(dict.fromkeys(asked))


def fill_own(dialogues: list[Dialogue], answer_of: dict[str, str]) -> None:
    """Write the frozen LM's answers (``answer_of[question]``) in, in histories and answers."""
    for d in dialogues:
        for j, turn in enumerate(d.turns):
            if turn.text == OWN:
                turn.text = answer_of[d.turns[j - 1].text] or "OK."
        if d.answer[0][0] == "own":
            d.answer = [("text", answer_of[d.turns[-1].text] or "OK.")]


def _history_targets(tokenizer, turns: list[Turn], soft_tokens: int, ids: list[int]) -> list[tuple[int, int]]:
    """Targets for every earlier assistant turn in words: its tokens and its end, where the
    conversation's own ids hold them (a template that renders a turn differently once more
    follows it trains on the final answer alone)."""
    targets = []
    for j, turn in enumerate(turns):
        if turn.role != "assistant" or turn.attachments or not turn.text:
            continue
        upto = encode(tokenizer, turns[:j], soft_tokens, answer=turn.text)
        if ids[:len(upto.ids)] != upto.ids:
            continue
        targets += [(p - 1, upto.ids[p]) for p in range(upto.answer_start, len(upto.ids))]
    return targets


def encode_dialogue(tokenizer, dialogue: Dialogue, soft_tokens: int, vocab, end_id: int) -> None:
    """Token ids of the prompt and answer. ``vocab`` is the :class:`~anybind.chat.outputs.OutputVocab`:
    an output's ``[TOK0]`` is its gate (``V + index``) in the targets, its forced ``[TOK1..]`` get
    no loss, and all are placeholders (pad) in ``encoded.ids``, overwritten by the learned rows.
    Earlier assistant turns in words are targets too."""
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
    dialogue.targets = _history_targets(tokenizer, dialogue.turns, soft_tokens, prompt.ids)
    dialogue.targets += [(p - 1, true_ids[p]) for p in range(start, len(true_ids)) if true_ids[p] != forced]
    dialogue.encoded = Encoded(ids, prompt.slots, start)
