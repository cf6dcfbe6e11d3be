"""Stage ``instruct``: LoRA on the LM, with the projectors, over templated conversations.

align-in and align-out taught a *frozen* LM to read the shared space and to ask for images.
This stage lets the LM itself adapt, a little: low-rank adapters (peft LoRA) on the
attention of its last layers train together with the input projectors and the ``[IMG0]``
gate, on multi-turn conversations built from the manifest:

* a question about an attachment of any bound modality, answered with its label;
* a request to draw, answered by an image (``[IMG0..k-1]``);
* a request to say something and draw, answered by a sentence naming the label, then an image;
* follow-ups that refer to an earlier turn: "Now draw it." after a question about an
  attachment, "Which digit did you draw?" after a drawing, "Name it in one word.";
* plain chat, answered by the frozen LM's own words (so the adapters keep its manners).

Loss: cross-entropy over the extended vocabulary on the final answer (``[IMG0]`` where an
image belongs, the forced ``[IMG1..]`` excluded) plus the MSE (and the mild caption
contrast) between the projected ``[IMG]`` states and the decoder's encoding of the image's
caption, as in align-out. The output projector and ``[IMG]`` rows stay as align-out left
them by default (``image_output_lr_scale``): trained along at the full rate they drift on
the few drawings in each batch; the adapters instead learn to keep what they read in place.

Saved into the chat model directory, beside what the earlier stages wrote (left as is)::

    DIR/instruct/adapter/              adapter_config.json + adapter_model.safetensors (peft)
    DIR/instruct/projectors/<modality>/
    DIR/instruct/image_output/
    DIR/instruct/training.json

:meth:`anybind.chat.ChatModel.from_pretrained` merges the adapter into the backbone.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from anybind import plugins
from anybind.align_out import ASK, CHAT, DRAW, TOPICS, WRITE_AND_DRAW, decoder_reference_for, own_answers
from anybind.chat import ChatModel, read_chat_config
from anybind.conversation import Attachment, Encoded, Turn, _tokenize, encode, input_embeddings
from anybind.errors import AnybindError, InputError
from anybind.imageout import conditioning_loss, pad_contexts
from anybind.persistence import CONFIG_NAME, read_config, write_json_atomic
from anybind.trainer import LoopSettings, MetricsLog, make_accelerator, run_loop, say
from anybind.world import DIGIT_WORDS, Manifest, read_manifest

INSTRUCT_DIR = "instruct"

#: Follow-ups that refer back to an earlier turn.
FOLLOW_DRAW = ("Now draw it.", "Can you draw that?", "Draw the same digit.", "Please draw it for me.",
               "Show me a picture of it.", "Draw one like that.")
FOLLOW_NAME = ("Name it in one word.", "Just the word, please.", "Say it in one word.")
ASK_DRAWN = ("Which digit did you draw?", "What did you draw?", "What is in your picture?")
QUESTIONS = ("Which digit is this?", "What digit is this?", "Which number is this?", "What number does this show?")


@dataclass
class InstructSettings:
    steps: int = 60
    batch_size: int = 8
    lr: float = 1e-3
    rank: int = 8  # LoRA rank
    alpha: int = 16
    layers: int = 8  # adapters on the LM's last N layers (0: all): backward stops below them
    target_modules: tuple[str, ...] | None = None  # default: peft's choice for the architecture
    conversations: int = 480
    per_modality: int = 120  # attachments embedded per modality
    mse_weight: float = 1.0
    # The [IMG] rows and output projector learn at lr * this (0: kept as align-out left them;
    # the adapters learn to keep the states they read where they read them). At the full rate
    # the projector drifts on the few drawings per batch: requests drawn right fell from 0.99
    # to 0.82-0.87. The [IMG0] gate ("draw now?") always trains at the full rate.
    image_output_lr_scale: float = 0.0
    contrast_weight: float = 0.05  # as in align-out: each drawing's conditioning nearest its own caption
    contrast_temperature: float = 0.02
    seed: int = 0
    save_every: int = 50
    progress: bool = True


@dataclass
class Dialogue:
    """One training conversation: the turns before the answer, and the answer as segments."""

    turns: list[Turn]
    answer: list[tuple[str, str]]  # ("text", words) | ("image", caption to draw)
    encoded: Encoded | None = None
    images: list[tuple[int, str]] = field(default_factory=list)  # (position of [IMG0], caption)
    targets: list[tuple[int, int]] = field(default_factory=list)  # (position predicting it, id)


def about(label: str, caption: str, labels: list[str], rng: random.Random) -> str:
    """One sentence that names ``label`` first (digits get small number facts)."""
    name = label[:1].upper() + label[1:]
    if list(labels) != list(DIGIT_WORDS):
        return f"{name}: here is {caption}."
    i = DIGIT_WORDS.index(label)
    facts = [f"{name} is an {'even' if i % 2 == 0 else 'odd'} number.", f"{name} is written as the digit {i}."]
    if i > 0:
        facts.append(f"{name} is the number after {DIGIT_WORDS[i - 1]}.")
    if i < 9:
        facts.append(f"{name} comes right before {DIGIT_WORDS[i + 1]}.")
    return rng.choice(facts)


def make_dialogues(manifest: Manifest, attachments: dict[str, list[tuple[Attachment, str]]], count: int,
                   seed: int) -> list[Dialogue]:
    """``count`` templated conversations. ``attachments[modality]`` holds (attachment, label) pairs;
    the image ones also stand in for the model's own drawings in follow-ups."""
    rng = random.Random(seed)
    labels = manifest.labels
    answer_of = manifest.answer or "{label}."
    caption_of = (manifest.prompt or "{label}").format
    question = manifest.question
    modalities = sorted(attachments)
    out = []
    for i in range(count):
        kind = i % 8
        label = labels[i % len(labels)]
        caption = caption_of(label=label)
        fill = {"c": caption, "l": label}
        if kind in (0, 1):  # a question about an attachment of any modality
            attachment, label = rng.choice(attachments[modalities[i // 8 % len(modalities)]])
            ask = rng.choice(QUESTIONS) if question and manifest.labels == list(DIGIT_WORDS) else (question or "What is this?")
            out.append(Dialogue([Turn("user", ask, [attachment])], [("text", answer_of.format(label=label))]))
        elif kind == 2:  # draw
            out.append(Dialogue([Turn("user", rng.choice(DRAW).format(**fill))], [("image", caption)]))
        elif kind == 3:  # say something, then draw
            out.append(Dialogue([Turn("user", rng.choice(WRITE_AND_DRAW).format(**fill))],
                                [("text", about(label, caption, labels, rng)), ("image", caption)]))
        elif kind == 4:  # follow-up: draw what the attachment was
            attachment, label = rng.choice(attachments[modalities[i // 8 % len(modalities)]])
            history = [Turn("user", question or "What is this?", [attachment]),
                       Turn("assistant", answer_of.format(label=label))]
            out.append(Dialogue(history + [Turn("user", rng.choice(FOLLOW_DRAW))], [("image", caption_of(label=label))]))
        elif kind == 5 and "image" in attachments:  # follow-up about the model's own drawing
            drawn, label = rng.choice(attachments["image"])
            history = [Turn("user", rng.choice(DRAW).format(c=caption_of(label=label), l=label)),
                       Turn("assistant", "", [drawn])]
            out.append(Dialogue(history + [Turn("user", rng.choice(ASK_DRAWN))], [("text", answer_of.format(label=label))]))
        elif kind == 6:  # follow-up in words
            attachment, label = rng.choice(attachments[modalities[i // 8 % len(modalities)]])
            history = [Turn("user", question or "What is this?", [attachment]),
                       Turn("assistant", answer_of.format(label=label))]
            out.append(Dialogue(history + [Turn("user", rng.choice(FOLLOW_NAME))], [("text", label[:1].upper() + label[1:] + ".")]))
        else:  # plain chat: the frozen LM's own answer (filled in later)
            topic = rng.choice(TOPICS).format(**fill)
            ask = rng.choice(CHAT) if rng.random() < 0.3 else rng.choice(ASK).format(t=topic)
            out.append(Dialogue([Turn("user", ask)], [("own", "")]))
    return out


def encode_dialogue(tokenizer, dialogue: Dialogue, soft_tokens: int, vocab: int, image_tokens: int, end_id: int) -> None:
    """Token ids of the prompt and answer; ``[IMG_j]`` are ids ``vocab + j`` in the targets and
    placeholders (pad) in ``encoded.ids``, overwritten by the learned rows at embedding time."""
    prompt = encode(tokenizer, dialogue.turns, soft_tokens)
    ids, true_ids = list(prompt.ids), list(prompt.ids)
    for kind, value in dialogue.answer:
        if kind == "text":
            piece = _tokenize(tokenizer, value)
            ids += piece
            true_ids += piece
        else:
            dialogue.images.append((len(ids), value))
            ids += [tokenizer.pad_token_id] * image_tokens
            true_ids += [vocab + j for j in range(image_tokens)]
    ids.append(end_id)
    true_ids.append(end_id)
    start = len(prompt.ids)
    forced = range(vocab + 1, vocab + image_tokens)  # [IMG1..]: never sampled, no loss
    dialogue.targets = [(p - 1, true_ids[p]) for p in range(start, len(true_ids)) if true_ids[p] not in forced]
    dialogue.encoded = Encoded(ids, prompt.slots, start)


def _lora_config(model, settings: InstructSettings):
    from peft import LoraConfig

    layers = int(model.config.num_hidden_layers)
    chosen = list(range(max(0, layers - settings.layers), layers)) if settings.layers else None
    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=0.0, bias="none",
                      target_modules=list(settings.target_modules) if settings.target_modules else None,
                      layers_to_transform=chosen, task_type="CAUSAL_LM")


class _Tuner(nn.Module):
    """Adapters, projectors and image output, with the loss (one module for Accelerate).

    The LM is held as a plain attribute so checkpoints hold only what trains; its LoRA
    weights are registered here too (the same tensors), so they train and are saved."""

    def __init__(self, chat: ChatModel, peft_model, cond_of: dict[str, torch.Tensor], settings: InstructSettings):
        super().__init__()
        self.chat = chat
        self.peft_model = peft_model
        self.lora = nn.ParameterList([p for p in peft_model.parameters() if p.requires_grad])
        self.projectors = nn.ModuleDict(chat.projectors)
        self.gen = chat.image_output
        self.cond_of = cond_of
        self.bank = torch.stack(list(cond_of.values())) if cond_of else None  # none: the model does not draw
        self.settings = settings

    def forward(self, batch: list[Dialogue]) -> tuple[torch.Tensor, dict]:
        chat, gen = self.chat, self.gen
        backbone = chat.backbone
        model = backbone.model
        soft = [chat.soft_tokens_for(d.encoded, grad=True) for d in batch]
        embeds, mask = input_embeddings(backbone, [d.encoded for d in batch], soft, pad_left=False)
        if gen is not None and any(d.images for d in batch):
            embeds = embeds.clone()
            for row, d in enumerate(batch):
                for start, _ in d.images:
                    embeds[row, start:start + gen.tokens] = gen.embed.to(embeds.dtype)
        hidden = model.base_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state  # (B, T, H)
        rows = [row for row, d in enumerate(batch) for _ in d.targets]
        positions = [p for d in batch for p, _ in d.targets]
        ids = torch.tensor([t for d in batch for _, t in d.targets], device=hidden.device)
        states = hidden[rows, positions]
        logits = model.get_output_embeddings()(states).float()
        if gen is not None:
            logits = torch.cat([logits, gen.logit(states)[:, None]], dim=-1)
        ce = F.cross_entropy(logits, ids)
        parts = {"ce": float(ce.detach())}
        loss = ce
        drawn = [(row, start, caption) for row, d in enumerate(batch) for start, caption in d.images]
        if drawn and gen is not None:
            image_states = torch.stack([hidden[row, start:start + gen.tokens] for row, start, _ in drawn])
            context, context_mask = pad_contexts([hidden[row, :start] for row, start, _ in drawn])  # right padding: all real
            target = torch.stack([self.cond_of[c] for _, _, c in drawn]).to(hidden.device)
            mse, contrast = conditioning_loss(gen(image_states, context, context_mask), target, self.bank,
                                              self.settings.contrast_temperature)
            loss = loss + self.settings.mse_weight * mse + self.settings.contrast_weight * contrast
            parts.update(mse=float(mse.detach()), contrast=float(contrast.detach()))
        return loss, parts


def _attachments(chat: ChatModel, manifest: Manifest, per_modality: int, seed: int, progress: bool):
    """Embed a sample of each bound modality's labelled training files: {modality: [(attachment, label)]}."""
    from tqdm.auto import tqdm

    from anybind.evaluate import embed_rows

    rng = random.Random(seed)
    out: dict[str, list[tuple[Attachment, str]]] = {}
    present = [m for m in manifest.modalities() if m in chat.modalities and m != "text" and m in plugins.modalities()]
    for modality in tqdm(present, desc="instruct: embedding attachments", unit="modality", leave=False, disable=not progress):
        rows = [r for r in manifest.select("train", has=(modality,)) if "label" in r]
        rows = rng.sample(rows, min(per_modality, len(rows)))
        kept, embeddings = embed_rows(chat, rows, modality)  # unreadable files are skipped (bind reported them)
        if not kept:
            continue
        out[modality] = [(Attachment(modality, str(r[modality]), e), r["label"]) for r, e in zip(kept, embeddings)]
    if not out:
        raise InputError(manifest.path, "no labelled training files of any modality this chat model reads")
    return out


def is_instructed(chat_dir: Path) -> bool:
    return (Path(chat_dir) / INSTRUCT_DIR / "training.json").is_file()


def train_instruct(manifest_path, chat_dir, settings: InstructSettings | None = None, retrain: bool = False) -> dict:
    """LoRA-tune the chat model in ``chat_dir`` (after align-in, and align-out if it draws)."""
    from peft import get_peft_model

    from anybind.decoders import load_decoder

    settings = settings or InstructSettings()
    chat_dir = Path(chat_dir)
    config = read_chat_config(chat_dir)
    done = chat_dir / INSTRUCT_DIR / "training.json"
    if done.is_file() and not retrain:
        print(f"instruct: already trained in {done.parent} (use --retrain to train again)")
        return {"skipped": True, **json.loads(done.read_text()), "path": str(done.parent)}
    manifest = read_manifest(manifest_path)
    if not manifest.labels:
        raise InputError(manifest.path, "instruct builds its conversations from labels: the manifest has none")
    accelerator = make_accelerator()
    torch.manual_seed(settings.seed)
    chat = ChatModel.from_pretrained(chat_dir, instruct=False)  # start from what align-in/out trained
    backbone = chat.backbone
    backbone.to(accelerator.device)
    progress = settings.progress and accelerator.is_main_process
    attachments = _attachments(chat, manifest, settings.per_modality, settings.seed, progress)
    dialogues = make_dialogues(manifest, attachments, settings.conversations, settings.seed)
    own = [d for d in dialogues if d.answer[0][0] == "own"]
    if own:
        for d, text in zip(own, own_answers(chat, [d.turns[-1].text for d in own], 32, progress)):
            d.answer = [("text", text or "OK.")]
    gen = chat.image_output
    if gen is None:
        dialogues = [d for d in dialogues if not any(kind == "image" for kind, _ in d.answer)]
    vocab = backbone.vocab_size
    end_id = encode(backbone.tokenizer, [Turn("user", "Hi")], 1, answer="Hello.").ids[-1]
    for d in dialogues:
        encode_dialogue(backbone.tokenizer, d, chat.soft_tokens, vocab, gen.tokens if gen else 0, end_id)
    cond_of = {}
    if gen is not None:
        decoder = load_decoder(chat.decoder_reference(), device=accelerator.device)
        captions = sorted({c for d in dialogues for _, c in d.images})
        cond_of = dict(zip(captions, decoder.encode_prompt(captions).cpu()))
        del decoder
    for module in chat.projectors.values():
        module.train().requires_grad_(True)
    if gen is not None:
        gen.train().requires_grad_(settings.image_output_lr_scale > 0)
        gen.head.requires_grad_(True)  # the [IMG0] gate ("draw now?") follows the adapters at the full rate
    peft_model = get_peft_model(backbone.model, _lora_config(backbone.model, settings))
    tuner = _Tuner(chat, peft_model, cond_of, settings)
    trainable = sum(p.numel() for p in tuner.parameters() if p.requires_grad)
    say(accelerator, f"instruct: {len(dialogues)} conversations ({', '.join(sorted(attachments))} attachments), "
                     f"LoRA r={settings.rank} on the last {settings.layers or 'all'} layers, {trainable:,} trainable "
                     f"parameters, {settings.steps} steps")
    last: dict[str, float] = {}

    def step_fn(model, indices):
        loss, parts = model([dialogues[i] for i in indices])
        last.update(parts)
        return loss

    loop = LoopSettings(steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr, seed=settings.seed,
                        save_every=settings.save_every, progress=settings.progress,
                        lr_scales={"gen.head.": 1.0, "gen.": settings.image_output_lr_scale})
    metrics = MetricsLog(chat_dir / "metrics.jsonl", enabled=accelerator.is_main_process)
    seconds = run_loop(stage="instruct", name="lora", module=tuner, n_rows=len(dialogues), step_fn=step_fn, loop=loop,
                       accelerator=accelerator, progress_dir=chat_dir / ".progress" / INSTRUCT_DIR, metrics=metrics,
                       report=lambda _: dict(last))
    result = {"steps": settings.steps, "seconds": round(seconds, 2), "conversations": len(dialogues),
              "rank": settings.rank, "layers": settings.layers, "lr": settings.lr, "batch_size": settings.batch_size,
              "trainable_parameters": trainable, **{k: round(v, 4) for k, v in last.items()}}
    if accelerator.is_main_process:
        target = chat_dir / INSTRUCT_DIR
        peft_model.save_pretrained(str(target / "adapter"))
        for name, projector in chat.projectors.items():
            projector.save_pretrained(target / "projectors" / name)
        if gen is not None:
            gen.config.decoder = decoder_reference_for(chat_dir, chat.decoder_reference())
            gen.save_pretrained(target / "image_output")
        write_json_atomic(done, result)
        shutil.rmtree(chat_dir / ".progress" / INSTRUCT_DIR, ignore_errors=True)
        config = read_config(chat_dir)
        config["instruct"] = INSTRUCT_DIR
        write_json_atomic(chat_dir / CONFIG_NAME, config)
    return result


def apply_adapter(backbone, adapter_dir: Path) -> None:
    """Merge a saved LoRA adapter into ``backbone``'s weights, in place (generation then costs
    what the plain backbone costs)."""
    from peft import PeftModel

    if not (adapter_dir / "adapter_config.json").is_file():
        raise AnybindError(f"{adapter_dir}: no adapter_config.json (an interrupted instruct stage?); "
                           "run anybind train instruct --retrain")
    backbone.model = PeftModel.from_pretrained(backbone.model, str(adapter_dir)).merge_and_unload()
    backbone.model.eval().requires_grad_(False)
