"""Stage ``instruct``: LoRA on the LM, with the projectors, over templated conversations.

align-in and align-out taught a *frozen* LM to read the shared space and to ask for outputs.
This stage lets the LM itself adapt, a little: low-rank adapters (peft LoRA) on every linear
layer of its blocks (all of them by default) train together with the input projectors and each output's
``[TOK0]`` gate, on the multi-turn conversations of :mod:`anybind.training.dialogues`.

Loss: cross-entropy over the extended vocabulary on the final answer (each output's
``[TOK0]`` where it belongs, the forced ``[TOK1..]`` excluded) plus, per output, the MSE
(and the mild caption contrast) between the projected ``[TOK]`` states and the decoder's
encoding of the caption, as in align-out. The output projectors and ``[TOK]`` rows stay as
align-out left them by default (``image_output_lr_scale``): trained along at the full rate
they drift on the few outputs in each batch; the adapters instead learn to keep what they
read in place.

Saved into the chat model directory, beside what the earlier stages wrote (left as is)::

    DIR/instruct/adapter/              adapter_config.json + adapter_model.safetensors (peft)
    DIR/instruct/projectors/<modality>/
    DIR/instruct/<modality>_output/
    DIR/instruct/training.json

:meth:`anybind.chat.model.ChatModel.from_pretrained` merges the adapter into the backbone.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from anybind import plugins
from anybind.chat.conversation import Attachment, PrefixCache, Turn, encode, input_embeddings, split_prefix
from anybind.chat.model import ChatModel
from anybind.data.manifest import Manifest, read_manifest
from anybind.errors import InputError
from anybind.layout import DONE_NAME, ChatDir, decoder_reference_for, output_dir_name
from anybind.models.decoders import load_prompt_encoder, parse_reference
from anybind.models.space import embed_rows
from anybind.persistence import read_config
from anybind.specs import attachable
from anybind.training.asked_gate import fit_request_gates
from anybind.training.dialogues import OWN, Dialogue, encode_dialogue, make_dialogues
from anybind.training.output_refit import collect_output_states, output_loss, refit_output
from anybind.training.settings import InstructSettings
from anybind.training.stage import Stage
from anybind.training.trainer import LoopSettings, say


def _lora_config(model, settings: InstructSettings):
    from peft import LoraConfig

    layers = int(model.config.num_hidden_layers)
    chosen = list(range(max(0, layers - settings.layers), layers)) if settings.layers else None
    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=0.0, bias="none",
                      target_modules=_targets(model, settings.target_modules),
                      layers_to_transform=chosen, task_type="CAUSAL_LM")


def _targets(model, modules: tuple[str, ...] | str | None) -> list[str] | str | None:
    """peft's ``target_modules``: "all-linear" as the names of every linear layer but the output
    head (peft's own "all-linear" cannot be limited to the last layers), others as given (a
    string is peft's pattern, never split into letters)."""
    if modules != "all-linear":
        return modules if isinstance(modules, str) else list(modules) if modules else None
    head = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, nn.Linear) and module is not head})


