"""The KV-cached decode loops and sampling.

The loops are deliberately bare (prefill once from input embeddings, then one token at a
time against the cache) so that anybind's generation costs what ``transformers``'
``generate`` costs on the same inputs; ``bench/chat_speed.py`` measures the ratio.

* :func:`decode_text`: text only, optionally after a shared :class:`PrefixCache`;
* :func:`decode_with_outputs`: the vocabulary gains every output's generative tokens
  (:class:`anybind.chat.outputs.OutputVocab`), and each step also yields hidden states for
  the output projectors.
"""

from __future__ import annotations

from typing import Iterator

import torch

from anybind.chat.events import SamplingOptions


def sample(logits: torch.Tensor, options: SamplingOptions, generator: torch.Generator | None) -> torch.Tensor:
    """Next token per row from (B, V) logits: greedy at temperature 0, else temperature + nucleus."""
    if options.temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / options.temperature, dim=-1)
    if options.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > options.top_p  # keep the smallest set reaching top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class _Steps:
    """What both loops share: the sampler's generator, positions, the growing mask and stopping."""

    def __init__(self, attention_mask: torch.Tensor, options: SamplingOptions, stop_ids, device,
                 words: torch.Tensor | None = None, not_first: torch.Tensor | None = None):
        self.options = options
        self.words = words.to(device) if words is not None else None  # see models.output.word_tokens
        # (ids, rows): tokens those rows' answers may not begin with (rows None: every row)
        self.not_first = [(not_first.to(device), None)] if not_first is not None else []
        self.last: torch.Tensor | None = None
        self.generator = None
        if options.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(options.seed)
        self.rows = len(attention_mask)
        self.mask = attention_mask
        self.positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # of the prompt, (B, T)
        self.stop = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
        self.finished = torch.zeros(self.rows, dtype=torch.bool, device=device)
        self.step = 0

    def refuse_first(self, ids: torch.Tensor, rows: torch.Tensor) -> None:
        """The rows marked in ``rows`` (B,) may not begin their answer with any of ``ids``."""
        if bool(rows.any()):
            self.not_first.append((ids.to(rows.device), rows))

    def refused_outputs(self, unasked: torch.Tensor | None, outputs: int, opener: torch.Tensor | None) -> torch.Tensor:
        """``(B, outputs)``: the outputs each row may not make, those its request does not ask for
        (``unasked``, from ``OutputVocab.unasked``; None: none); a row whose request asks for none
        may not begin with ``opener`` either (ids: how an answer announces an output)."""
        refused = torch.zeros(self.rows, outputs, dtype=torch.bool) if unasked is None else unasked
        refused = refused.to(self.finished.device)
        if opener is not None and outputs:
            self.refuse_first(opener, refused.all(-1))
        return refused

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        if self.not_first and self.step == 0:
            logits = logits.clone()
            for ids, rows in self.not_first:
                chosen = slice(None) if rows is None else rows.nonzero()[:, :1]
                logits[chosen, ids] = float("-inf")
        if self.words is not None and self.last is not None:  # a word never follows itself
            repeated = (self.last < len(self.words)) & self.words[self.last.clamp(max=len(self.words) - 1)]
            if bool(repeated.any()):
                logits = logits.clone()
                logits[repeated.nonzero()[:, 0], self.last[repeated]] = float("-inf")
        return sample(logits, self.options, self.generator)

    def settle(self, token: torch.Tensor) -> torch.Tensor:
        """A row that has stopped keeps yielding its stop token."""
        if len(self.stop):
            token = torch.where(self.finished, self.stop[0], token)
            self.finished |= torch.isin(token, self.stop)
        self.last = token
        return token

    def advance(self, busy: bool = False) -> bool:
        """Count a yielded step; False once every row stopped, or at the token limit (unless ``busy``)."""
        self.step += 1
        if (self.step >= self.options.max_new_tokens and not busy) or bool(self.finished.all()):
            return False
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.rows, 1)], dim=1)
        self.positions = self.positions[:, -1:] + 1
        return True


