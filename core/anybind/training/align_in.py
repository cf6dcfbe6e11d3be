"""Stage ``align-in``: teach a frozen LM to read the shared space.

An :class:`~anybind.models.projector.InputProjector` maps a bound embedding to ``k`` soft tokens
placed where the attachment sits in a chat turn; the LM and every tower stay frozen and
the loss is the LM's cross-entropy on the answer (a caption, or the label) only. The LM
head runs on the answer positions alone, not on the whole 49k-vocabulary sequence.

Trained on images by default. Because every other modality was bound to images, the same
projector then reads audio, video and point clouds (emergent any-to-text);
``--modality X`` trains a projector on X's own rows for comparison.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
import torch.nn.functional as F

from anybind.chat.conversation import Attachment, PrefixCache, Turn, encode, input_embeddings, split_prefix
from anybind.data.manifest import Manifest, read_manifest
from anybind.data.prompts import GENERIC_QUESTIONS, sentence
from anybind.errors import AnybindError, InputError
from anybind.layout import CHAT_FORMAT, DONE_NAME, ChatDir
from anybind.models.backbone import Backbone, load_backbone
from anybind.models.projector import InputProjector, InputProjectorConfig
from anybind.models.space import Tower
from anybind.persistence import read_config
from anybind.specs import BINDING_MODALITY
from anybind.training.samples import load_samples
from anybind.training.settings import AlignSettings
from anybind.training.stage import Stage
from anybind.training.trainer import LoopSettings, MetricsLog, say


def make_examples(manifest: Manifest, rows: list[dict]) -> list[list[tuple[str, str]]]:
    """For each row, the (question, answer) pairs it can teach: its label and/or its caption."""
    out = []
    for row in rows:
        pairs = []
        if "label" in row:
            if manifest.question:
                pairs.append((manifest.question, manifest.answer.format(label=row["label"])))
            pairs.append(("?", sentence(str(row["label"]))))
        if row.get("text"):
            pairs.append(("?", sentence(row["text"])))
        out.append(pairs)
    return out


class _Aligner(torch.nn.Module):
    """The projector plus the frozen LM's loss, one module for Accelerate/DDP."""

    def __init__(self, projector: InputProjector, backbone: Backbone):
        super().__init__()
        self.projector = projector
        self.backbone = backbone  # a plain attribute: frozen, not a submodule, never saved
        self._prefix: PrefixCache | None = None

    def forward(self, embeddings: torch.Tensor, encodings: list) -> torch.Tensor:
        soft = self.projector(embeddings)  # (B, k, H)
        # The template text every example starts with (system prompt, turn header) does not
        # depend on the attachment: its KV is computed once, without gradient.
        prefix, tails = split_prefix(encodings)
        if self._prefix is None or self._prefix.ids != prefix:
            self._prefix = PrefixCache(self.backbone, prefix)
        embeds, mask = input_embeddings(self.backbone, tails, [soft[i : i + 1] for i in range(len(tails))], pad_left=False)
        model = self.backbone.model
        hidden = self._prefix.forward(embeds, mask).last_hidden_state  # (B, T, H)
        rows, positions, targets = [], [], []
        for row, e in enumerate(tails):
            for position in range(e.answer_start, len(e.ids)):
                rows.append(row)
                positions.append(position - 1)  # the state before a token predicts it
                targets.append(e.ids[position])
        logits = model.get_output_embeddings()(hidden[rows, positions])  # (labels, V): the head only where needed
        return F.cross_entropy(logits.float(), torch.tensor(targets, device=logits.device))


