"""The generative tokens of every output a chat model makes, and collecting their states.

The LM's own vocabulary has ids ``0 .. V-1``. Each output modality the model makes (in a
fixed order) gets the next ``k`` ids for its ``[TOK0..k-1]``: the first output ``V ..
V+k-1``, the next after those. :class:`OutputVocab` is the policy the decode loop asks which
output a sampled gate starts; :class:`OutputStates` collects, per row, the hidden states an
output projector reads once an output's tokens are complete.
"""

from __future__ import annotations

from typing import Sequence

import torch

from anybind.chat.requests import request_embeddings


class OutputVocab:
    """Generative token ids of ``outputs`` (a list of :class:`~anybind.models.output.GenerativeOutput`)."""

    def __init__(self, outputs: list, vocab: int):
        self.outputs, self.vocab = list(outputs), int(vocab)
        self.firsts, start = [], self.vocab
        for output in self.outputs:
            self.firsts.append(start)
            start += output.tokens
        self.size = start

    def __len__(self) -> int:
        return len(self.outputs)

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(first id, last id)`` of each output's tokens, as tensors."""
        firsts = torch.tensor(self.firsts, dtype=torch.long)
        return firsts, firsts + torch.tensor([o.tokens for o in self.outputs]) - 1

    def table(self) -> torch.Tensor:
        """Input embeddings of every generative id, in id order: ``(size - V, H)``."""
        return torch.cat([o.embed for o in self.outputs])

    def gate_logits(self, hidden: torch.Tensor, request: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, H)`` final states -> ``(B, outputs)`` logits of each output's ``[TOK0]``;
        ``request`` ``(B, H)``: each row's state where its answer starts (see ``GenerativeOutput.logit``)."""
        return torch.stack([o.logit(hidden, request) for o in self.outputs], dim=-1)

    def unasked(self, requests: Sequence[str]) -> torch.Tensor | None:
        """``(B, outputs)`` for the words of each row's request: True where that output's request
        gate says the request does not ask for it (never for an output without one); None when no
        output has one (the sentence encoder is then never loaded)."""
        if not any(o.config.asked_gate for o in self.outputs):
            return None
        embeddings = request_embeddings(requests)
        columns = [torch.zeros(len(requests), dtype=torch.bool) if not o.config.asked_gate
                   else (o.asked_logit(embeddings) < o.config.asked_threshold).cpu() for o in self.outputs]
        return torch.stack(columns, dim=-1)

    def owner(self, token_id: int) -> tuple[int, int] | None:
        """``(output index, j)`` of a generative id (``[TOK_j]`` of that output), None for a text id."""
        for index in reversed(range(len(self.firsts))):
            if token_id >= self.firsts[index]:
                return index, token_id - self.firsts[index]
        return None


class OutputStates:
    """Collects, per row of a decode, the final hidden states of an output's ``[TOK0..k-1]`` as
    they are fed, and those of every position before them (the context a projector may read).

    The decode loop yields ``(token, hidden)`` with ``hidden`` the states fed since its last
    yield (the prompt's first: ``prompt_mask`` (B, L), 1 where a row's prompt is, not its
    padding); after a row's token was ``[TOK_j]``, the next ``hidden[:, -1]`` is that token's
    state. :meth:`push` returns ``(row, output index, states (k, H), context (n, H))`` for
    rows whose output is complete; the context starts at the row's ``request_starts`` (the
    :attr:`~anybind.chat.conversation.Encoded.request_start` of its prompt; 0: all of it).
    """

    def __init__(self, vocab: OutputVocab, prompt_mask: torch.Tensor, request_starts: list[int] | None = None):
        self.vocab = vocab
        self.prompt_mask = prompt_mask.bool()
        rows = len(prompt_mask)
        self.request_starts = list(request_starts) if request_starts is not None else [0] * rows
        self.seen: list[list[torch.Tensor]] = [[] for _ in range(rows)]  # every state of the row, in order
        self.states: list[list[torch.Tensor]] = [[] for _ in range(rows)]
        self.after: list[int | None] = [None] * rows  # the output whose token the row just fed

    def push(self, token: torch.Tensor, hidden: torch.Tensor) -> list[tuple[int, int, torch.Tensor, torch.Tensor]]:
        first = not self.seen[0]
        done = []
        for row, token_id in enumerate(token.tolist()):
            self.seen[row].append(hidden[row][self.prompt_mask[row].to(hidden.device)] if first else hidden[row])
            output = self.after[row]
            if output is not None:
                self.states[row].append(hidden[row, -1])
                k = self.vocab.outputs[output].tokens
                if len(self.states[row]) == k:
                    seen = torch.cat(self.seen[row])
                    done.append((row, output, torch.stack(self.states[row]), seen[self.request_starts[row]: len(seen) - k]))
                    self.states[row] = []
            owner = self.vocab.owner(token_id)
            self.after[row] = owner[0] if owner is not None else None
        return done


def pad_contexts(contexts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``(n_i, H)`` context states into ``((B, N, H), mask (B, N))``."""
    width = max(len(c) for c in contexts)
    out = contexts[0].new_zeros(len(contexts), width, contexts[0].shape[-1])
    mask = torch.zeros(len(contexts), width, dtype=torch.long, device=contexts[0].device)
    for row, c in enumerate(contexts):
        out[row, : len(c)] = c
        mask[row, : len(c)] = 1
    return out, mask


def promised(text: str, opener: str) -> bool:
    """Whether an answer's text so far begins, or may still begin, as one that makes an output
    (``opener``: :data:`anybind.models.output.OUTPUT_OPENER`); such an answer must make one."""
    start = text.lstrip()
    return start.startswith(opener) or opener.startswith(start)


def broke_promise(text: str, made: int, opener: str) -> bool:
    """A whole answer that began as one that makes an output, and made none: it says it shows
    something ("Here is a handwritten seven.") that is not there, and is decoded again."""
    return made == 0 and text.lstrip().startswith(opener)