class _Tuner(nn.Module):
    """Adapters, projectors and outputs, with the loss (one module for Accelerate).

    The LM is held as a plain attribute so checkpoints hold only what trains; its LoRA
    weights are registered here too (the same tensors), so they train and are saved."""

    def __init__(self, chat: ChatModel, peft_model, cond_of: dict[str, dict[str, torch.Tensor]], settings: InstructSettings):
        super().__init__()
        self.chat = chat
        self.peft_model = peft_model
        self.lora = nn.ParameterList([p for p in peft_model.parameters() if p.requires_grad])
        self.projectors = nn.ModuleDict(chat.projectors)
        self.outputs = nn.ModuleDict(chat.outputs)
        self.vocab = chat.output_vocab()
        self.cond_of = cond_of  # {modality: {caption: conditioning}}
        self.banks = {m: torch.stack(list(c.values())) for m, c in cond_of.items() if c}
        self.settings = settings

    def hidden(self, batch: list[Dialogue]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The LM's final states: of the opening every row shares (run once, without gradient,
        under the adapters as they are now), and of each row after it. Rows run in micro-batches
        of similar length, so little of the compute goes to padding."""
        chat = self.chat
        shared, tails = split_prefix([d.encoded for d in batch])
        prefix, n = PrefixCache(chat.backbone, shared), len(shared)
        hidden: list[torch.Tensor | None] = [None] * len(batch)
        order = sorted(range(len(batch)), key=lambda r: len(tails[r].ids))
        size = max(1, -(-len(batch) // max(1, self.settings.micro_batches)))
        for chunk in [order[i:i + size] for i in range(0, len(order), size)]:
            soft = [chat.soft_tokens_for(batch[r].encoded, grad=self.settings.train_projectors) for r in chunk]
            embeds, mask = input_embeddings(chat.backbone, [tails[r] for r in chunk], soft, pad_left=False)
            if any(batch[r].outputs for r in chunk):
                embeds = embeds.clone()
                for i, r in enumerate(chunk):
                    for start, modality, _ in batch[r].outputs:
                        output = self.outputs[modality]
                        embeds[i, start - n:start - n + output.tokens] = output.embed.to(embeds.dtype)
            out = prefix.forward(embeds, mask).last_hidden_state
            for i, r in enumerate(chunk):
                hidden[r] = out[i, :len(tails[r].ids)]
        return prefix.hidden, hidden

    def forward(self, batch: list[Dialogue]) -> tuple[torch.Tensor, dict]:
        model = self.chat.backbone.model
        opening, tails = self.hidden(batch)
        rows = [torch.cat([opening, tail]) for tail in tails]  # (T_row, H): every position of the row
        states = torch.stack([rows[r][p] for r, d in enumerate(batch) for p, _ in d.targets])
        ids = torch.tensor([t for d in batch for _, t in d.targets], device=states.device)
        logits = model.get_output_embeddings()(states).float()
        if len(self.vocab):  # a row's first target is its answer's first token: where the request ends
            requests = torch.stack([rows[r][d.targets[0][0]] for r, d in enumerate(batch) for _ in d.targets])
            logits = torch.cat([logits, self.vocab.gate_logits(states, requests)], dim=-1)
        ce = F.cross_entropy(logits, ids)
        parts = {"ce": float(ce.detach())}
        loss = ce
        for modality, output in self.outputs.items():
            made = [(row, start, caption) for row, d in enumerate(batch) for start, m, caption in d.outputs if m == modality]
            if not made:
                continue
            # the states at [TOK0..k-1], and the request and the answer before [TOK0], as at chat time
            examples = [(rows[row][start:start + output.tokens], rows[row][batch[row].encoded.request_start:start],
                         caption) for row, start, caption in made]
            mse, contrast = output_loss(output, examples, self.cond_of[modality], self.banks.get(modality),
                                        self.settings.contrast_temperature)
            loss = loss + self.settings.mse_weight * mse + self.settings.contrast_weight * contrast
            parts["mse"] = parts.get("mse", 0.0) + float(mse.detach())
            parts["contrast"] = parts.get("contrast", 0.0) + float(contrast.detach())
        return loss, parts


def readable(bound: list[str]) -> list[str]:
    """Of a bound model's towers, those of attachments (installed; text is the question itself)."""
    return sorted(attachable(bound, plugins.modalities()))


def _attachments(chat: ChatModel, manifest: Manifest, per_modality: int, seed: int, progress: bool):
    """Embed a sample of each bound modality's labelled training files: {modality: [(attachment, label)]}."""
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    out: dict[str, list[tuple[Attachment, str]]] = {}
    towers = readable(chat.modalities)
    present = [m for m in manifest.modalities() if m in towers]
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


def is_instructed(chat_dir) -> bool:
    return ChatDir(chat_dir).instructed()


def train_instruct(manifest_path, chat_dir, settings: InstructSettings | None = None, retrain: bool = False) -> dict:
    """LoRA-tune the chat model in ``chat_dir`` (after align-in, and align-out if it makes outputs).
    With ``settings.seeds`` > 1, it trains that many times from the same start, seeds ``seed``,
    ``seed + 1``, ..., and keeps their mean (:mod:`anybind.training.soup`); each finished seed is
    kept until the mean is saved, so an interrupted soup resumes at the seed it stopped in."""
    settings = settings or InstructSettings()
    chat_dir = ChatDir(chat_dir)
    chat_dir.config()  # a chat model directory, or a clear error
    stage = Stage("instruct", "lora", chat_dir.path, done=chat_dir.instruct / DONE_NAME,
                  progress=chat_dir.progress("instruct"), metrics=chat_dir.metrics)
    with stage.lock():
        if stage.done and not retrain:
            why = _outgrown(stage.record(), chat_dir)
            if why is None:
                return stage.skipped()
            say(stage.accelerator, f"instruct: {why}: training it again")
        manifest = read_manifest(manifest_path)
        if not manifest.labels:
            raise InputError(manifest.path, "instruct builds its conversations from labels: the manifest has none")
        seeds = _seeds_dir(chat_dir)
        if retrain:
            shutil.rmtree(seeds, ignore_errors=True)
        if settings.seeds <= 1:
            record, save = _train_seed(stage, chat_dir, manifest, settings)
        else:
            record, save = _train_soup(stage, chat_dir, manifest, settings)
        stage.finish(record, save)
        if stage.is_main:
            shutil.rmtree(seeds, ignore_errors=True)  # each seed's parts, now in the mean
            chat_dir.update(instruct=chat_dir.instruct.name)
    return record


