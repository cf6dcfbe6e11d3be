"""Each output's request gate ("does the request ask for me at all?"), fitted at the end of instruct.

The ``[TOK0]`` gate decides at each sentence end whether to make an output now, and it follows the
answer's own words: an unfamiliar plain request after an attachment ("Greet my class politely.")
that the LM began with "Here is ..." was then spoken or drawn. The request gate reads only the
request's words, through the sentence encoder (:mod:`anybind.chat.requests`), and the decode loop
makes no output it says no to (:meth:`anybind.chat.outputs.OutputVocab.unasked`).

It is a logistic regression per output over instruct's own requests (each distinct wording once),
labelled by whether the answer makes that output. Read off the LM's state instead, the same gate
refused requests phrased as instruct never phrases them ("Could you say seven for me?"); in the
sentence encoder's space those lie near the phrasings it was fitted on (bench/RESULTS.md, "a
request gate on the request's words").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from anybind.chat.requests import request_embeddings

#: Distinct requests of each kind (asking for the output, not asking) a gate needs to be fitted.
MIN_EACH = 8


def requests_of(dialogues) -> dict[str, set[str]]:
    """``{the request's words: the outputs its answer makes}``, each wording once (the first seen)."""
    out: dict[str, set[str]] = {}
    for d in dialogues:
        out.setdefault(d.turns[-1].text, {segment[1] for segment in d.answer if segment[0] == "output"})
    return out


def fit_request_gates(outputs: dict, dialogues, *, steps: int, lr: float, weight_decay: float,
                      seed: int) -> dict[str, float]:
    """Give each of ``outputs`` (``{modality: GenerativeOutput}``) a request gate fitted on the
    requests of ``dialogues`` (instruct's); returns, per output, the share of those requests it
    gets right at its threshold (``asked_<modality>``). An output with fewer than ``MIN_EACH``
    requests of either kind gets none."""
    requests = requests_of(dialogues)
    texts = list(requests)
    embeddings = request_embeddings(texts)
    record = {}
    for modality, output in outputs.items():
        labels = torch.tensor([float(modality in requests[t]) for t in texts])
        if min(float(labels.sum()), float((1 - labels).sum())) < MIN_EACH:
            continue
        output.config.asked_width = embeddings.shape[1]
        with torch.random.fork_rng(devices=[]):  # the same gate from the same seed; the caller's RNG untouched
            torch.manual_seed(seed)
            gate = output.new_asked_gate()
        _train(gate, embeddings, labels, steps=steps, lr=lr, weight_decay=weight_decay)
        output.asked, output.config.asked_gate = gate.to(output.embed.device), True
        with torch.no_grad():
            said = output.asked_logit(embeddings).cpu() >= output.config.asked_threshold
        record[f"asked_{modality}"] = round(float((said == labels.bool()).float().mean()), 4)
    return record


def _train(gate: torch.nn.Module, embeddings: torch.Tensor, labels: torch.Tensor, *, steps: int, lr: float,
            weight_decay: float) -> None:
    """Full-batch AdamW on the binary cross-entropy (deterministic: no sampling), requests that
    ask weighted by the share of those that do not (so each kind counts alike)."""
    positives = float(labels.sum())
    weight = torch.tensor((len(labels) - positives) / max(positives, 1.0))
    optimizer = torch.optim.AdamW(gate.parameters(), lr=lr, weight_decay=weight_decay)
    gate.train()
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(gate(embeddings).squeeze(-1), labels, pos_weight=weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    gate.eval()
