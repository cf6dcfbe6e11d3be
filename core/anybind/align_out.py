"""Stage ``align-out``: teach the frozen LM to ask for an image, and what to draw.

Trainable: the input rows of ``[IMG0..k-1]``, the output row of ``[IMG0]`` and the output
projector (:class:`~anybind.imageout.ImageOutput`); the LM, towers and decoder are frozen.
Loss (GILL / NExT-GPT):

* cross-entropy over the extended vocabulary, on every answer token of templated
  conversations: ``[IMG0]`` where an image belongs (a request to draw, alone or after a
  sentence), the LM's own text tokens elsewhere (questions about attachments, plain chat,
  a sentence without a drawing), so ``[IMG0]`` learns both when to fire and when not to;
* MSE between the projected hidden states of ``[IMG0..k-1]`` and the decoder's own text
  encoding of the image's caption (its conditioning sequence).

The frozen LM's part of every example does not change during training, so it runs once:
each example's key/value cache up to the image, the hidden states where answer tokens are
predicted, and the log-normaliser of the LM's own logits there are kept. A step then only
runs the ``k`` generative tokens through the LM against the cached keys/values (exact, not
an approximation) and the projector: the stage takes seconds per hundred steps on a CPU.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from anybind.align import sentence
from anybind.chat import ChatModel, read_chat_config
from anybind.conversation import Encoded, PrefixCache, Turn, _tokenize, encode, input_embeddings, split_prefix
from anybind.errors import AnybindError, InputError
from anybind.imageout import ImageOutput, ImageOutputConfig, conditioning_loss, pad_contexts
from anybind.persistence import CONFIG_NAME, read_config, write_json_atomic
from anybind.trainer import LoopSettings, MetricsLog, make_accelerator, run_loop, say
from anybind.world import Manifest, read_manifest

#: Requests answered by an image alone. ``{c}``: a caption ("a handwritten seven"), ``{l}``: a label.
DRAW = (
    "Draw {c}.", "Please draw {c}.", "Can you draw {c}?", "Show me a picture of {c}.", "Make an image of {c}.",
    "Sketch {c} for me.", "I'd like to see {c}.", "Generate an image of {c}.", "Draw a {l}.", "Draw the number {l}.",
    "Could you draw me a {l}?", "Show me what a {l} looks like.", "Paint {c}.", "Draw me {c}, please.",
)
#: Requests for a sentence and then an image; the answer is a sentence, then the image.
WRITE_AND_DRAW = (
    "Write one sentence about the number {l}, then draw it.", "Tell me about {c} in one sentence and then draw it.",
    "Describe {c} briefly, then draw it.", "Say something about the number {l} and draw it.",
    "Explain what {c} is and show a picture of it.", "Write a short sentence about {l}, then draw a {l}.",
)
#: Text-only exchanges: here [IMG0] must stay silent. Topics x templates give a few hundred
#: different requests; the frozen LM's own greedy answer is the target, so these teach
#: [IMG0] where not to fire without teaching the LM anything new.
TOPICS = (
    "the sea", "Paris", "photosynthesis", "gravity", "a cat", "coffee", "the moon", "rain", "music", "chess",
    "the number {l}", "friendship", "volcanoes", "bicycles", "the internet", "winter", "honey bees", "trains",
    "the color blue", "mathematics", "a good breakfast", "sleep", "dinosaurs", "the alphabet", "{c}",
)
ASK = (
    "Tell me about {t}.", "Write one sentence about {t}.", "What do you know about {t}?", "Explain {t} simply.",
    "Give me a fun fact about {t}.", "Why is {t} interesting?", "Write a haiku about {t}.", "Describe {t} in a few words.",
    "Is {t} important?", "What is {t}?",
)
CHAT = ("What is 2+3?", "Say hello.", "Name a color.", "What is 7 times 8?", "Tell me a joke.", "What is your name?",
        "Count from one to five.", "How are you today?", "Translate 'thank you' into French.", "What day comes after Monday?")


#: Rows per batch of the frozen LM's passes without gradients (its own answers, the cached
#: states). Larger batches spread each step's fixed cost: on 2 CPU cores 48 rows decoded
#: 32 tokens 1.4x faster than 16 (bench/RESULTS.md).
NO_GRAD_BATCH = 48


@dataclass
class AlignOutSettings:
    # 150 steps over 360 conversations: requests drawn right 0.95-0.96 (300 over 480: 0.99-1.00)
    # in half the time; the quickstart's 15-minute budget (bench/RESULTS.md).
    steps: int = 150
    batch_size: int = 32
    lr: float = 1e-3
    tokens: int = 4  # k generative tokens
    width: int = 256
    layers: int = 2
    examples: int = 360  # distinct templated conversations (half with images)
    mse_weight: float = 1.0
    # Contrast: the projected conditioning must be nearer its own caption's encoding than any
    # other caption's (cross-entropy over negative distances / temperature), beside the MSE.
    contrast_weight: float = 0.05
    contrast_temperature: float = 0.02
    context: bool = True  # the output projector also reads the conversation before [IMG0]
    guidance: float | None = 5.0  # what the chat draws with (None: the decoder's own default)
    seed: int = 0
    save_every: int = 100
    progress: bool = True


@dataclass
class _Example:
    encoded: Encoded
    soft: torch.Tensor | None
    targets: list[tuple[int, int]]  # (position predicting it, target id); id == V is [IMG0]
    caption: str | None  # the image's caption (image examples)


def make_conversations(manifest: Manifest, rows: list[dict], count: int, seed: int):
    """``count`` conversations ``(question, answer, caption|None, row|None)``; an answer of
    ``None`` is the frozen LM's own (written when the examples are built)."""
    rng = random.Random(seed)
    by_label: dict[str, list[str]] = {}
    for row in rows:
        caption = row.get("text") or (manifest.prompt.format(label=row["label"]) if "label" in row else None)
        if caption:
            by_label.setdefault(str(row.get("label", caption)), []).append(str(caption))
    if not by_label:
        raise InputError(manifest.path, "no training rows with an image caption (text) or label to draw")
    labels = sorted(by_label)
    labelled = all("label" in row for row in rows)
    out = []
    for i in range(count):
        label = labels[i % len(labels)]
        caption = rng.choice(by_label[label])
        fill = {"c": caption, "l": label}
        # What the image should show, as the decoder's conditioning of one canonical caption per
        # label: differently worded captions have different token sequences, and regressing onto
        # all of them at once gives their position-wise average, which draws nothing.
        target = manifest.prompt.format(label=label) if labelled and manifest.prompt else caption
        kind = i % 8
        if kind in (0, 1):  # an image alone: [IMG0] first
            out.append((rng.choice(DRAW).format(**fill), "", target, None))
        elif kind in (2, 3):  # the LM's own first sentence, then the image
            out.append((rng.choice(WRITE_AND_DRAW).format(**fill), None, target, None))
        elif kind == 4 and manifest.question:  # a question about an attachment: its answer, no image
            row = rng.choice(rows)
            answer = manifest.answer.format(label=row["label"]) if "label" in row else sentence(str(row.get("text")))
            out.append((manifest.question, answer, None, row))
        elif kind == 5:
            out.append((rng.choice(CHAT), None, None, None))
        else:  # open requests about many topics, answered by the LM itself
            topic = rng.choice(TOPICS).format(**fill)
            out.append((rng.choice(ASK).format(t=topic), None, None, None))
    return out


