"""Any-to-text: chat about files of any installed modality.

A *chat model directory* (written by ``anybind train align-in``)::

    DIR/config.json                  {"format": "anybind.chat", "bound": "../bind", "backbone": "smollm2",
                                      "projectors": ["image", "audio"], "soft_tokens": 4}
    DIR/projectors/<modality>/       an InputProjector (config.json + model.safetensors)

``bound`` is the bound model directory (relative to DIR), whose towers embed attachments
into the shared space; the projector trained on ``image`` serves every modality that has
no projector of its own (emergent any-to-text).

    model = anybind.load("runs/quickstart/chat")
    for event in model.generate("What digit is spoken here?", attachments=["seven.wav"]):
        if event.type == "text":
            print(event.text, end="", flush=True)
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch

from anybind.conversation import Attachment, Encoded, Turn, describe, encode, fit, input_embeddings
from anybind.errors import CheckpointError, InputError
from anybind.generation import DoneEvent, ImageEvent, NoticeEvent, SamplingOptions, TextEvent, TextStream, decode
from anybind.imageout import ImageOutput, pad_contexts
from anybind.lm import Backbone, load_backbone
from anybind.model import AnybindModel, Tower, resolve_input
from anybind.persistence import CONFIG_NAME, read_config, write_json_atomic
from anybind.projector import InputProjector

CHAT_FORMAT = "anybind.chat"
BINDING_MODALITY = "image"


def read_chat_config(path: Path) -> dict:
    config = read_config(path)
    if config.get("format") != CHAT_FORMAT:
        raise CheckpointError(f"{path}: not an anybind chat model (config.json format is {config.get('format')!r}); "
                              "train one with: anybind train align-in")
    return config


def write_chat_config(path: Path, *, bound: Path, backbone: str, soft_tokens: int, projectors: Iterable[str]) -> None:
    config = read_config(path) if (path / CONFIG_NAME).is_file() else {}
    config.update({
        "format": CHAT_FORMAT,
        "bound": os.path.relpath(Path(bound).resolve(), Path(path).resolve()),
        "backbone": backbone,
        "soft_tokens": soft_tokens,
        "projectors": sorted(set(config.get("projectors", [])) | set(projectors)),
    })
    write_json_atomic(path / CONFIG_NAME, config)


class ChatModel:
    """The shared space (towers), a frozen LM backbone and input projectors: what chat runs on."""

    def __init__(self, bound: AnybindModel, backbone: Backbone, projectors: dict[str, InputProjector],
                 path: Path | None = None, system_prompt: str | None = None, bound_dir: Path | None = None,
                 image_output: ImageOutput | None = None, decoder: str | None = None):
        self.bound = bound
        self.image_output = image_output
        if image_output is not None:
            image_output.to(backbone.device).eval().requires_grad_(False)
        self._decoder_reference = decoder
        self._decoder = None
        self._boundaries = None
        self.bound_dir = bound_dir
        self._bound_index = read_config(bound_dir) if bound_dir is not None else None  # read once
        self.backbone = backbone
        self.projectors = projectors
        self.path = path
        self.system_prompt = system_prompt
        for projector in projectors.values():
            projector.to(backbone.device).eval().requires_grad_(False)
        self.soft_tokens = next(iter(projectors.values())).config.tokens if projectors else 4
        self.instructed = False

    @classmethod
    def from_pretrained(cls, path: Path | str, backbone: Backbone | None = None, decoder: str | None = None,
                        instruct: bool = True) -> "ChatModel":
        """Load a chat model directory; ``decoder`` overrides the image decoder it was trained with.

        If the instruct stage ran, its LoRA adapter is merged into the backbone (a ``backbone``
        passed in is changed in place) and its projectors and image output are used;
        ``instruct=False`` loads what align-in and align-out trained instead."""
        path = Path(path)
        config = read_chat_config(path)
        bound_dir = (path / config["bound"]).resolve()
        if not (bound_dir / CONFIG_NAME).is_file():
            raise CheckpointError(f"{path}/config.json: its bound model {bound_dir} is missing (moved or deleted?)")
        tuned = path / config["instruct"] if instruct and config.get("instruct") else None
        weights = tuned or path  # where the projectors and image output come from
        projectors = {name: InputProjector.from_pretrained(weights / "projectors" / name) for name in config.get("projectors", [])}
        if not projectors:
            raise CheckpointError(f"{path}: has no trained projector; run anybind train align-in --out {path}")
        backbone = backbone or load_backbone(config["backbone"])
        if tuned is not None:
            from anybind.instruct import apply_adapter

            apply_adapter(backbone, tuned / "adapter")
        image_output = None
        if config.get("image_output"):
            image_output = ImageOutput.from_pretrained(weights / "image_output" if tuned else path / config["image_output"])
            projectors = {**projectors, "[IMG]": image_output}  # checked for width below, removed after
        for name, projector in projectors.items():
            if projector.config.lm_width != backbone.hidden_size:
                raise CheckpointError(f"{path}/projectors/{name}: made for a {projector.config.lm_width}-wide LM, "
                                      f"but {backbone.reference} is {backbone.hidden_size}-wide")
        projectors.pop("[IMG]", None)
        # Towers load when an attachment first needs them: a chat about audio never loads video.
        # The decoder loads when the model first draws.
        model = cls(AnybindModel({}), backbone, projectors, path, bound_dir=bound_dir, image_output=image_output,
                    decoder=decoder)
        model.instructed = tuned is not None  # the instruct stage trained it on every modality's attachments
        return model

    # --- the shared space (as AnybindModel) --------------------------------------------------

    @property
    def towers(self):
        self._ensure(self.modalities)
        return self.bound.towers

    @property
    def modalities(self) -> list[str]:
        """The modalities this model can embed and read (every tower of its bound model)."""
        if self._bound_index is None:
            return self.bound.modalities
        return self._bound_index.get("modalities", [])

    @property
    def embed_dim(self) -> int:
        if self._bound_index is None:
            return self.bound.embed_dim
        return int(self._bound_index["embed_dim"])

    def _ensure(self, modalities) -> None:
        """Load towers on first use (the text tower is left out of chat loading, which never needs it)."""
        for modality in set(modalities) - set(self.bound.towers):
            if self.bound_dir is not None and (self.bound_dir / modality / CONFIG_NAME).is_file():
                self.bound.towers[modality] = Tower.from_pretrained(self.bound_dir / modality)

    def embed(self, inputs, batch_size: int = 64) -> torch.Tensor:
        return self.embed_resolved([resolve_input(x) for x in inputs], batch_size)

    def embed_raw(self, modality: str, raws, batch_size: int = 64) -> torch.Tensor:
        self._ensure([modality])
        return self.bound.embed_raw(modality, raws, batch_size)

    def embed_resolved(self, resolved, batch_size: int = 64) -> torch.Tensor:
        self._ensure([m for m, _ in resolved])
        return self.bound.embed_resolved(resolved, batch_size)

    def attach(self, item: str | Path | Attachment) -> Attachment:
        """Load and embed one attachment (a file of any installed modality)."""
        if isinstance(item, Attachment):
            return item
        modality, raw = resolve_input(Path(item))
        self._ensure([modality])
        if modality not in self.bound.towers:
            raise InputError(item, f"this model has no {modality} tower; bind one with: anybind train bind --modality {modality}")
        return Attachment(modality, str(item), self.bound.embed_raw(modality, [raw])[0])

    def projector_for(self, modality: str, choice: str | None = None) -> InputProjector:
        """``choice`` forces a projector (e.g. ``"image"`` for emergent any-to-text); by default a
        modality uses its own projector if one was trained, else the binding modality's."""
        name = choice or (modality if modality in self.projectors else BINDING_MODALITY)
        if name not in self.projectors:
            name = next(iter(self.projectors))
        return self.projectors[name]

    def soft_tokens_for(self, encoded: Encoded, projector: str | None = None, grad: bool = False) -> torch.Tensor | None:
        """The soft tokens of every attachment in ``encoded``, ``(attachments, k, H)``; ``grad``
        keeps the projectors' graph (training)."""
        if not encoded.slots:
            return None
        with torch.set_grad_enabled(grad):
            out = []
            for _, attachment in encoded.slots:
                proj = self.projector_for(attachment.modality, projector)
                out.append(proj(attachment.embedding.to(self.backbone.device)[None])[0])
            return torch.stack(out)

    # --- images out ---------------------------------------------------------------------------

    @property
    def can_draw(self) -> bool:
        return self.image_output is not None

    @property
    def boundaries(self) -> torch.Tensor:
        """Tokens after which an image may start (see :func:`anybind.imageout.sentence_boundaries`)."""
        if self._boundaries is None:
            from anybind.imageout import sentence_boundaries

            self._boundaries = sentence_boundaries(self.backbone.tokenizer, self.backbone.vocab_size)
        return self._boundaries

    def decoder_reference(self) -> str:
        """The decoder to draw with: the one given at load time, else the one align-out trained against."""
        if self.image_output is None:
            raise CheckpointError(f"{self.path}: this chat model cannot draw; train it with: anybind train align-out")
        reference = self._decoder_reference or self.image_output.config.decoder
        name, sep, rest = reference.partition(":")
        if not (sep and len(name) > 1) and self.path is not None and not Path(reference).is_absolute():
            if self._decoder_reference is None:  # stored relative to the chat model directory
                reference = str((self.path / reference).resolve())
        return reference

    @property
    def decoder(self):
        """The image decoder (loaded on first use)."""
        if self._decoder is None:
            from anybind.align_out import check_compatible
            from anybind.decoders import load_decoder

            reference = self.decoder_reference()
            decoder = load_decoder(reference, device=self.backbone.device)
            check_compatible(self.image_output, decoder, reference)
            self._decoder = decoder
        return self._decoder

    @torch.no_grad()
    def draw(self, states: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
             *, seed: int = 0, steps: int | None = None, guidance: float | None = None):
        """Images from the final hidden states at ``[IMG0..k-1]``, ``(B, k, H)``, and those of the
        conversation before them, ``context`` ``(B, N, H)`` right-padded with ``context_mask``."""
        device = self.backbone.device
        if context is not None:
            context = context.to(device)
        cond = self.image_output(states.to(device), context, context_mask)
        guidance = self.image_output.config.guidance if guidance is None else guidance
        return self.decoder.decode(cond, seed=seed, steps=steps, guidance=guidance)

    # --- generation --------------------------------------------------------------------------

    def conversation(self, prompt: str, attachments: Sequence = (), history: Sequence[Turn] = ()) -> list[Turn]:
        turns = list(history)
        if self.system_prompt and not (turns and turns[0].role == "system"):
            turns.insert(0, Turn("system", self.system_prompt))
        turns.append(Turn("user", prompt, [self.attach(a) for a in attachments]))
        return turns

    def generate(self, prompt: str, attachments: Sequence = (), *, history: Sequence[Turn] = (),
                 max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 projector: str | None = None, draw: bool = True, max_images: int = 4,
                 image_steps: int | None = None) -> Iterator:
        """Answer ``prompt`` about ``attachments``, yielding events as they are produced:
        :class:`TextEvent` pieces and :class:`ImageEvent` images in order, maybe a
        :class:`NoticeEvent`, then one :class:`DoneEvent`."""
        began = time.time()
        turns = self.conversation(prompt, attachments, history)
        options = SamplingOptions(max_new_tokens, temperature, top_p, seed)
        yield from self.respond(turns, options, projector=projector, began=began, draw=draw, max_images=max_images,
                                image_steps=image_steps)

    def respond(self, turns: list[Turn], options: SamplingOptions, *, projector: str | None = None,
                began: float | None = None, draw: bool = True, max_images: int = 4,
                image_steps: int | None = None) -> Iterator:
        """Continue a conversation whose last turn is the user's. A model trained with
        ``align-out`` may draw (``draw=False`` keeps it to text): each image is an
        :class:`ImageEvent` in its place among the text."""
        began = began or time.time()
        budget = self.backbone.max_context - options.max_new_tokens
        encoded, dropped = fit(self.backbone.tokenizer, turns, self.soft_tokens, budget)
        if dropped:
            yield NoticeEvent(f"dropped the {dropped} oldest turn(s) to fit the model's {self.backbone.max_context}-token context")
        embeds, mask = input_embeddings(self.backbone, [encoded], [self.soft_tokens_for(encoded, projector)], pad_left=True)
        stream = TextStream(self.backbone.tokenizer)
        stop = set(self.backbone.stop_ids)
        first = None
        reason = "length"
        count = 0
        gen = self.image_output if draw else None
        vocab = self.backbone.vocab_size
        tracker = ImageStates(gen.tokens, vocab, mask) if gen is not None else None
        drawn = 0
        for item in decode(self.backbone.model, embeds, mask, options, self.backbone.stop_ids, gen=gen,
                           max_images=max_images, boundaries=self.boundaries if gen is not None else None):
            token, hidden = item if gen is not None else (item, None)
            token_id = int(token[0])
            if tracker is not None:
                for _, states, context in tracker.push(token, hidden):
                    image = self.draw(states[None], context[None], seed=(options.seed or 0) + drawn, steps=image_steps)[0]
                    first = first if first is not None else time.time() - began
                    yield ImageEvent(image, drawn)
                    drawn += 1
            count += 1
            if token_id in stop:
                reason = "stop"
                break
            if token_id >= vocab:
                continue
            piece = stream.push(token_id)
            if piece:
                first = first if first is not None else time.time() - began
                yield TextEvent(piece)
        rest = stream.flush()
        if rest:
            yield TextEvent(rest)
        yield DoneEvent(stream.text, count, reason, time.time() - began, first,
                        usage={"prompt_tokens": len(encoded.ids), "completion_tokens": count, "images": drawn})

    @torch.no_grad()
    def answer_batch(self, questions: Sequence[str], attachments: Sequence[Attachment], *, max_new_tokens: int = 16,
                     projector: str | None = None) -> list[str]:
        """Greedy answers to one question per attachment, decoded together (for evaluation)."""
        encodings = [encode(self.backbone.tokenizer, self.conversation(q, [a]), self.soft_tokens)
                     for q, a in zip(questions, attachments)]
        soft = [self.soft_tokens_for(e, projector) for e in encodings]
        embeds, mask = input_embeddings(self.backbone, encodings, soft, pad_left=True)
        tokens = list(decode(self.backbone.model, embeds, mask, SamplingOptions(max_new_tokens), self.backbone.stop_ids))
        ids = torch.stack(tokens, dim=1).tolist() if tokens else [[] for _ in encodings]
        stop = set(self.backbone.stop_ids)
        out = []
        for row in ids:
            cut = next((i for i, t in enumerate(row) if t in stop), len(row))
            out.append(self.backbone.tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
        return out


@torch.no_grad()
def draw_batch(model: "ChatModel", prompts: Sequence[str], *, max_new_tokens: int = 48, seed: int = 0,
               image_steps: int | None = None) -> list[tuple[str, list]]:
    """Greedy answers to text prompts, decoded together, with the images each one drew (for evaluation)."""
    tokenizer = model.backbone.tokenizer
    encodings = [encode(tokenizer, model.conversation(p), model.soft_tokens) for p in prompts]
    embeds, mask = input_embeddings(model.backbone, encodings, [None] * len(encodings), pad_left=True)
    gen, vocab = model.image_output, model.backbone.vocab_size
    tracker = ImageStates(gen.tokens, vocab, mask)
    ids: list[list[int]] = [[] for _ in prompts]
    pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    for token, hidden in decode(model.backbone.model, embeds, mask, SamplingOptions(max_new_tokens),
                                model.backbone.stop_ids, gen=gen, max_images=1, boundaries=model.boundaries):
        pending += tracker.push(token, hidden)
        for row, token_id in enumerate(token.tolist()):
            ids[row].append(token_id)
    images: list[list] = [[] for _ in prompts]
    if pending:
        context, context_mask = pad_contexts([c for _, _, c in pending])
        drawn = model.draw(torch.stack([states for _, states, _ in pending]), context, context_mask, seed=seed,
                           steps=image_steps)
        for (row, _, _), image in zip(pending, drawn):
            images[row].append(image)
    stop = set(model.backbone.stop_ids)
    out = []
    for row, row_ids in enumerate(ids):
        cut = next((i for i, t in enumerate(row_ids) if t in stop), len(row_ids))
        text = tokenizer.decode([t for t in row_ids[:cut] if t < vocab], skip_special_tokens=True).strip()
        out.append((text, images[row]))
    return out


class ImageStates:
    """Collects, per row of a decode, the final hidden states of ``[IMG0..k-1]`` as they are
    fed, and those of every position before them (the context the output projector may read).

    ``decode`` yields ``(token, hidden)`` with ``hidden`` the states fed since its last yield
    (the prompt's first: ``prompt_mask`` (B, L), 1 where a row's prompt is, not its padding);
    after a row's token was ``[IMG_j]``, the next ``hidden[:, -1]`` is that token's state.
    :meth:`push` returns ``(row, states (k, H), context (n, H))`` for rows whose image is complete.
    """

    def __init__(self, tokens: int, vocab: int, prompt_mask: torch.Tensor):
        self.tokens, self.vocab = tokens, vocab
        self.prompt_mask = prompt_mask.bool()
        rows = len(prompt_mask)
        self.seen: list[list[torch.Tensor]] = [[] for _ in range(rows)]  # every state of the row, in order
        self.states: list[list[torch.Tensor]] = [[] for _ in range(rows)]
        self.after = [False] * rows

    def push(self, token: torch.Tensor, hidden: torch.Tensor) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        first = not self.seen[0]
        done = []
        for row, token_id in enumerate(token.tolist()):
            self.seen[row].append(hidden[row][self.prompt_mask[row].to(hidden.device)] if first else hidden[row])
            if self.after[row]:
                self.states[row].append(hidden[row, -1])
                if len(self.states[row]) == self.tokens:
                    seen = torch.cat(self.seen[row])
                    done.append((row, torch.stack(self.states[row]), seen[: len(seen) - self.tokens]))
                    self.states[row] = []
            self.after[row] = token_id >= self.vocab
        return done


class ChatSession:
    """A conversation that keeps its history (what interactive ``anybind chat`` uses)."""

    def __init__(self, model: ChatModel, options: SamplingOptions | None = None, projector: str | None = None,
                 draw: bool = True, image_steps: int | None = None, max_images: int = 4):
        self.model = model
        self.max_images = max_images
        self.options = options or SamplingOptions()
        self.projector = projector
        self.draw = draw
        self.image_steps = image_steps
        self.turns: list[Turn] = []

    def ask(self, prompt: str, attachments: Sequence = ()) -> Iterator:
        began = time.time()
        turns = self.model.conversation(prompt, attachments, self.turns)
        drawn = []
        for event in self.model.respond(turns, self.options, projector=self.projector, began=began, draw=self.draw,
                                        image_steps=self.image_steps, max_images=self.max_images):
            if isinstance(event, DoneEvent):  # kept before it is yielded: a caller may stop reading at "done"
                self.turns = turns + [Turn("assistant", event.text, self._seen(drawn))]
            elif isinstance(event, ImageEvent):
                drawn.append(event)
            yield event

    def _seen(self, drawn: list[ImageEvent]) -> list[Attachment]:
        """The images of an answer, embedded like user images, so later turns can refer to them."""
        if not drawn or BINDING_MODALITY not in self.model.modalities:
            return []
        embeddings = self.model.embed_raw(BINDING_MODALITY, [e.image for e in drawn])
        return [Attachment(BINDING_MODALITY, e.path or f"drawn image {e.index + 1}", emb) for e, emb in zip(drawn, embeddings)]

    def reset(self) -> None:
        self.turns = []

    def describe_attachments(self) -> list[str]:
        return [describe(a) for t in self.turns for a in t.attachments]
