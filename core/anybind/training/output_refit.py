"""Each output projector fitted again to the instructed LM's states: instruct's last part.

The adapters change the LM's final states, and with them what an output projector reads. While
they train, the projector stays as align-out left them (trained along at the full rate it
drifts on the few outputs in each batch), so after instruct it reads states it was not fitted
to: the conditioning lands further from its caption's encoding, and a request whose answer
names the label can still draw another one (bench/RESULTS.md, "multi-turn conversations").

Once the adapters are done the states are fixed, so this is cheap: one pass without gradients
over the conversations that make outputs collects, for each output, the states at ``[TOK0..k-1]``
and the context before them (from the request on), the standardisation is measured again on
them, and the projector alone (not its ``[TOK]`` rows, which the LM reads, nor its gate) trains
on align-out's loss for a few hundred steps of a small network.
"""

from __future__ import annotations

import random

import torch

from anybind.chat.outputs import pad_contexts
from anybind.models.losses import conditioning_loss

#: The parts of a GenerativeOutput the LM itself depends on: they stay as instruct left them.
_LM_SIDE = ("embed", "head.")


def collect_output_states(tuner, dialogues, batch_size: int) -> dict[str, list[tuple]]:
    """``{modality: [(states (k, H), context (n, H), caption)]}`` over the ``dialogues`` that make
    outputs, from the LM as it is now (``tuner``: instruct's module)."""
    made = [d for d in dialogues if d.outputs]
    out: dict[str, list[tuple]] = {}
    with torch.no_grad():
        for i in range(0, len(made), batch_size):
            batch = made[i:i + batch_size]
            opening, tails = tuner.hidden(batch)
            for d, tail in zip(batch, tails):
                row = torch.cat([opening, tail]).float().cpu()
                for start, modality, caption in d.outputs:
                    k = tuner.outputs[modality].tokens
                    out.setdefault(modality, []).append((row[start:start + k], row[d.encoded.request_start:start], caption))
    return out


def refit_output(output, examples: list[tuple], cond_of: dict[str, torch.Tensor], *, steps: int, batch_size: int,
                 lr: float, contrast_weight: float, contrast_temperature: float, seed: int) -> dict[str, float]:
    """Train ``output``'s projector on ``examples`` (see :func:`collect_output_states`) towards each
    caption's conditioning in ``cond_of``; returns the MSE over every example before and after."""
    before = _mse(output, examples, cond_of)
    states = torch.stack([s for s, _, _ in examples])
    output.calibrate(states.to(output.embed.device),
                     torch.cat([c for _, c, _ in examples]).to(output.embed.device) if output.reads_context else None)
    bank = torch.stack(list(cond_of.values()))  # conditioning_loss skips a bank of one
    params = [p.requires_grad_(True) for name, p in output.named_parameters() if not name.startswith(_LM_SIDE)]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    output.train()
    for _ in range(steps):
        batch = rng.sample(examples, min(batch_size, len(examples)))
        mse, contrast = output_loss(output, batch, cond_of, bank, contrast_temperature)
        optimizer.zero_grad(set_to_none=True)
        (mse + contrast_weight * contrast).backward()
        optimizer.step()
    output.eval()
    return {"mse_before": before, "mse_after": _mse(output, examples, cond_of)}


def output_loss(output, made: list[tuple], cond_of: dict[str, torch.Tensor], bank: torch.Tensor | None,
                temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mse, contrast)`` of ``output``'s conditioning from ``made``, ``[(states (k, H), context
    (n, H), caption)]``, against each caption's in ``cond_of`` (align-out's loss; instruct's
    adapters train on it too, the states then carrying their gradients)."""
    device = output.embed.device
    context, mask = pad_contexts([c.to(device) for _, c, _ in made]) if output.reads_context else (None, None)
    predicted = output(torch.stack([s for s, _, _ in made]).to(device), context, mask)
    target = torch.stack([cond_of[caption] for _, _, caption in made]).to(device)
    return conditioning_loss(predicted, target, bank, temperature)


@torch.no_grad()
def _mse(output, examples, cond_of) -> float:
    total = 0.0
    for i in range(0, len(examples), 64):
        batch = examples[i:i + 64]
        total += float(output_loss(output, batch, cond_of, None, 1.0)[0]) * len(batch)
    return round(total / len(examples), 5)
