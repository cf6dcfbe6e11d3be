"""Greedy answers to many conversations at once: what evaluation and training ask the model.

One helper serves ``ChatModel.answer_batch`` (a question about each attachment),
``draw_batch`` (requests that may make outputs) and the LM's own answers that align-out and
instruct train on (text-only questions sharing the system prompt, run once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from anybind.chat.best_of import words_of
from anybind.chat.conversation import PrefixCache, Turn, encode, input_embeddings, split_prefix
from anybind.chat.decode import decode_text, decode_with_outputs
from anybind.chat.events import SamplingOptions
from anybind.chat.outputs import OutputStates, OutputVocab, broke_promise, pad_contexts


@dataclass
class Answer:
    text: str
    outputs: list = field(default_factory=list)  # what the decoders made, in the order the answer made them
    modalities: list[str] = field(default_factory=list)  # the output modality of each


@torch.no_grad()
def greedy_answers(model, conversations: Sequence[list[Turn]], *, max_new_tokens: int, projector: str | None = None,
                   make: bool = False, seed: int = 0, steps: int | None = None, shared_prefix: bool = False,
                   batch_size: int | None = None, progress: bool = False, desc: str = "answers",
                   max_outputs: int = 1) -> list[Answer]:
    """Greedy answers to ``conversations`` (each ending with the user's turn), decoded in batches.

    ``make``: outputs may be made (at most ``max_outputs`` per answer); ``shared_prefix``: the ids every
    conversation starts with (the system prompt, text only) run once, not once per row."""
    from tqdm.auto import tqdm

    encodings = [encode(model.backbone.tokenizer, turns, model.soft_tokens) for turns in conversations]
    prefix = None
    if shared_prefix:
        ids, encodings = split_prefix(encodings)
        prefix = PrefixCache(model.backbone, ids)
    size = batch_size or max(1, len(encodings))
    answers: list[Answer] = []
    for start in tqdm(range(0, len(encodings), size), desc=desc, unit="batch", disable=not progress, leave=False):
        chunk = encodings[start:start + size]
        soft = [model.soft_tokens_for(e, projector) for e in chunk]
        embeds, mask = input_embeddings(model.backbone, chunk, soft, pad_left=True)
        if make and model.outputs:
            requests = [turns[-1].text for turns in conversations[start:start + size]]
            answers += _with_outputs(model, embeds, mask, [e.request_start for e in chunk], requests, max_new_tokens, seed,
                                    steps, max_outputs)
        else:
            tokens = list(decode_text(model.backbone.model, embeds, mask, SamplingOptions(max_new_tokens),
                                      model.backbone.stop_ids, prefix=prefix))
            rows = torch.stack(tokens, dim=1).tolist() if tokens else [[] for _ in chunk]
            answers += [Answer(_text(model.backbone, row)) for row in rows]
    return answers


def _with_outputs(model, embeds, mask, request_starts: list[int], requests: list[str], max_new_tokens: int, seed: int,
                  steps: int | None, max_outputs: int) -> list[Answer]:
    """Answers that may make outputs (none a row's request gate says it does not ask for; ``requests``:
    each row's words); one that began as if it made one and made none is decoded again without that
    beginning (:func:`~anybind.chat.outputs.broke_promise`), as chat streams it."""
    vocab = model.output_vocab()
    unasked = vocab.unasked(requests)
    answers = _decode_making(model, vocab, embeds, mask, request_starts, requests, max_new_tokens, seed, steps,
                             max_outputs, unasked)
    again = [row for row, a in enumerate(answers) if broke_promise(a.text, len(a.outputs), model.opener)]
    if again:
        redone = _decode_making(model, vocab, embeds[again], mask[again], [request_starts[row] for row in again],
                                [requests[row] for row in again], max_new_tokens, seed, steps, max_outputs,
                                None if unasked is None else unasked[again], not_first=model.opener_start())
        for row, answer in zip(again, redone):
            answers[row] = answer
    return answers


def _decode_making(model, vocab: OutputVocab, embeds, mask, request_starts: list[int], requests: list[str],
                   max_new_tokens: int, seed: int, steps: int | None, max_outputs: int, unasked: torch.Tensor | None,
                   not_first: torch.Tensor | None = None) -> list[Answer]:
    backbone = model.backbone
    tracker = OutputStates(vocab, mask, request_starts)
    ids: list[list[int]] = [[] for _ in range(len(mask))]
    pending: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []
    said: list[str] = []  # each pending output's request and its answer's text before it (chat.best_of)
    for token, hidden in decode_with_outputs(backbone.model, embeds, mask, SamplingOptions(max_new_tokens),
                                             backbone.stop_ids, vocab, max_outputs=max_outputs, boundaries=model.boundaries,
                                             words=model.words, not_first=not_first, unasked=unasked,
                                             opener=model.opener_start()):
        for complete in tracker.push(token, hidden):
            pending.append(complete)
            said.append(words_of(requests[complete[0]], _text(backbone, ids[complete[0]])))
        for row, token_id in enumerate(token.tolist()):
            ids[row].append(token_id)
    answers = [Answer(_text(backbone, row)) for row in ids]
    made: dict[int, object] = {}
    for index, output in enumerate(vocab.outputs):  # each decoder once, for every row that asked it
        mine = [n for n, p in enumerate(pending) if p[1] == index]
        if mine:
            context, context_mask = pad_contexts([pending[n][3] for n in mine])
            values = model.make(output.modality, torch.stack([pending[n][2] for n in mine]), context, context_mask,
                                seed=seed, steps=steps, words=[said[n] for n in mine])
            made.update(zip(mine, values))
    for n, (row, index, _, _) in enumerate(pending):  # pending is in the order the outputs were completed
        answers[row].outputs.append(made[n])
        answers[row].modalities.append(vocab.outputs[index].modality)
    return answers


def _text(backbone, ids: list[int]) -> str:
    """The answer's text: up to the first stop id, generative ids left out."""
    stop = set(backbone.stop_ids)
    cut = next((i for i, t in enumerate(ids) if t in stop), len(ids))
    return backbone.tokenizer.decode([t for t in ids[:cut] if t < backbone.vocab_size], skip_special_tokens=True).strip()


def draw_batch(model, prompts: Sequence[str], *, max_new_tokens: int = 48, seed: int = 0,
               image_steps: int | None = None, modality: str | None = None) -> list[tuple[str, list]]:
    """Greedy answers to text prompts, decoded together, with the outputs each one made (for
    evaluation): of ``modality`` only, if given."""
    answers = greedy_answers(model, [model.conversation(p) for p in prompts], max_new_tokens=max_new_tokens,
                             make=True, seed=seed, steps=image_steps)
    return [(a.text, [v for v, m in zip(a.outputs, a.modalities) if modality in (None, m)]) for a in answers]
