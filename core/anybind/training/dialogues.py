"""The instruct stage's training conversations, templated from a manifest and its ``world.json``.

* a question about an attachment of any bound modality, answered with its label;
* a request for an output (an image), answered "Here is a handwritten seven." and the output;
* a request to say something and then make an output: a sentence naming the label, then the output;
* with several output modalities, a sentence and then every output ("..., then draw it and say it");
* follow-ups that refer to an earlier turn: "Now draw it." after a question about an
  attachment, "Which digit did you draw?" after the model's own output, "Name it in one word."
  or "Which one was it?";
* plain chat, answered by the frozen LM's own words (so the adapters keep its manners), most
  of it right after a question about an attachment (whose subject must not leak into the
  answer, and which is no request to make anything);
  or, as often, a request for a sentence about a label alone ("Write one sentence about the
  number four."), answered with the sentence a request to "..., then draw it" starts with, and
  no output: the two differ only in the request's output verb, which is what opens a gate;
* a question about several attachments at once, answered with each one's label in order;
* and a quarter of them after earlier turns about *other* labels (a question about an
  attachment, or a sentence and an output), sometimes with plain chat between a follow-up and
  the turn it refers to: the answer follows the request, not the conversation's earlier subject.

Every world-specific word comes from the manifest (:meth:`~anybind.data.manifest.Manifest.fill`,
``questions``, ``facts``), and how to ask for an output from its decoder's prompts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from anybind.chat.conversation import Attachment, Encoded, Turn, _tokenize, encode
from anybind.data.manifest import Manifest
from anybind.data.prompts import (ASK, CHAT, FOLLOW_NAME, SEVERAL, TOPICS, WRITE_AND_ALL, WRITE_ONLY,
                                  OutputPrompts, addressed_request, again_question, sentence)
from anybind.models.output import OUTPUT_OPENER
from anybind.specs import BINDING_MODALITY

#: An assistant turn whose words are the frozen LM's own, filled in when the LM has answered.
OWN = "\x00own"
#: The share of conversations that start with earlier turns about another label: more teaches a
#: change of subject and costs single-turn drawing (0.5: a third of requests not drawn; bench/RESULTS.md).
EARLIER = 0.25
#: The share of kind-1 conversations that ask about several attachments at once (the rest ask
#: about one): about 9% of all conversations; at 4%, several were named 0-0.2 of the time
#: (bench/RESULTS.md, "instruct: adapters on every linear layer").
SEVERAL_SHARE = 0.75
#: The share of the text-only conversations (kind 7) that ask for a sentence about a label (the
#: rest are plain chat). Without them every request for a sentence about a label was one for an
#: output too, and "Write one sentence about the number four." was answered with speech. At 0.5,
#: plain chat was a sixteenth of all conversations; at 0.35 (a twelfth) the sentence alone still held.
WRITE_ONLY_SHARE = 0.35
#: The share of kind-0 conversations whose question about an attachment is followed by plain chat
#: (the answer the frozen LM's own). With plain chat after an attachment only 4% of conversations
#: and "Now draw it." after one 12%, unfamiliar requests after an attachment ("Salute me in one
#: sentence.", "Recite a proverb.") were answered "Here is a handwritten seven." 0.77-0.84 of the
#: time; with this 0.32 in one retrain (0.72 in one at 0.6) and 0.59 in the d2ae6bf clone's soup.
PLAIN_AFTER = 0.4
#: With several outputs, the share of earlier exchanges that asked for a sentence and every output.
EVERY_OUTPUT_EARLIER = 0.3


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


def several_answer(manifest: Manifest, labels: list[str]) -> str:
    """The answer to a question about several attachments: each label, in order, in a plural
    sentence ("They are the digits three and five."). Answered with the bare labels ("Three and
    five."), the single attachment's "It is the digit five." (naming the last) won 2 times in 3."""
    names = ", ".join(labels[:-1]) + f" and {labels[-1]}"
    return f"They are the {manifest.kind}s {names}." if manifest.kind else sentence(names)


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
    made = sorted(outputs)
    # None: every output in one answer. The main output (images, what "draw it" asks for) keeps
    # as many requests as all others: with an equal share, requests drawn right fell from 0.95 to 0.86.
    main = BINDING_MODALITY if BINDING_MODALITY in made else made[0] if made else None
    others = [m for m in made if m != main]
    slots = [main, *others, None, main, None] if others else made
    out = []
    for i in range(count):
        output = slots[i // 8 % len(slots)] if made else None
        pool = attachments[sorted(attachments)[i // 8 % len(attachments)]]
        # the label drawn at random: as labels[i % 10] beside kind i % 8 it went with the kind
        # (requests to draw only ever asked for even digits, "write ..., then draw it" odd ones)
        dialogue, label = _dialogue(manifest, i % 8, rng.choice(manifest.labels), output, pool, attachments,
                                    outputs, rng)
        if rng.random() < EARLIER:
            dialogue.turns = _earlier(manifest, label, attachments, outputs, rng) + dialogue.turns
        out.append(dialogue)
    return out


def _dialogue(manifest: Manifest, kind: int, label: str, output: str | None, pool, attachments, outputs,
              rng: random.Random) -> tuple[Dialogue, str]:
    """One conversation of ``kind`` (see the module docstring), and the label it is about."""
    caption = manifest.caption(output or BINDING_MODALITY, label)
    fill = manifest.fill(label, caption)
    prompts = outputs.get(output)
    if kind == 0 and rng.random() < PLAIN_AFTER:  # plain chat right after a question about an attachment
        return Dialogue(_asked(manifest, *rng.choice(pool), rng, plain=0) + [_plain(fill, rng)], [("own", "")]), label
    if kind == 0 or (kind == 1 and rng.random() >= SEVERAL_SHARE):  # a question about an attachment of any modality
        attachment, label = rng.choice(pool)
        return Dialogue([Turn("user", manifest.ask(rng), [attachment])], [("text", manifest.answer_for(label))]), label
    if kind == 1:  # several attachments at once, of any modalities, each named in order
        several = rng.sample([p for ps in attachments.values() for p in ps], rng.choice((2, 2, 3)))
        names = [l for _, l in several]
        kind_of = manifest.kind or "one"
        ask = rng.choice(SEVERAL).format(kind=kind_of)
        answer = several_answer(manifest, names)
        return Dialogue([Turn("user", ask, [a for a, _ in several])], [("text", answer)]), names[-1]
    if kind in (2, 3, 4, 5) and outputs and output is None:  # a sentence, then every output
        return every_output(manifest, outputs, label, rng), label
    if kind == 2 and prompts:  # make an output: say what it is, then make it
        return Dialogue([Turn("user", rng.choice(prompts.request).format(**fill))], _here_is(caption, output)), label
    if kind == 3 and prompts:  # say something, then make an output
        return Dialogue([Turn("user", rng.choice(prompts.write_and).format(**fill))],
                        [("text", about(manifest, label, caption, rng)), ("output", output, caption)]), label
    if kind == 4 and prompts:  # follow-up: make what the attachment was (maybe after plain chat)
        attachment, label = rng.choice(pool)
        follow = rng.choice(prompts.follow).format(**manifest.fill(label))
        return Dialogue(_asked(manifest, attachment, label, rng) + [Turn("user", follow)],
                        _here_is(manifest.caption(output, label), output)), label
    if kind == 5 and prompts and output in attachments:  # follow-up about the model's own output
        made_one, label = rng.choice(attachments[output])
        asked = manifest.fill(label, manifest.caption(output, label))
        history = [Turn("user", rng.choice(prompts.request).format(**asked)), Turn("assistant", "", [made_one])]
        ask = rng.choice(prompts.ask_made).format(**asked)
        return Dialogue(history + [Turn("user", ask)], [("text", manifest.answer_for(label))]), label
    if kind == 6:  # follow-up in words (maybe after plain chat): in one word if asked so, else as before
        attachment, label = rng.choice(pool)
        if rng.random() < 0.5:
            ask, answer = rng.choice(FOLLOW_NAME), sentence(label)
        else:
            ask, answer = again_question(rng, manifest.kind or "one"), manifest.answer_for(label)
        history = _asked(manifest, attachment, label, rng)
        if rng.random() < 0.5:  # after another attachment: the *last* one is the one asked about
            other, other_label = rng.choice([p for p in pool if p[1] != label] or pool)
            history = [Turn("user", manifest.ask(rng), [other]), Turn("assistant", manifest.answer_for(other_label))] + history
        return Dialogue(history + [Turn("user", ask)], [("text", answer)]), label
    if rng.random() < WRITE_ONLY_SHARE:  # a sentence about the label, and no output
        ask = rng.choice(WRITE_ONLY).format(**fill)
        return Dialogue([Turn("user", ask)], [("text", about(manifest, label, caption, rng))]), label
    # plain chat: the frozen LM's own answer, mostly after talk about an attachment (the answer
    # is the same: earlier talk must not leak into it). Not after an answer that made an output:
    # that taught the gate to stay shut after a drawing (bench/RESULTS.md).
    history = _asked(manifest, *rng.choice(pool), rng, plain=0) if rng.random() < 0.75 else []
    return Dialogue(history + [_plain(fill, rng)], [("own", "")]), label


def _here_is(caption: str, output: str) -> list[tuple]:
    """An answer that makes an output: "Here is a handwritten seven.", then the output. The
    caption is then in the output projector's context (which starts at the request: "Now draw
    it." alone does not say what), and "Here is" starts every such answer, so the gate learns
    one place to open from every request, however it is worded."""
    return [("text", f"{OUTPUT_OPENER} {caption}."), ("output", output, caption)]


def _plain(fill: dict, rng: random.Random) -> Turn:
    """A text-only request that asks for no output."""
    source = rng.randrange(3)  # everyday chat, a request made up from parts, or a question about a topic
    topic = rng.choice(TOPICS).format(**fill)
    ask = rng.choice(CHAT) if source == 0 else addressed_request(rng) if source == 1 else rng.choice(ASK).format(t=topic)
    # "Write one sentence about {t}." about the label itself is a request for a sentence alone
    # (WRITE_ONLY), which has its own answer: never both answers to one request
    return Turn("user", rng.choice(CHAT) if ask in {w.format(**fill) for w in WRITE_ONLY} else ask)


def _asked(manifest: Manifest, attachment: Attachment, label: str, rng: random.Random, plain: float = 0.5) -> list[Turn]:
    """A question about ``attachment`` and its answer, then (``plain`` of the time) plain chat."""
    turns = [Turn("user", manifest.ask(rng), [attachment]), Turn("assistant", manifest.answer_for(label))]
    if rng.random() < plain:
        turns += [_plain(manifest.fill(label), rng), Turn("assistant", OWN)]
    return turns


def _earlier(manifest: Manifest, label: str, attachments, outputs: dict[str, OutputPrompts],
             rng: random.Random) -> list[Turn]:
    """One or two earlier exchanges about labels other than ``label``: a question about an
    attachment and its answer, or a sentence and an output (an attachment of that modality
    standing in for what the model made)."""
    turns: list[Turn] = []
    for _ in range(rng.choice((1, 1, 2))):
        if len(outputs) > 1 and set(outputs) <= set(attachments) and rng.random() < EVERY_OUTPUT_EARLIER:
            # a sentence and every output earlier: "Say the number two." after one was answered
            # with a sentence alone, as the earlier answer was (the quickstart's whole demo)
            other = rng.choice([l for l in manifest.labels if l != label] or manifest.labels)
            asked = every_output(manifest, outputs, other, rng)
            stand_ins = [rng.choice([p for p in attachments[m] if p[1] == other] or attachments[m])[0]
                         for m in (segment[1] for segment in asked.answer if segment[0] == "output")]
            turns += [asked.turns[0], Turn("assistant", asked.answer[0][1], stand_ins)]
            continue
        modality = rng.choice(sorted(attachments))
        others = [p for p in attachments[modality] if p[1] != label] or attachments[modality]
        attachment, other = rng.choice(others)
        made = [m for m in outputs if m == modality and outputs[m].write_and]
        if made and rng.random() < 0.5:
            fill = manifest.fill(other, manifest.caption(modality, other))
            turns += [Turn("user", rng.choice(outputs[modality].write_and).format(**fill)),
                      Turn("assistant", about(manifest, other, manifest.caption(modality, other), rng), [attachment])]
        else:
            turns += [Turn("user", manifest.ask(rng), [attachment]), Turn("assistant", manifest.answer_for(other))]
    return turns


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
    dialogue.encoded = Encoded(ids, prompt.slots, start, prompt.request_start)
