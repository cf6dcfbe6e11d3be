"""Stage ``align-out``: teach the frozen LM to ask for an output (an image), and what it should show.

Trainable: the input rows of the output's ``[TOK0..k-1]`` (``[IMG0..3]`` for images), the
output row of ``[TOK0]`` and the output projector
(:class:`~anybind.models.output.GenerativeOutput`); the LM, towers and decoder are frozen.
The decoder a user gives says which output modality this trains (its plugin's
``DecoderSpec``), and how users ask for it (its :class:`~anybind.data.prompts.OutputPrompts`).
Examples are templated conversations: a request answered by the output alone, a sentence
then the output, questions about an attachment and plain chat answered without one, so
``[TOK0]`` learns both when to fire and when not to. The loss is
:class:`~anybind.training.output_objective.OutputObjective`'s; the frozen LM's part of
every example runs once, so a step takes milliseconds on a CPU.
"""

from __future__ import annotations

import random

import torch

from anybind.chat.conversation import Encoded, _tokenize, encode
from anybind.chat.model import ChatModel
from anybind.data.manifest import Manifest, read_manifest
from anybind.data.prompts import ASK, CHAT, TOPICS, OutputPrompts, first_sentence, sentence
from anybind.errors import InputError
from anybind.layout import DONE_NAME, ChatDir, decoder_reference_for
from anybind.models.decoders import parse_reference
from anybind.models.output import GenerativeOutput, GenerativeOutputConfig
from anybind.specs import BINDING_MODALITY
from anybind.training.output_objective import Example, OutputObjective
from anybind.training.settings import AlignOutSettings
from anybind.training.stage import Stage
from anybind.training.trainer import LoopSettings, say


def make_conversations(manifest: Manifest, rows: list[dict], count: int, seed: int, prompts: OutputPrompts,
                       modality: str = BINDING_MODALITY):
    """``count`` conversations ``(question, answer, caption|None, row|None)`` about ``modality``
    outputs; an answer of ``None`` is the frozen LM's own (written when the examples are built)."""
    rng = random.Random(seed)
    by_label: dict[str, list[str]] = {}
    for row in rows:
        caption = row.get("text") or (manifest.caption(modality, row["label"]) if "label" in row else None)
        if caption:
            by_label.setdefault(str(row.get("label", caption)), []).append(str(caption))
    if not by_label:
        raise InputError(manifest.path, "no training rows with a caption (text) or label to make outputs of")
    labels = sorted(by_label)
    labelled = all("label" in row for row in rows)
    out = []
    for i in range(count):
        label = labels[i % len(labels)]
        caption = rng.choice(by_label[label])
        fill = manifest.fill(label, caption)
        # What the output should show, as the decoder's conditioning of one canonical caption per
        # label: differently worded captions have different token sequences, and regressing onto
        # all of them at once gives their position-wise average, which draws nothing.
        target = manifest.caption(modality, label) if labelled and manifest.prompt else caption
        kind = i % 8
        if kind in (0, 1):  # the output alone: [TOK0] first
            out.append((rng.choice(prompts.request).format(**fill), "", target, None))
        elif kind in (2, 3):  # the LM's own first sentence, then the output
            out.append((rng.choice(prompts.write_and).format(**fill), None, target, None))
        elif kind == 4 and manifest.question:  # a question about an attachment: its answer, no output
            row = rng.choice(rows)
            answer = manifest.answer.format(label=row["label"]) if "label" in row else sentence(str(row.get("text")))
            out.append((manifest.question, answer, None, row))
        elif kind == 5:
            out.append((rng.choice(CHAT), None, None, None))
        else:  # open requests about many topics, answered by the LM itself
            topic = rng.choice(TOPICS).format(**fill)
            out.append((rng.choice(ASK).format(t=topic), None, None, None))
    return out


def text_before_output(tokenizer, text: str, boundaries: torch.Tensor) -> list[int]:
    """Token ids of ``text`` ending where ``[TOK0]`` may start (a sentence end, see
    :func:`anybind.models.output.sentence_boundaries`): as written, else with a full stop added,
    else none (the output comes first). An example whose output follows anything else would
    teach ``[TOK0]`` nothing: the decode loop never lets it compete there."""
    for candidate in (text, text.rstrip() + "."):
        ids = _tokenize(tokenizer, candidate)
        if not ids or boundaries[min(ids[-1], len(boundaries) - 1)]:
            return ids
    return []


def _examples(chat: ChatModel, conversations, modality: str, vocab: int, boundaries: torch.Tensor,
              progress: bool = False) -> list[Example]:
    tokenizer = chat.backbone.tokenizer
    own = [i for i, c in enumerate(conversations) if c[1] is None]
    written = chat.own_answers([conversations[i][0] for i in own], 32, progress)
    conversations = list(conversations)
    for i, answer in zip(own, written):
        question, _, caption, row = conversations[i]
        if caption is not None:  # the LM's first sentence, then the output
            answer = first_sentence(answer)  # [TOK0] right after its final punctuation
        conversations[i] = (question, answer or "OK.", caption, row)
    out = []
    for question, text, caption, row in conversations:
        attachments = [chat.attach(row[modality])] if row is not None else []
        turns = chat.conversation(question, attachments)
        if caption is None:  # a text answer: every answer token (and the end of turn) is a target
            encoded = encode(tokenizer, turns, chat.soft_tokens, answer=text)
            targets = [(p - 1, encoded.ids[p]) for p in range(encoded.answer_start, len(encoded.ids))]
        else:  # text before the output (maybe none), then [TOK0]
            encoded = encode(tokenizer, turns, chat.soft_tokens)
            start = len(encoded.ids)
            encoded = Encoded(encoded.ids + text_before_output(tokenizer, text, boundaries), encoded.slots, start,
                              encoded.request_start)
            targets = [(p - 1, encoded.ids[p]) for p in range(start, len(encoded.ids))] + [(len(encoded.ids) - 1, vocab)]
        # Only where [TOK0] may compete at all: the answer's first token and after sentence ends.
        first = targets[0][0]
        targets = [(p, t) for p, t in targets if p == first or boundaries[min(encoded.ids[p], len(boundaries) - 1)]]
        out.append(Example(encoded, chat.soft_tokens_for(encoded), targets, caption))
    return out