def first_sentence(text: str) -> str:
    import re

    match = re.match(r"\s*(.+?[.!?])(\s|$)", text, flags=re.DOTALL)
    return (match.group(1) if match else text).strip()


@torch.no_grad()
def own_answers(chat: ChatModel, questions: list[str], max_new_tokens: int, progress: bool = False) -> list[str]:
    """The frozen LM's greedy answers (text only), decoded in batches; a question asked more
    than once (templates repeat) is answered once."""
    from tqdm.auto import tqdm

    from anybind.generation import SamplingOptions, decode

    tokenizer, stop = chat.backbone.tokenizer, set(chat.backbone.stop_ids)
    distinct = list(dict.fromkeys(questions))
    encodings = [encode(tokenizer, chat.conversation(q), chat.soft_tokens) for q in distinct]
    shared, tails = split_prefix(encodings)
    prefix = PrefixCache(chat.backbone, shared)  # the system prompt, run once
    answers = []
    for start in tqdm(range(0, len(distinct), NO_GRAD_BATCH), desc="align-out: the LM's own answers", unit="batch",
                      disable=not progress, leave=False):
        chunk = tails[start:start + NO_GRAD_BATCH]
        embeds, mask = input_embeddings(chat.backbone, chunk, [None] * len(chunk), pad_left=True)
        steps = list(decode(chat.backbone.model, embeds, mask, SamplingOptions(max_new_tokens), chat.backbone.stop_ids,
                            prefix=prefix))
        for row in (torch.stack(steps, 1).tolist() if steps else [[] for _ in chunk]):
            cut = next((i for i, t in enumerate(row) if t in stop), len(row))
            answers.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    answer_of = dict(zip(distinct, answers))
    return [answer_of[q] for q in questions]


