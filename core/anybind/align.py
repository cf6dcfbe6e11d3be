"""Stage ``align-in``: teach a frozen LM to read the shared space.

An :class:`~anybind.projector.InputProjector` maps a bound embedding to ``k`` soft tokens
placed where the attachment sits in a chat turn; the LM and every tower stay frozen and
the loss is the LM's cross-entropy on the answer (a caption, or the label) only. The LM
head runs on the answer positions alone, not on the whole 49k-vocabulary sequence.

Trained on images by default. Because every other modality was bound to images, the same
projector then reads audio, video and point clouds (emergent any-to-text);
``--modality X`` trains a projector on X's own rows for comparison.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from anybind.bind import BindSettings, load_samples
from anybind.chat import CHAT_FORMAT, write_chat_config
from anybind.conversation import Attachment, PrefixCache, Turn, encode, input_embeddings, split_prefix
from anybind.errors import AnybindError, InputError
from anybind.lm import Backbone, load_backbone
from anybind.model import Tower
from anybind.persistence import CONFIG_NAME, read_config, write_json_atomic
from anybind.projector import InputProjector, InputProjectorConfig
from anybind.trainer import LoopSettings, MetricsLog, make_accelerator, run_loop, say
from anybind.world import Manifest, read_manifest

#: Modality-neutral questions: the projector must not learn that attachments are pictures.
GENERIC_QUESTIONS = (
    "What is this?",
    "Describe this.",
    "What does this show?",
    "What is it?",
    "Tell me what this is.",
    "Caption this.",
    "What is in this attachment?",
    "Can you describe it briefly?",
)


@dataclass
class AlignSettings:
    steps: int = 150
    batch_size: int = 16
    lr: float = 1e-3
    tokens: int = 4  # soft tokens per attachment
    hidden: int = 1024
    seed: int = 0
    save_every: int = 50
    on_bad_row: str = "skip"
    progress: bool = True


def sentence(text: str) -> str:
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


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
                   modality: str = "image", settings: AlignSettings | None = None, retrain: bool = False) -> dict:
    """Train the input projector for ``modality`` into the chat model directory ``out``."""
    settings = settings or AlignSettings()
    manifest = read_manifest(manifest_path)
    bound, out = Path(bound), Path(out)
    if (out / CONFIG_NAME).is_file():
        config = read_config(out)
        if config.get("format") != CHAT_FORMAT:
            raise AnybindError(f"{out}: exists and is not a chat model directory; choose another --out")
        if config.get("backbone") != backbone and not retrain:
            raise AnybindError(f"{out}: its projectors were trained for backbone {config.get('backbone')!r}, "
                               f"not {backbone!r}; use another --out or --retrain")
    done = out / "projectors" / modality / "training.json"
    if done.is_file() and not retrain:
        print(f"align-in {modality}: already trained in {done.parent} (use --retrain to train again)")
        return {"modality": modality, "skipped": True, **_json(done)}
    if modality not in manifest.modalities():
        raise InputError(manifest.path, f"has no {modality!r} column to align")
    rows = [r for r in manifest.select("train", has=(modality,)) if "label" in r or r.get("text")]
    if not rows:
        raise InputError(manifest.path, f"no training rows with a {modality} file and a label or caption")

    accelerator = make_accelerator()
    torch.manual_seed(settings.seed)
    tower = Tower.from_pretrained(bound / modality).eval().requires_grad_(False)
    bad_log = MetricsLog(out / "bad_rows.jsonl", enabled=accelerator.is_main_process)
    bind_like = BindSettings(on_bad_row=settings.on_bad_row, progress=settings.progress)
    rows, samples = load_samples(manifest, rows, modality, tower.encoder, bind_like, accelerator, bad_log)
    tower.to(accelerator.device)
    embeddings = tower.embed_samples(samples, batch_size=256)  # (N, D), frozen: computed once
    del samples
    examples = make_examples(manifest, rows)

    lm = load_backbone(backbone)
    lm.to(accelerator.device)
    projector = InputProjector(InputProjectorConfig(embed_dim=embeddings.shape[1], lm_width=lm.hidden_size,
                                                    tokens=settings.tokens, hidden=settings.hidden,
                                                    modality=modality, backbone=backbone))
    projector.match_embeddings(lm.model.get_input_embeddings().weight)
    aligner = _Aligner(projector, lm)
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
    metrics = MetricsLog(out / "metrics.jsonl", enabled=accelerator.is_main_process)
    seconds = run_loop(stage="align-in", name=modality, module=aligner, n_rows=len(rows), step_fn=step_fn, loop=loop,
                       accelerator=accelerator, progress_dir=out / ".progress" / modality, metrics=metrics)
    result = {"modality": modality, "steps": settings.steps, "seconds": round(seconds, 2), "rows": len(rows),
              "backbone": backbone, "batch_size": settings.batch_size, "lr": settings.lr, "tokens": settings.tokens}
    if accelerator.is_main_process:
        projector.save_pretrained(out / "projectors" / modality)
        write_json_atomic(done, result)
        shutil.rmtree(out / ".progress" / modality, ignore_errors=True)
        write_chat_config(out, bound=bound, backbone=backbone, soft_tokens=settings.tokens, projectors=[modality])
    return result


def _json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())
