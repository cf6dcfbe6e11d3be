"""A chat model: the shared space's towers, a frozen LM backbone, input projectors and the outputs.

Its directory format is :class:`anybind.layout.ChatDir`; ``anybind.load(DIR)`` returns one::

    model = anybind.load("runs/quickstart/chat")
    for event in model.generate("What digit is spoken here?", attachments=["seven.wav"]):
        if event.type == "text":
            print(event.text, end="", flush=True)

This module holds the components and how they load; :mod:`anybind.chat.pipeline` answers
with them, step by step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import torch

from anybind.chat import best_of
from anybind.chat.conversation import Attachment, Encoded, Turn
from anybind.chat.outputs import OutputVocab
from anybind.errors import CheckpointError, InputError
from anybind.layout import DONE_NAME, ChatDir, stored_decoder_reference
from anybind.specs import BINDING_MODALITY
from anybind.models import lora
from anybind.models.backbone import Backbone, apply_adapter, load_backbone
from anybind.models.output import OUTPUT_OPENER, GenerativeOutput, sentence_boundaries, token_texts, word_tokens
from anybind.models.projector import InputProjector
from anybind.models.space import AnybindModel, Tower, resolve_input
from anybind.persistence import CONFIG_NAME, read_config, read_json

#: Rows per batch of the LM's passes without gradients: larger batches spread each step's fixed
#: cost (on 2 CPU cores 48 rows decoded 32 tokens 1.4x faster than 16; bench/RESULTS.md).
NO_GRAD_BATCH = 48


class ChatModel:
    """What chat runs on. Towers load when an attachment first needs them, decoders when an
    output is first made: a chat about audio never loads video, a text answer no decoder."""

    def __init__(self, bound: AnybindModel, backbone: Backbone, projectors: dict[str, InputProjector],
                 path: Path | None = None, system_prompt: str | None = None, bound_dir: Path | None = None,
                 outputs: dict[str, GenerativeOutput] | None = None, decoders: dict[str, str] | None = None):
        self.bound = bound
        self.backbone = backbone
        self.projectors = projectors
        self.outputs = dict(outputs or {})
        for module in [*projectors.values(), *self.outputs.values()]:
            module.to(backbone.device).eval().requires_grad_(False)
        self.path = path
        self.system_prompt = system_prompt
        self.bound_dir = bound_dir
        self._bound_index = read_config(bound_dir) if bound_dir is not None else None  # read once
        self.bound.source = bound_dir if bound_dir is not None else self.bound.source
        self._decoder_references = dict(decoders or {})
        self._decoders: dict[str, object] = {}
        self._boundaries = None
        self._words = None
        self.opener = OUTPUT_OPENER  # how an answer that makes an output begins
        self.soft_tokens = next(iter(projectors.values())).config.tokens if projectors else 4
        self.instructed = False
        #: the modalities the instruct stage trained on as attachments
        self.instructed_modalities: set[str] = set()

    @classmethod
    def from_pretrained(cls, path: Path | str, backbone: Backbone | None = None, decoder: str | None = None,
                        instruct: bool = True, quantize: str | None = None, transformers_lm: bool = False,
                        candidates: int | None = None) -> "ChatModel":
        """Load a chat model directory; ``decoder`` overrides the decoder of the output it makes.

        If the instruct stage ran, its LoRA adapter is merged into the backbone (a ``backbone``
        passed in is changed in place) and its projectors and outputs are used;
        ``instruct=False`` loads what align-in and align-out trained instead. ``quantize="int8"``
        then stores the LM's linear layers as int8 for faster CPU decoding (inference only).
        A Llama backbone runs as :mod:`anybind.models.llama` (no transformers model classes);
        ``transformers_lm=True`` loads it with transformers, as training does. ``candidates``
        overrides the samples each output makes (:mod:`anybind.chat.best_of`)."""
        chat = ChatDir(path)
        config = chat.config()
        bound_dir = chat.bound_dir(config)
        if not (bound_dir / CONFIG_NAME).is_file():
            raise CheckpointError(f"{chat.path}/config.json: its bound model {bound_dir} is missing (moved or deleted?)")
        tuned = instruct and chat.instructed(config)
        projectors = {name: InputProjector.from_pretrained(chat.projector(name, tuned)) for name in config.get("projectors", [])}
        if not projectors:
            raise CheckpointError(f"{chat.path}: has no trained projector; run anybind train align-in --out {chat.path}")
        if backbone is None:
            decoding = not transformers_lm and (not tuned or lora.plain(chat.adapter))
            backbone = load_backbone(config["backbone"], decoding=decoding)
        if tuned:  # quantizing merges it one layer at a time (merged all at once, every fp32 weight is resident)
            apply_adapter(backbone, chat.adapter, merge=not quantize)
        if quantize:
            from anybind.data.prompts import CHAT
            from anybind.models.quantize import quantize_backbone

            quantize_backbone(backbone, quantize, calibration=CHAT)
        # An output aligned after instruct ran has no tuned copy until instruct runs again.
        outputs = {m: GenerativeOutput.from_pretrained(chat.output(m, tuned and (chat.output(m, True) / CONFIG_NAME).is_file()))
                   for m in chat.outputs(config)}
        for output in outputs.values() if candidates else ():
            output.config.candidates = candidates
        for where, module in [*(("projectors/" + n, p) for n, p in projectors.items()),
                              *((chat.output(m).name, o) for m, o in outputs.items())]:
            if module.config.lm_width != backbone.hidden_size:
                raise CheckpointError(f"{chat.path}/{where}: made for a {module.config.lm_width}-wide LM, "
                                      f"but {backbone.reference} is {backbone.hidden_size}-wide")
        model = cls(AnybindModel({}), backbone, projectors, chat.path, bound_dir=bound_dir, outputs=outputs)
        model.instructed = tuned
        if tuned:
            done = chat.instruct / DONE_NAME
            recorded = read_json(done).get("modalities")
            # Older instruct stages did not record them: the towers trained before it ran.
            model.instructed_modalities = set(recorded) if recorded is not None else {
                m for m in model.modalities if (bound_dir / m / DONE_NAME).is_file()
                and (bound_dir / m / DONE_NAME).stat().st_mtime < done.stat().st_mtime}
        if decoder is not None and outputs:
            model.use_decoder(decoder)
        return model

    # --- the shared space (as AnybindModel) --------------------------------------------------

    @property
    def towers(self):
        self._ensure(self.modalities)
        return self.bound.towers

    @property
    def modalities(self) -> list[str]:
        """The modalities this model can embed and read (every tower of its bound model)."""
        return self.bound.modalities if self._bound_index is None else self._bound_index.get("modalities", [])

    @property
    def embed_dim(self) -> int:
        return self.bound.embed_dim if self._bound_index is None else int(self._bound_index["embed_dim"])

    def _ensure(self, modalities) -> None:
        for modality in set(modalities) - set(self.bound.towers):
            if self.bound_dir is not None and (self.bound_dir / modality / CONFIG_NAME).is_file():
                self.bound.towers[modality] = Tower.from_pretrained(self.bound_dir / modality)

    def embed(self, inputs, batch_size: int = 64) -> torch.Tensor:
        return self.embed_resolved([resolve_input(x) for x in inputs], batch_size)

    def embed_raw(self, modality: str, raws, batch_size: int = 64) -> torch.Tensor:
        self._ensure([modality])
        return self.bound.embed_raw(modality, raws, batch_size)

    def embed_files(self, modality: str, paths, raws, batch_size: int = 64) -> torch.Tensor:
        self._ensure([modality])
        return self.bound.embed_files(modality, paths, raws, batch_size)

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

    # --- reading attachments -----------------------------------------------------------------

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
            return torch.stack([self.projector_for(a.modality, projector)(a.embedding.to(self.backbone.device)[None])[0]
                                for _, a in encoded.slots])

    def conversation(self, prompt: str, attachments: Sequence = (), history: Sequence[Turn] = ()) -> list[Turn]:
        turns = list(history)
        if self.system_prompt and not (turns and turns[0].role == "system"):
            turns.insert(0, Turn("system", self.system_prompt))
        turns.append(Turn("user", prompt, [self.attach(a) for a in attachments]))
        return turns

    # --- making outputs ----------------------------------------------------------------------

    @property
    def boundaries(self) -> torch.Tensor:
        """Tokens after which an output may start (see :func:`anybind.models.output.sentence_boundaries`)."""
        self._classify_tokens()
        return self._boundaries

    @property
    def words(self) -> torch.Tensor:
        """Tokens that never follow themselves in an answer (see :func:`anybind.models.output.word_tokens`)."""
        self._classify_tokens()
        return self._words

    def opener_start(self) -> torch.Tensor:
        """The token an answer that makes an output begins with (``"Here"``; none for an empty
        opener): an answer decoded again because it began so and made nothing may not begin with
        it, nor may one whose request asks for no output (``chat.decode``)."""
        return torch.tensor(self.backbone.tokenizer(self.opener, add_special_tokens=False)["input_ids"][:1], dtype=torch.long)

    def _classify_tokens(self) -> None:
        """Both of the decode loop's token classes, from one pass over the vocabulary's texts."""
        if self._boundaries is None:
            texts = token_texts(self.backbone.tokenizer, self.backbone.vocab_size)
            self._boundaries, self._words = sentence_boundaries(texts), word_tokens(texts)

    def output(self, modality: str | None = None) -> GenerativeOutput:
        """The generative output of ``modality`` (default: the only one, or the binding modality's
        when it makes several: what "draw it" asks for)."""
        if not self.outputs:
            raise CheckpointError(f"{self.path}: this chat model makes no outputs; train it with: anybind train align-out")
        if modality is None and len(self.outputs) == 1:
            return next(iter(self.outputs.values()))
        if modality is None and BINDING_MODALITY in self.outputs:
            return self.outputs[BINDING_MODALITY]
        if modality not in self.outputs:
            raise CheckpointError(f"{self.path}: makes no {modality} outputs (it makes: {', '.join(self.outputs)})")
        return self.outputs[modality]

    def output_vocab(self) -> OutputVocab:
        """The generative token ids of every output it makes, after the LM's own vocabulary."""
        return OutputVocab(list(self.outputs.values()), self.backbone.vocab_size)

    def output_order(self) -> list[str]:
        """The output modalities it makes, in the order "then draw it and say it" names them:
        the binding modality's (images, what "draw it" asks for) first, then by name."""
        return sorted(self.outputs, key=lambda m: (m != BINDING_MODALITY, m))

    def decoder_reference(self, modality: str | None = None) -> str:
        """The decoder to make ``modality`` with: one given at load time, else the one align-out trained against."""
        output = self.output(modality)
        reference = self._decoder_references.get(output.modality)
        if reference is not None:
            return reference
        if self.path is None:
            return output.config.decoder
        return stored_decoder_reference(self.path, output.config.decoder)

    def use_decoder(self, reference: str) -> None:
        """Make outputs with the decoder ``reference`` points at (its modality must be one this model makes)."""
        from anybind.models.decoders import parse_reference

        modality = parse_reference(reference)[0].modality
        self.output(modality)  # a clear error if this model makes none
        self._decoder_references[modality] = reference
        self._decoders.pop(modality, None)

    def decoder(self, modality: str | None = None):
        """The decoder of ``modality`` (loaded and checked against its output projector on first use)."""
        output = self.output(modality)
        if output.modality not in self._decoders:
            from anybind.models.decoders import load_decoder

            reference = self.decoder_reference(output.modality)
            decoder = load_decoder(reference, device=self.backbone.device, modality=output.modality)
            output.check_compatible(decoder, reference)
            self._decoders[output.modality] = decoder
        return self._decoders[output.modality]

    @torch.no_grad()
    def make(self, modality: str, states: torch.Tensor, context: torch.Tensor | None = None,
             context_mask: torch.Tensor | None = None, *, seed: int = 0, steps: int | None = None,
             guidance: float | None = None, words: Sequence[str] | None = None, candidates: int | None = None) -> list:
        """Outputs of ``modality`` from the final hidden states at its ``[TOK0..k-1]``, ``(B, k, H)``,
        and those of the conversation before them, ``context`` ``(B, N, H)`` right-padded with ``context_mask``.
        With ``words`` (each row's request and answer so far, :func:`~anybind.chat.best_of.words_of`),
        ``candidates`` samples per row (default: the output's own), the one nearest the words kept."""
        output = self.output(modality)
        device = self.backbone.device
        cond = output(states.to(device), None if context is None else context.to(device), context_mask)
        guidance = output.config.guidance if guidance is None else guidance
        k = output.config.candidates if candidates is None else candidates
        if k <= 1 or words is None or not best_of.can_check(self, modality):
            return self.decoder(modality).decode(cond, seed=seed, steps=steps, guidance=guidance)
        made = self.decoder(modality).decode(cond.repeat_interleave(k, dim=0), seed=seed, steps=steps, guidance=guidance)
        return best_of.nearest_words(self, modality, made, words, k)

    # --- answering ---------------------------------------------------------------------------

    def generate(self, prompt: str, attachments: Sequence = (), *, history: Sequence[Turn] = (), **options) -> Iterator:
        """Answer ``prompt`` about ``attachments``, yielding events as they are produced (see
        :func:`anybind.chat.pipeline.respond` for the options)."""
        from anybind.chat.pipeline import respond

        return respond(self, self.conversation(prompt, attachments, history), **options)

    def respond(self, turns: list[Turn], **options) -> Iterator:
        from anybind.chat.pipeline import respond

        return respond(self, turns, **options)

    def answer_batch(self, questions: Sequence[str], attachments: Sequence[Attachment], *, max_new_tokens: int = 16,
                     projector: str | None = None) -> list[str]:
        """Greedy answers to one question per attachment, decoded together (for evaluation)."""
        from anybind.chat.batch import greedy_answers

        turns = [self.conversation(q, [a]) for q, a in zip(questions, attachments)]
        return [a.text for a in greedy_answers(self, turns, max_new_tokens=max_new_tokens, projector=projector)]

    def own_answers(self, questions: Sequence[str], max_new_tokens: int = 32, progress: bool = False) -> list[str]:
        """The LM's greedy text answers to plain questions; a question asked more than once is
        answered once (training asks the frozen LM for what it would say)."""
        from anybind.chat.batch import greedy_answers

        distinct = list(dict.fromkeys(questions))
        answers = greedy_answers(self, [self.conversation(q) for q in distinct], max_new_tokens=max_new_tokens,
                                 shared_prefix=True, batch_size=NO_GRAD_BATCH, progress=progress,
                                 desc="the LM's own answers")
        answer_of = {q: a.text for q, a in zip(distinct, answers)}
        return [answer_of[q] for q in questions]