def text_before_image(tokenizer, text: str, boundaries: torch.Tensor) -> list[int]:
    """Token ids of ``text`` ending where ``[IMG0]`` may start (a sentence end, see
    :func:`anybind.imageout.sentence_boundaries`): as written, else with a full stop added,
    else none (the image comes first). An example whose image follows anything else would
    teach ``[IMG0]`` nothing: the decode loop never lets it compete there."""
    for candidate in (text, text.rstrip() + "."):
        ids = _tokenize(tokenizer, candidate)
        if not ids or boundaries[min(ids[-1], len(boundaries) - 1)]:
            return ids
    return []


def _mean(values: torch.Tensor) -> torch.Tensor:
    return values.mean() if values.numel() else values.sum()


class _Objective(nn.Module):
    """The image output plus its loss against the cached frozen-LM states (one module for Accelerate)."""

    def __init__(self, gen: ImageOutput, backbone, settings: AlignOutSettings):
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
    def prepare(self, examples: list[_Example], cond_of: dict[str, torch.Tensor], progress: bool) -> None:
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
                item = {"hidden": hidden.cpu(), "lse": logits.logsumexp(-1).cpu(), "target": target.cpu(),
                        "image": is_image, "first": first}
                if e.caption is not None:  # the prefix's keys, values and states, then the row's own
                    item["kv"] = [(torch.cat([layer.keys[row, :, :n], layer.keys[row, :, n + offset:]], dim=1),
                                   torch.cat([layer.values[row, :, :n], layer.values[row, :, n + offset:]], dim=1))
                                  for layer in out.past_key_values.layers]
                    item["cond"] = cond_of[e.caption]
                    item["context"] = torch.cat([prefix.hidden, out.last_hidden_state[row, offset:]]).float().cpu()  # everything before [IMG0]
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
        is_image = torch.cat([it["image"] for it in items]).to(device)
        first = torch.cat([it["first"] for it in items]).to(device)
        z = gen.logit(hidden)
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
        logits = torch.cat([model.get_output_embeddings()(last).float(), gen.logit(last)[:, None]], dim=-1)
        after = F.cross_entropy(logits, torch.full((len(items),), self.end_id, device=device))
        return mse, contrast, after


def _examples(chat: ChatModel, manifest: Manifest, conversations, vocab: int, boundaries: torch.Tensor,
              progress: bool = False) -> list[_Example]:
    tokenizer = chat.backbone.tokenizer
    own = [i for i, c in enumerate(conversations) if c[1] is None]
    written = own_answers(chat, [conversations[i][0] for i in own], 32, progress)
    conversations = list(conversations)
    for i, answer in zip(own, written):
        question, _, caption, row = conversations[i]
        if caption is not None:  # the LM's first sentence, then the image
            answer = first_sentence(answer)  # [IMG0] right after its final punctuation
        conversations[i] = (question, answer or "OK.", caption, row)
    out = []
    for question, text, caption, row in conversations:
        attachments = [chat.attach(row["image"])] if row is not None else []
        turns = chat.conversation(question, attachments)
        if caption is None:  # a text answer: every answer token (and the end of turn) is a target
            encoded = encode(tokenizer, turns, chat.soft_tokens, answer=text)
            targets = [(p - 1, encoded.ids[p]) for p in range(encoded.answer_start, len(encoded.ids))]
        else:  # text before the image (maybe none), then [IMG0]
            encoded = encode(tokenizer, turns, chat.soft_tokens)
            start = len(encoded.ids)
            encoded = Encoded(encoded.ids + text_before_image(tokenizer, text, boundaries), encoded.slots, start)
            targets = [(p - 1, encoded.ids[p]) for p in range(start, len(encoded.ids))] + [(len(encoded.ids) - 1, vocab)]
        # Only where [IMG0] may compete at all: the answer's first token and after sentence ends.
        first = targets[0][0]
        targets = [(p, t) for p, t in targets if p == first or boundaries[min(encoded.ids[p], len(boundaries) - 1)]]
        out.append(_Example(encoded, chat.soft_tokens_for(encoded), targets, caption))
    return out


def decoder_reference_for(chat_dir: Path, reference: str) -> str:
    """Store a decoder path relative to the chat model directory (NAME:PATH made absolute)."""
    name, sep, rest = reference.partition(":")
    if sep and len(name) > 1:
        return f"{name}:{Path(rest).resolve()}"
    return os.path.relpath(Path(reference).resolve(), chat_dir.resolve())