def _outgrown(record: dict, chat_dir: ChatDir) -> str | None:
    """Why an instruct stage already trained no longer fits its chat model (None: it does): an
    output aligned or a tower bound after it ran. Older records that lack a field are not judged by it."""
    made, read = record.get("outputs"), record.get("readable")
    if made is not None and set(made) != set(chat_dir.outputs()):
        return f"trained with the outputs {', '.join(made) or 'none'}, but the model now makes {', '.join(chat_dir.outputs())}"
    now = readable(read_config(chat_dir.bound_dir()).get("modalities", []))
    if read is not None and set(read) != set(now):
        return f"trained when the model read {', '.join(read)}, but it now reads {', '.join(now)}"
    return None


def _seeds_dir(chat_dir: ChatDir) -> Path:
    return chat_dir.instruct / "seeds"


def _train_seed(stage: Stage, chat_dir: ChatDir, manifest: Manifest, settings: InstructSettings,
                root: Path | None = None):
    """One training: its record, and a function that saves its parts under ``root`` (default:
    the instruct folder the chat model loads them from)."""
    torch.manual_seed(settings.seed)
    # start from what align-in/out trained, on transformers' LM (peft trains its adapter)
    chat = ChatModel.from_pretrained(chat_dir.path, instruct=False, transformers_lm=True)
    chat.backbone.to(stage.accelerator.device)
    if len(chat.outputs) > 1:  # each output needs its requests (bench/RESULTS.md, "speech out")
        scale = settings.several_outputs_scale or len(chat.outputs)
        settings = replace(settings, steps=settings.steps * scale, conversations=settings.conversations * scale)
    dialogues, attachments = _dialogues(chat, manifest, settings, settings.progress and stage.is_main)
    record, peft_model = _train(stage, chat, dialogues, attachments, settings)
    record["readable"] = readable(chat.modalities)  # what a tower bound later changes
    root = root or chat_dir.instruct

    def save():
        peft_model.save_pretrained(str(root / chat_dir.adapter.name))
        for name, projector in chat.projectors.items():
            projector.save_pretrained(root / "projectors" / name)
        for modality, output in chat.outputs.items():
            output.config.decoder = decoder_reference_for(chat_dir.path, chat.decoder_reference(modality))
            output.save_pretrained(root / output_dir_name(modality))

    return record, save


def _train_soup(stage: Stage, chat_dir: ChatDir, manifest: Manifest, settings: InstructSettings):
    """``settings.seeds`` trainings (each its own resumable part), and a function that saves their mean."""
    from anybind.training import soup

    roots, records = [], []
    for seed in range(settings.seed, settings.seed + settings.seeds):
        root = _seeds_dir(chat_dir) / str(seed)
        part = Stage("instruct", f"lora, seed {seed}", chat_dir.path, done=root / DONE_NAME,
                     progress=chat_dir.progress(f"instruct-seed-{seed}"), metrics=chat_dir.metrics,
                     accelerator=stage.accelerator)
        if part.done and _outgrown(part.record(), chat_dir) is None:  # an interrupted soup's
            say(stage.accelerator, f"instruct: seed {seed} already trained ({root}); the next")
            records.append(part.record())
        else:
            say(stage.accelerator, f"instruct: seed {seed} ({seed - settings.seed + 1} of {settings.seeds})")
            records.append(part.finish(*_train_seed(part, chat_dir, manifest, replace(settings, seed=seed), root)))
        roots.append(root)
    numbers = {k for k in records[0] if all(isinstance(r.get(k), (int, float)) and not isinstance(r[k], bool) for r in records)}
    record = {**records[0], **{k: round(sum(r[k] for r in records) / len(records), 5) for k in numbers},
              "seconds": round(sum(r["seconds"] for r in records), 2), "seeds": records}

    def save():
        soup.mean_adapter([r / chat_dir.adapter.name for r in roots], chat_dir.adapter)
        for part in sorted({p.parent.relative_to(roots[0]) for p in roots[0].glob("**/config.json")}):
            soup.mean_module([r / part for r in roots], chat_dir.instruct / part)

    return record, save