def train_align_in(manifest_path: Path | str, bound: Path | str, out: Path | str, *, backbone: str = "smollm2",
                   modality: str = BINDING_MODALITY, settings: AlignSettings | None = None, retrain: bool = False) -> dict:
    """Train the input projector for ``modality`` into the chat model directory ``out``."""
    settings = settings or AlignSettings()
    manifest = read_manifest(manifest_path)
    chat, bound = ChatDir(out), Path(bound)
    if chat.exists:
        config = read_config(chat.path)
        if config.get("format") != CHAT_FORMAT:
            raise AnybindError(f"{chat.path}: exists and is not a chat model directory; choose another --out")
        if config.get("backbone") != backbone and not retrain:
            raise AnybindError(f"{chat.path}: its projectors were trained for backbone {config.get('backbone')!r}, "
                               f"not {backbone!r}; use another --out or --retrain")
    stage = Stage("align-in", modality, chat.path, done=chat.projector(modality) / DONE_NAME,
                  progress=chat.progress(modality), metrics=chat.metrics)
    with stage.lock():
        if stage.done and not retrain:
            return {"modality": modality, **stage.skipped()}
        rows, embeddings = _embedded_rows(manifest, bound, modality, settings, stage, chat)
        result = _train(stage, manifest, rows, embeddings, backbone, modality, settings)
        stage.finish(result["record"], lambda: _save(chat, result["projector"], bound, backbone, settings, modality))
    return result["record"]


def _embedded_rows(manifest: Manifest, bound: Path, modality: str, settings: AlignSettings, stage: Stage,
                   chat: ChatDir):
    """The training rows with a file of ``modality`` and a label or caption, and their frozen embeddings."""
    if modality not in manifest.modalities():
        raise InputError(manifest.path, f"has no {modality!r} column to align")
    rows = [r for r in manifest.select("train", has=(modality,)) if "label" in r or r.get("text")]
    if not rows:
        raise InputError(manifest.path, f"no training rows with a {modality} file and a label or caption")
    torch.manual_seed(settings.seed)
    tower = Tower.from_pretrained(bound / modality).eval().requires_grad_(False)
    bad_log = MetricsLog(chat.bad_rows, enabled=stage.is_main)
    rows, samples = load_samples(manifest, rows, modality, tower.encoder, settings, stage.accelerator, bad_log)
    tower.to(stage.accelerator.device)
    # (N, D), frozen: computed once (a frozen pretrained trunk's outputs from bind's feature cache)
    return rows, tower.embed_files([r[modality] for r in rows], samples, bound / ".features", batch_size=256)


def _train(stage: Stage, manifest: Manifest, rows, embeddings, backbone: str, modality: str,
           settings: AlignSettings) -> dict:
    accelerator = stage.accelerator
    examples = make_examples(manifest, rows)
    lm = load_backbone(backbone)
    lm.to(accelerator.device)
    projector = InputProjector(InputProjectorConfig(embed_dim=embeddings.shape[1], lm_width=lm.hidden_size,
                                                    tokens=settings.tokens, hidden=settings.hidden,
                                                    modality=modality, backbone=backbone))
    projector.match_embeddings(lm.model.get_input_embeddings().weight)
    say(accelerator, f"align-in {modality}: {len(rows)} rows, {settings.steps} steps, batch {settings.batch_size}, "
                     f"{settings.tokens} soft tokens into {backbone} (LM and towers frozen)")
    pick = random.Random(settings.seed + accelerator.process_index)

    def step_fn(model, indices):
        encodings = []
        for i in indices:
            question, answer = pick.choice(examples[i])
            if question == "?":
                question = pick.choice(GENERIC_QUESTIONS)
            turn = Turn("user", question, [Attachment(modality, rows[i][modality], embeddings[i])])
            encodings.append(encode(lm.tokenizer, [turn], settings.tokens, answer=answer))
        return model(embeddings[indices].to(accelerator.device), encodings)

    loop = LoopSettings(steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr, seed=settings.seed,
                        save_every=settings.save_every, progress=settings.progress)
    seconds = stage.run_loop(module=_Aligner(projector, lm), n_rows=len(rows), step_fn=step_fn, loop=loop,
                             rngs={"questions": pick})
    record = {"modality": modality, "steps": settings.steps, "seconds": round(seconds, 2), "rows": len(rows),
              "backbone": backbone, "batch_size": settings.batch_size, "lr": settings.lr, "tokens": settings.tokens}
    return {"record": record, "projector": projector}


def _save(chat: ChatDir, projector: InputProjector, bound: Path, backbone: str, settings: AlignSettings,
          modality: str) -> None:
    projector.save_pretrained(chat.projector(modality))
    chat.write_base(bound=bound, backbone=backbone, soft_tokens=settings.tokens, projectors=[modality])