def train_align_out(manifest_path, chat_dir, decoder: str, settings: AlignOutSettings | None = None,
                    retrain: bool = False) -> dict:
    """Train ``[IMG0..k-1]`` and the output projector into the chat model directory ``chat_dir``."""
    from anybind.decoders import load_decoder

    settings = settings or AlignOutSettings()
    chat_dir = Path(chat_dir)
    config = read_chat_config(chat_dir)
    done = chat_dir / "image_output" / "training.json"
    if done.is_file() and not retrain:
        print(f"align-out: already trained in {done.parent} (use --retrain to train again)")
        return {"skipped": True, **read_config(done.parent), "path": str(done.parent)}
    manifest = read_manifest(manifest_path)
    rows = [r for r in manifest.select("train", has=("image",)) if "label" in r or r.get("text")]
    if not rows:
        raise InputError(manifest.path, "no training rows with an image and a label or caption")
    accelerator = make_accelerator()
    torch.manual_seed(settings.seed)
    image_decoder = load_decoder(decoder, device=accelerator.device)
    chat = ChatModel.from_pretrained(chat_dir)
    backbone = chat.backbone
    backbone.to(accelerator.device)
    vocab = backbone.vocab_size
    conversations = make_conversations(manifest, rows, settings.examples, settings.seed)
    examples = _examples(chat, manifest, conversations, vocab, chat.boundaries,
                         settings.progress and accelerator.is_main_process)
    captions = sorted({e.caption for e in examples if e.caption is not None})
    conds = torch.cat([image_decoder.encode_prompt(captions[i:i + 64]).cpu() for i in range(0, len(captions), 64)])
    tokens, cond_width = image_decoder.cond_shape
    gen = ImageOutput(ImageOutputConfig(lm_width=backbone.hidden_size, tokens=settings.tokens, cond_tokens=tokens,
                                        cond_width=cond_width, width=settings.width, layers=settings.layers,
                                        context=settings.context, guidance=settings.guidance,
                                        backbone=config["backbone"], decoder=decoder))
    gen.match_embeddings(backbone.model.get_input_embeddings().weight, settings.seed)
    objective = _Objective(gen, backbone, settings)
    say(accelerator, f"align-out: {len(examples)} conversations ({len(captions)} captions), {settings.tokens} "
                     f"generative tokens -> {tokens}x{cond_width} conditioning of {decoder}; LM, towers and decoder frozen")
    objective.prepare(examples, dict(zip(captions, conds)), settings.progress and accelerator.is_main_process)
    drawn = [i for i, e in enumerate(examples) if e.caption is not None]
    talk = [i for i, e in enumerate(examples) if e.caption is None]
    pick = random.Random(settings.seed + accelerator.process_index)
    last: dict[str, float] = {}

    def step_fn(model, indices):
        chosen = [drawn[i] for i in indices] + [pick.choice(talk) for _ in indices] if talk else [drawn[i] for i in indices]
        loss, parts = model(chosen)
        last.update(parts)
        return loss

    loop = LoopSettings(steps=settings.steps, batch_size=max(1, settings.batch_size // 2), lr=settings.lr,
                        seed=settings.seed, save_every=settings.save_every, progress=settings.progress)
    metrics = MetricsLog(chat_dir / "metrics.jsonl", enabled=accelerator.is_main_process)
    seconds = run_loop(stage="align-out", name="image", module=objective, n_rows=len(drawn), step_fn=step_fn, loop=loop,
                       accelerator=accelerator, progress_dir=chat_dir / ".progress" / "image_output", metrics=metrics,
                       report=lambda _: dict(last))
    result = {"steps": settings.steps, "seconds": round(seconds, 2), "conversations": len(examples),
              "captions": len(captions), "decoder": decoder, "tokens": settings.tokens,
              "batch_size": settings.batch_size, "lr": settings.lr, **{k: round(v, 4) for k, v in last.items()}}
    if accelerator.is_main_process:
        gen.config.decoder = decoder_reference_for(chat_dir, decoder)
        gen.save_pretrained(chat_dir / "image_output")
        write_json_atomic(done, result)
        shutil.rmtree(chat_dir / ".progress" / "image_output", ignore_errors=True)
        config = read_config(chat_dir)
        config["image_output"] = "image_output"
        write_json_atomic(chat_dir / CONFIG_NAME, config)
    return result


def check_compatible(gen: ImageOutput, decoder, where: str) -> None:
    if tuple(gen.cond_shape) != tuple(decoder.cond_shape):
        t, w = gen.cond_shape
        dt, dw = decoder.cond_shape
        raise AnybindError(f"{where}: the output projector makes {t}x{w} conditioning but the decoder expects "
                           f"{dt}x{dw}; train align-out against this decoder (anybind train align-out --decoder ...)")