@torch.inference_mode()
def decode_text(model, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, options: SamplingOptions,
                stop_ids=(), *, prefix=None) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B,), until each row has stopped or ``max_new_tokens``.

    Rows are left-padded. ``prefix`` (an :class:`anybind.chat.conversation.PrefixCache`) holds
    ids every row starts with, already run: the rows' embeddings and mask then cover what follows.
    """
    rows = len(attention_mask)
    if prefix is not None and prefix.ids:
        full = torch.cat([attention_mask.new_ones(rows, len(prefix.ids)), attention_mask], dim=1)
        steps = _Steps(full, options, stop_ids, inputs_embeds.device)
        out = prefix.forward(inputs_embeds, attention_mask)
        logits, past = model.get_output_embeddings()(out.last_hidden_state[:, -1]), out.past_key_values
    else:
        steps = _Steps(attention_mask, options, stop_ids, inputs_embeds.device)
        out = model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=steps.positions,
                    use_cache=True, logits_to_keep=1)
        logits, past = out.logits[:, -1, :], out.past_key_values
    while True:
        token = steps.settle(steps.pick(logits))
        yield token
        if not steps.advance():
            return
        out = model(input_ids=token[:, None], attention_mask=steps.mask, position_ids=steps.positions,
                    past_key_values=past, use_cache=True)
        logits, past = out.logits[:, -1, :], out.past_key_values


@torch.inference_mode()
def decode_with_outputs(model, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, options: SamplingOptions,
                        stop_ids, vocab, *, max_outputs: int = 4, boundaries: torch.Tensor | None = None,
                        words: torch.Tensor | None = None, not_first: torch.Tensor | None = None,
                        unasked: torch.Tensor | None = None, opener: torch.Tensor | None = None) -> Iterator:
    """Yield ``(token (B,), hidden)`` per step; ``vocab`` is the :class:`~anybind.chat.outputs.OutputVocab`.

    Each output's ``[TOK0]`` competes with the text tokens (one gate logit per output), the rest of its
    ``k`` tokens are forced after it. ``hidden`` (B, n, H): the final states of the positions fed since
    the last yield (the whole prompt first), the last one that of the position whose output ``token``
    is. A row part-way through an output finishes it past ``max_new_tokens``; ``max_outputs`` caps the
    outputs per row. ``boundaries`` (bool over the vocabulary): ``[TOK0]`` competes only first and after
    a marked token (a sentence end); ``words``: a marked token never follows itself; ``not_first`` (ids):
    tokens no answer begins with; ``unasked`` and ``opener``: see :meth:`_Steps.refused_outputs`."""
    steps = _Steps(attention_mask, options, stop_ids, inputs_embeds.device, words, not_first)
    base, head, table = model.base_model, model.get_output_embeddings(), model.get_input_embeddings()
    V, rows_of_outputs = vocab.vocab, vocab.table()
    firsts, lasts = (t.to(inputs_embeds.device) for t in vocab.bounds())
    request = None  # each row's state where its answer starts (the prompt is left-padded: its last position)

    def forward(embeds, past):
        out = base(inputs_embeds=embeds, attention_mask=steps.mask, position_ids=steps.positions,
                   past_key_values=past, use_cache=True)
        h = out.last_hidden_state
        gates = vocab.gate_logits(h[:, -1], h[:, -1] if request is None else request)
        return torch.cat([head(h[:, -1]).float(), gates], dim=-1), h, out.past_key_values

    logits, hidden, past = forward(inputs_embeds, None)
    request = hidden[:, -1]
    unasked = steps.refused_outputs(unasked, len(firsts), opener)
    run_last = torch.full((steps.rows,), -1, dtype=torch.long, device=inputs_embeds.device)  # last id of the run a row is in
    made = torch.zeros(steps.rows, dtype=torch.long, device=inputs_embeds.device)
    boundaries, previous = boundaries.to(inputs_embeds.device) if boundaries is not None else None, None
    while True:
        blocked = made >= max_outputs
        if boundaries is not None and previous is not None:
            blocked |= ~(boundaries[previous.clamp(max=len(boundaries) - 1)] | (previous >= V))
        logits[:, V:] = logits[:, V:].masked_fill(blocked[:, None] | unasked, float("-inf"))
        if previous is not None:  # an output never follows itself straight away: the next one, or text
            just_made = (previous >= V) & (previous == run_last)  # ``owner`` is still the previous token's
            again = torch.nn.functional.one_hot(owner.clamp(min=0), len(firsts)).bool() & just_made[:, None]
            logits[:, V:] = logits[:, V:].masked_fill(again, float("-inf"))
        token = steps.pick(logits)
        token = torch.where(token >= V, firsts[(token - V).clamp(min=0, max=len(firsts) - 1)], token)  # gate -> [TOK0]
        if previous is not None:
            token = torch.where((previous >= V) & (previous < run_last), previous + 1, token)  # forced [TOK1..]
        token = steps.settle(token)
        started = torch.isin(token, firsts)
        owner = torch.searchsorted(firsts, token, right=True) - 1  # which output a generative id belongs to
        run_last = torch.where(started, lasts[owner.clamp(min=0)], torch.where(token >= V, run_last, -1))
        made += started.long()
        yield token, hidden
        previous = token
        if not steps.advance(busy=bool((token >= V).any())):
            return
        is_output = token >= V
        embeds = table(token.clamp(max=V - 1))
        if bool(is_output.any()):
            embeds = torch.where(is_output[:, None], rows_of_outputs[(token - V).clamp(min=0)].to(embeds.dtype), embeds)
        logits, hidden, past = forward(embeds[:, None], past)