def train_align_out(manifest_path, chat_dir, decoder: str, settings: AlignOutSettings | None = None,
                    retrain: bool = False) -> dict:
    """Train the generative tokens and output projector of ``decoder``'s output modality into ``chat_dir``."""
    settings = settings or AlignOutSettings()
    chat_dir = ChatDir(chat_dir)
    spec = parse_reference(decoder)[0]
    modality = spec.modality
    chat_dir.config()  # a chat model directory, or a clear error
    stage = Stage("align-out", modality, chat_dir.path, done=chat_dir.output(modality) / DONE_NAME,
                  progress=chat_dir.progress(chat_dir.output(modality).name), metrics=chat_dir.metrics)
    with stage.lock():
        if stage.done and not retrain:
            return stage.skipped()
        manifest = read_manifest(manifest_path)
        rows = [r for r in manifest.select("train", has=(modality,)) if "label" in r or r.get("text")]
        if not rows:
            raise InputError(manifest.path, f"no training rows with a {modality} file and a label or caption")
        torch.manual_seed(settings.seed)
        record, output = _train(stage, chat_dir, manifest, rows, decoder, spec, settings)

        def save():
            output.config.decoder = decoder_reference_for(chat_dir.path, decoder)
            output.save_pretrained(chat_dir.output(modality))
            chat_dir.add_output(modality)

        return stage.finish(record, save)


def _train(stage: Stage, chat_dir: ChatDir, manifest: Manifest, rows: list[dict], decoder: str, spec,
           settings: AlignOutSettings) -> tuple[dict, GenerativeOutput]:
    from anybind.models.decoders import load_prompt_encoder

    accelerator, modality = stage.accelerator, spec.modality
    made_by = load_prompt_encoder(decoder, device=accelerator.device, modality=modality)  # the decoder may still train
    # the frozen LM, even after instruct; transformers' (the objective builds its DynamicCache)
    chat = ChatModel.from_pretrained(chat_dir.path, instruct=False, transformers_lm=True)
    backbone = chat.backbone
    backbone.to(accelerator.device)
    conversations = make_conversations(manifest, rows, settings.examples, settings.seed, spec.output_prompts(), modality)
    examples = _examples(chat, conversations, modality, backbone.vocab_size, chat.boundaries,
                         settings.progress and stage.is_main)
    captions = sorted({e.caption for e in examples if e.caption is not None})
    conds = torch.cat([made_by.encode_prompt(captions[i:i + 64]).cpu() for i in range(0, len(captions), 64)])
    tokens, cond_width = made_by.cond_shape
    output = GenerativeOutput(GenerativeOutputConfig(
        lm_width=backbone.hidden_size, tokens=settings.tokens, cond_tokens=tokens, cond_width=cond_width,
        width=settings.width, layers=settings.layers, context=settings.context, guidance=settings.guidance,
        candidates=settings.candidates, request_gate=settings.request_gate,
        backbone=chat_dir.config()["backbone"], decoder=decoder, modality=modality, token=spec.token))
    output.match_embeddings(backbone.model.get_input_embeddings().weight, settings.seed)
    objective = OutputObjective(output, backbone, settings)
    say(accelerator, f"align-out: {len(examples)} conversations ({len(captions)} captions), {settings.tokens} "
                     f"generative tokens -> {tokens}x{cond_width} conditioning of {decoder}; LM, towers and decoder frozen")
    objective.prepare(examples, dict(zip(captions, conds)), settings.progress and stage.is_main)
    made = [i for i, e in enumerate(examples) if e.caption is not None]
    talk = [i for i, e in enumerate(examples) if e.caption is None]
    pick = random.Random(settings.seed + accelerator.process_index)
    last: dict[str, float] = {}

    def step_fn(model, indices):
        chosen = [made[i] for i in indices] + [pick.choice(talk) for _ in indices] if talk else [made[i] for i in indices]
        loss, parts = model(chosen)
        last.update(parts)
        return loss

    loop = LoopSettings(steps=settings.steps, batch_size=max(1, settings.batch_size // 2), lr=settings.lr,
                        seed=settings.seed, save_every=settings.save_every, progress=settings.progress)
    seconds = stage.run_loop(module=objective, n_rows=len(made), step_fn=step_fn, loop=loop,
                             report=lambda _: dict(last), rngs={"talk": pick})
    record = {"steps": settings.steps, "seconds": round(seconds, 2), "conversations": len(examples),
              "captions": len(captions), "decoder": decoder, "modality": modality, "tokens": settings.tokens,
              "batch_size": settings.batch_size, "lr": settings.lr, **{k: round(v, 4) for k, v in last.items()}}
    return record, output
