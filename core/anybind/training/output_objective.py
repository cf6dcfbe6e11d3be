"""align-out's objective: the frozen LM runs once over every example, then each step only the
output's ``k`` generative tokens run against the cached keys and values.

Loss (GILL / NExT-GPT): cross-entropy over the extended vocabulary on the answer tokens where
the output's first token ``[TOK0]`` may compete (``[TOK0]`` where the output belongs, the LM's
own tokens elsewhere), the end of turn after an output, and the MSE (plus a mild contrast)
between the projected states of ``[TOK0..k-1]`` and the decoder's encoding of the caption.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from anybind.chat.conversation import Encoded, PrefixCache, Turn, encode, input_embeddings, split_prefix
from anybind.chat.model import NO_GRAD_BATCH
from anybind.chat.outputs import pad_contexts
from anybind.models.losses import conditioning_loss
from anybind.models.output import GenerativeOutput


@dataclass
class Example:
    encoded: Encoded
    soft: torch.Tensor | None
    targets: list[tuple[int, int]]  # (position predicting it, target id); id == V is [TOK0]
    caption: str | None  # the output's caption (output examples)


def _mean(values: torch.Tensor) -> torch.Tensor:
    return values.mean() if values.numel() else values.sum()


class OutputObjective(nn.Module):
    """An output's generative tokens and projector, with the loss against cached frozen-LM states (one module for Accelerate)."""

    def __init__(self, gen: GenerativeOutput, backbone, settings):
        super().__init__()
        self.gen = gen
        self.backbone = backbone  # frozen; a plain attribute, never saved
        self.mse_weight = settings.mse_weight
        self.contrast_weight = settings.contrast_weight
        self.temperature = settings.contrast_temperature
        self.bank: torch.Tensor | None = None  # every caption's conditioning (C, T, W)
        self.cache: dict[int, dict] = {}
        # The template's end-of-turn token: what follows an answer's last word.
        self.end_id = encode(backbone.tokenizer, [Turn("user", "Hi")], 1, answer="Hello.").ids[-1]

    @torch.no_grad()
    def prepare(self, examples: list[Example], cond_of: dict[str, torch.Tensor], progress: bool) -> None:
        """Run the frozen LM once over every example; keep what the steps need."""
        from tqdm.auto import tqdm

        model = self.backbone.model
        vocab = self.backbone.vocab_size
        head = model.get_output_embeddings()
        # The template's opening (system prompt, first turn header) is the same in every
        # example: run once, its keys and states are put back in front of each row's own.
        shared, tails = split_prefix([e.encoded for e in examples])
        prefix, n = PrefixCache(self.backbone, shared), len(shared)
        order = sorted(range(len(examples)), key=lambda i: len(examples[i].encoded.ids))
        for start in tqdm(range(0, len(order), NO_GRAD_BATCH), desc="align-out: frozen LM pass", unit="batch",
                          disable=not progress, leave=False):
            chunk = order[start:start + NO_GRAD_BATCH]
            batch = [examples[i] for i in chunk]
            embeds, mask = input_embeddings(self.backbone, [tails[i] for i in chunk], [e.soft for e in batch], pad_left=True)
            out = prefix.forward(embeds, mask)
            width = embeds.shape[1]
            for row, (index, e) in enumerate(zip(chunk, batch)):
                offset = width - len(tails[index].ids)  # the row's first position in the tail part
                where = torch.tensor([offset + p - n for p, _ in e.targets])
                hidden = out.last_hidden_state[row, where].float()
                logits = head(hidden.to(head.weight.dtype)).float()
                ids = torch.tensor([t for _, t in e.targets])
                is_image = ids == vocab
                target = logits.gather(1, ids.clamp(max=logits.shape[1] - 1)[:, None])[:, 0]
                first = torch.zeros(len(ids), dtype=torch.bool)
                first[0] = True  # the answer's first token: where "draw now?" is decided
                # the first target is the answer's first token: its state is where the request ends
                item = {"hidden": hidden.cpu(), "lse": logits.logsumexp(-1).cpu(), "target": target.cpu(),
                        "is_output": is_image, "first": first, "request": hidden[0].cpu()}
                if e.caption is not None:  # the prefix's keys, values and states, then the row's own
                    item["kv"] = [(torch.cat([layer.keys[row, :, :n], layer.keys[row, :, n + offset:]], dim=1),
                                   torch.cat([layer.values[row, :, :n], layer.values[row, :, n + offset:]], dim=1))
                                  for layer in out.past_key_values.layers]
                    item["cond"] = cond_of[e.caption]
                    # the request and the answer before [IMG0], as chat reads them
                    item["context"] = torch.cat([prefix.hidden, out.last_hidden_state[row, offset:]])[e.encoded.request_start:].float().cpu()
                self.cache[index] = item
        self.bank = torch.stack(list(cond_of.values()))  # conditioning_loss skips a bank of one
        drawn = [it for it in self.cache.values() if "kv" in it]
        self.gen.calibrate(torch.cat([self._image_states(drawn[i:i + 32]).cpu() for i in range(0, len(drawn), 32)]),
                           torch.cat([it["context"] for it in drawn]))
        # Start [IMG0]'s logit a little below the LM's typical log-normaliser: low, but in reach.
        lse = torch.cat([it["lse"] for it in self.cache.values()])
        self.gen.set_logit_offset(float(lse.mean()) - 10.0)

    def forward(self, indices: list[int]) -> tuple[torch.Tensor, dict]:
        gen = self.gen
        items = [self.cache[i] for i in indices]
        device = gen.embed.device
        hidden = torch.cat([it["hidden"] for it in items]).to(device)
        lse = torch.cat([it["lse"] for it in items]).to(device)
        target = torch.cat([it["target"] for it in items]).to(device)
        is_image = torch.cat([it["is_output"] for it in items]).to(device)
        first = torch.cat([it["first"] for it in items]).to(device)
        request = torch.cat([it["request"].expand(len(it["hidden"]), -1) for it in items]).to(device)
        z = gen.logit(hidden, request)
        norm = torch.logaddexp(lse, z)
        # Each kind of position weighs the same, however many there are: [IMG0] where an image
        # belongs; a text token as an answer's first token (the hard negatives: "draw now?" is
        # decided there); a text token anywhere else.
        ce_image = _mean((norm - z)[is_image])
        ce_first = _mean((norm - target)[first & ~is_image])
        ce_text = _mean((norm - target)[~first & ~is_image])
        drawn = [it for it in items if "kv" in it]
        mse, contrast, ce_after = self._image_states_loss(drawn)
        loss = ce_image + ce_first + ce_text + ce_after + self.mse_weight * mse + self.contrast_weight * contrast
        parts = {"ce_img": ce_image, "ce_first": ce_first, "ce_text": ce_text, "ce_after": ce_after, "mse": mse,
                 "contrast": contrast}
        return loss, {k: float(v.detach()) for k, v in parts.items()}

    def _image_states(self, items: list[dict]) -> torch.Tensor:
        """Final hidden states at ``[IMG0..k-1]`` after each item's cached prefix, ``(B, k, H)``."""
        from transformers import DynamicCache

        gen, model = self.gen, self.backbone.model
        device = gen.embed.device
        lengths = [it["kv"][0][0].shape[1] for it in items]
        width, k = max(lengths), gen.tokens
        cache = DynamicCache(config=model.config)
        for layer in range(len(items[0]["kv"])):
            keys, values = [], []
            for it, n in zip(items, lengths):
                key, value = it["kv"][layer]
                keys.append(F.pad(key, (0, 0, width - n, 0)))
                values.append(F.pad(value, (0, 0, width - n, 0)))
            cache.update(torch.stack(keys).to(device), torch.stack(values).to(device), layer)
        mask = torch.zeros(len(items), width + k, dtype=torch.long, device=device)
        for row, n in enumerate(lengths):
            mask[row, width - n:] = 1
        positions = torch.tensor(lengths, device=device)[:, None] + torch.arange(k, device=device)
        embeds = gen.embed.to(model.dtype).expand(len(items), -1, -1)
        return model.base_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                past_key_values=cache, use_cache=True).last_hidden_state

    def _image_states_loss(self, items: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        gen, model = self.gen, self.backbone.model
        device = gen.embed.device
        states = self._image_states(items)
        context, context_mask = pad_contexts([it["context"].to(device) for it in items])
        predicted = gen(states, context, context_mask)
        target = torch.stack([it["cond"] for it in items]).to(device)
        mse, contrast = conditioning_loss(predicted, target, self.bank, self.temperature)
        # After the image the answer ends: end of turn, not another [IMG0].
        last = states[:, -1]
        request = torch.stack([it["request"] for it in items]).to(device)
        logits = torch.cat([model.get_output_embeddings()(last).float(), gen.logit(last, request)[:, None]], dim=-1)
        after = F.cross_entropy(logits, torch.full((len(items),), self.end_id, device=device))
        return mse, contrast, after