def _dialogues(chat: ChatModel, manifest: Manifest, settings: InstructSettings, progress: bool):
    """The encoded training conversations, the LM's own answers written in."""
    backbone = chat.backbone
    attachments = _attachments(chat, manifest, settings.per_modality, settings.seed, progress)
    prompts = {m: parse_reference(chat.decoder_reference(m), m)[0].output_prompts() for m in chat.outputs}
    dialogues = make_dialogues(manifest, attachments, settings.conversations, settings.seed, prompts)
    # The frozen LM's own words: for plain chat's answers, and plain chat in earlier turns.
    own = [d for d in dialogues if d.answer[0][0] == "own"]
    earlier = [(d, n) for d in dialogues for n, t in enumerate(d.turns) if t.role == "assistant" and t.text == OWN]
    questions = [d.turns[-1].text for d in own] + [d.turns[n - 1].text for d, n in earlier]
    texts = chat.own_answers(questions, 32, progress) if questions else []
    for d, text in zip(own, texts):
        d.answer = [("text", text or "OK.")]
    for (d, n), text in zip(earlier, texts[len(own):]):
        d.turns[n] = Turn("assistant", text or "OK.")
    vocab = chat.output_vocab()
    end_id = encode(backbone.tokenizer, [Turn("user", "Hi")], 1, answer="Hello.").ids[-1]
    for d in dialogues:
        encode_dialogue(backbone.tokenizer, d, chat.soft_tokens, vocab, end_id)
    return dialogues, attachments


def _train(stage: Stage, chat: ChatModel, dialogues: list[Dialogue], attachments, settings: InstructSettings):
    from peft import get_peft_model

    cond_of = {}
    for modality in chat.outputs:
        decoder = load_prompt_encoder(chat.decoder_reference(modality), device=stage.accelerator.device, modality=modality)
        captions = sorted({c for d in dialogues for _, m, c in d.outputs if m == modality})
        cond_of[modality] = dict(zip(captions, decoder.encode_prompt(captions).cpu())) if captions else {}
        del decoder
    for module in chat.projectors.values():
        module.train(settings.train_projectors).requires_grad_(settings.train_projectors)
    for output in chat.outputs.values():
        output.train().requires_grad_(settings.image_output_lr_scale > 0)
        output.head.requires_grad_(True)  # the [TOK0] gate ("make one now?") follows the adapters at the full rate
    from anybind.models.backbone import quiet_peft

    with quiet_peft():
        peft_model = get_peft_model(chat.backbone.model, _lora_config(chat.backbone.model, settings))
    tuner = _Tuner(chat, peft_model, cond_of, settings)
    trainable = sum(p.numel() for p in tuner.parameters() if p.requires_grad)
    say(stage.accelerator, f"instruct: {len(dialogues)} conversations ({', '.join(sorted(attachments))} attachments), "
                           f"LoRA r={settings.rank} on the last {settings.layers or 'all'} layers, {trainable:,} "
                           f"trainable parameters, {settings.steps} steps")
    last: dict[str, float] = {}

    def step_fn(model, indices):
        loss, parts = model([dialogues[i] for i in indices])
        last.update(parts)
        return loss

    scales = {f"outputs.{m}.head.": 1.0 for m in chat.outputs}
    loop = LoopSettings(steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr, seed=settings.seed,
                        save_every=settings.save_every, progress=settings.progress,
                        lr_scales={**scales, "outputs.": settings.image_output_lr_scale})
    seconds = stage.run_loop(module=tuner, n_rows=len(dialogues), step_fn=step_fn, loop=loop, report=lambda _: dict(last))
    if settings.refit_steps:
        last.update(_refit(stage, tuner, dialogues, settings))
    if settings.request_gates:
        gates = fit_request_gates(chat.outputs, dialogues, steps=settings.request_gate_steps, lr=settings.request_gate_lr,
                                  weight_decay=settings.request_gate_weight_decay, seed=settings.seed)
        for key, value in sorted(gates.items()):
            say(stage.accelerator, f"instruct: {key.removeprefix('asked_')} request gate right on {value:.3f} of "
                                   "instruct's requests")
        last.update(gates)
    record = {"steps": settings.steps, "seconds": round(seconds, 2), "conversations": len(dialogues),
              "modalities": sorted(attachments), "outputs": sorted(chat.outputs),
              "rank": settings.rank, "layers": settings.layers, "lr": settings.lr, "batch_size": settings.batch_size,
              "trainable_parameters": trainable, **{k: round(v, 5) for k, v in last.items()}}
    return record, peft_model


def _refit(stage: Stage, tuner: _Tuner, dialogues: list[Dialogue], settings: InstructSettings) -> dict[str, float]:
    """Each output projector fitted again to the adapted LM's states (see :mod:`anybind.training.output_refit`)."""
    examples = collect_output_states(tuner, dialogues, settings.batch_size)
    out = {}
    for modality, made in sorted(examples.items()):
        fit = refit_output(tuner.outputs[modality], made, tuner.cond_of[modality], steps=settings.refit_steps,
                           batch_size=settings.refit_batch_size, lr=settings.refit_lr, seed=settings.seed,
                           contrast_weight=settings.contrast_weight, contrast_temperature=settings.contrast_temperature)
        say(stage.accelerator, f"instruct: {modality} output projector fitted again to the adapted LM on {len(made)} "
                               f"outputs, mse {fit['mse_before']:.4f} -> {fit['mse_after']:.4f}")
        out.update({f"refit_{modality}_{k}": v for k, v in fit.items()})
    return out
