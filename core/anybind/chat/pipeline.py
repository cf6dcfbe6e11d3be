"""Answering: one user turn in, a stream of events out, written as numbered steps.

Like diffusers' pipelines: the components come from the :class:`~anybind.chat.model.ChatModel`,
and :func:`respond` reads top to bottom: fit the context, embed the prompt and its
attachments, decode, make each output where its tokens complete, finish.
"""

from __future__ import annotations

import time
from typing import Iterator

from anybind.chat.best_of import words_of
from anybind.chat.conversation import Turn, fit, input_embeddings
from anybind.chat.decode import decode_text, decode_with_outputs
from anybind.chat.events import DoneEvent, NoticeEvent, OutputEvent, SamplingOptions, TextEvent, TextStream
from anybind.chat.outputs import OutputStates, OutputVocab, broke_promise, promised


def respond(model, turns: list[Turn], options: SamplingOptions | None = None, *, max_new_tokens: int = 256,
            temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None, projector: str | None = None,
            draw: bool = True, max_images: int = 4, image_steps: int | None = None,
            began: float | None = None) -> Iterator:
    """Continue a conversation whose last turn is the user's, yielding :class:`TextEvent` pieces and
    :class:`OutputEvent` outputs in order, maybe a :class:`NoticeEvent`, then one :class:`DoneEvent`.

    ``projector`` forces one input projector for every attachment; ``draw=False`` keeps a model
    that makes outputs to text; ``max_images`` caps the outputs of one answer and
    ``image_steps`` sets their decoders' sampling steps."""
    began = began or time.time()
    options = options or SamplingOptions(max_new_tokens, temperature, top_p, seed)
    backbone = model.backbone
    # 1. Fit the conversation into the context, dropping the oldest turns if needed.
    encoded, dropped = fit(backbone.tokenizer, turns, model.soft_tokens, backbone.max_context - options.max_new_tokens)
    if dropped:
        yield NoticeEvent(f"dropped the {dropped} oldest turn(s) to fit the model's {backbone.max_context}-token context")
    # 2. Embed the prompt, with each attachment's soft tokens in its place.
    embeds, mask = input_embeddings(backbone, [encoded], [model.soft_tokens_for(encoded, projector)], pad_left=True)
    # 3. Decode; with outputs, generative tokens compete with text at sentence ends. An answer
    #    that begins as one that makes an output ("Here is ...") is held back until it makes one;
    #    if it ends having made none, it is decoded again without that beginning.
    vocab = model.output_vocab() if draw and model.outputs else None
    #    An output the request's words do not ask for (its request gate says so) is never made.
    request = turns[-1].text
    unasked = vocab.unasked([request]) if vocab is not None else None
    attempt = _answer(model, encoded, request, embeds, mask, options, vocab, max_images, image_steps, began, unasked)
    if vocab is None:
        yield from attempt
        return
    held: list[TextEvent] | None = []  # the answer's text while it may still promise an output
    for event in attempt:
        if held is not None and isinstance(event, TextEvent) and promised("".join(e.text for e in held) + event.text,
                                                                            model.opener):
            held.append(event)
            continue
        if held is not None and isinstance(event, DoneEvent) and broke_promise(event.text, event.usage["outputs"],
                                                                               model.opener):
            yield from _answer(model, encoded, request, embeds, mask, options, vocab, max_images, image_steps, began,
                               unasked, not_first=model.opener_start())
            return
        yield from held or ()
        held = None
        yield event


def _answer(model, encoded, request: str, embeds, mask, options: SamplingOptions, vocab: OutputVocab | None,
            max_images: int, image_steps: int | None, began: float, unasked=None, not_first=None) -> Iterator:
    """One decode of the answer to ``request`` (the last turn's words): its text pieces and outputs
    in order, then a :class:`DoneEvent`."""
    backbone = model.backbone
    if vocab is None:
        steps = ((token, None) for token in decode_text(backbone.model, embeds, mask, options, backbone.stop_ids))
    else:
        steps = decode_with_outputs(backbone.model, embeds, mask, options, backbone.stop_ids, vocab,
                                    max_outputs=max_images, boundaries=model.boundaries, words=model.words,
                                    not_first=not_first, unasked=unasked, opener=model.opener_start())
    tracker = OutputStates(vocab, mask, [encoded.request_start]) if vocab is not None else None
    stream, stop = TextStream(backbone.tokenizer), set(backbone.stop_ids)
    first, reason, count, made, kinds = None, "length", 0, 0, {}
    for token, hidden in steps:
        # 4. An output whose tokens are complete is made by its decoder, in its place.
        for _, index, states, context in (tracker.push(token, hidden) if tracker is not None else ()):
            output = vocab.outputs[index]
            value = model.make(output.modality, states[None], context[None], seed=(options.seed or 0) + made,
                               steps=image_steps, words=[words_of(request, stream.text)])[0]
            first = first if first is not None else time.time() - began
            yield OutputEvent(output.modality, value, made)
            made += 1
            kinds[output.modality] = kinds.get(output.modality, 0) + 1
        token_id = int(token[0])
        count += 1
        if token_id in stop:
            reason = "stop"
            break
        if token_id >= backbone.vocab_size:
            continue
        piece = stream.push(token_id)
        if piece:
            first = first if first is not None else time.time() - began
            yield TextEvent(piece)
    # 5. Finish: what the detokeniser still holds, then the whole answer with its counts.
    rest = stream.flush()
    if rest:
        yield TextEvent(rest)
    yield DoneEvent(stream.text, count, reason, time.time() - began, first,
                    usage={"prompt_tokens": len(encoded.ids), "completion_tokens": count, "outputs": made,
                           "images": kinds.get("image", 0), "made": kinds})
