"""A conversation that keeps its history (what interactive ``anybind chat`` uses)."""

from __future__ import annotations

import time
from typing import Iterator, Sequence

from anybind.chat.conversation import Attachment, Turn, describe
from anybind.chat.events import DoneEvent, OutputEvent, SamplingOptions


class ChatSession:
    def __init__(self, model, options: SamplingOptions | None = None, projector: str | None = None,
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
        made = []
        for event in self.model.respond(turns, options=self.options, projector=self.projector, began=began,
                                        draw=self.draw, image_steps=self.image_steps, max_images=self.max_images):
            if isinstance(event, DoneEvent):  # kept before it is yielded: a caller may stop reading at "done"
                self.turns = turns + [Turn("assistant", event.text, self._seen(made))]
            elif isinstance(event, OutputEvent):
                made.append(event)
            yield event

    def _seen(self, made: list[OutputEvent]) -> list[Attachment]:
        """The answer's outputs, embedded like user attachments (where the bound model has a tower
        of their modality), so later turns can refer to them."""
        seen = []
        for event in made:
            if event.type in self.model.modalities:
                embedding = self.model.embed_raw(event.type, [event.value])[0]
                seen.append(Attachment(event.type, event.path or f"{event.type} {event.index + 1}", embedding))
        return seen

    def reset(self) -> None:
        self.turns = []

    def describe_attachments(self) -> list[str]:
        return [describe(a) for t in self.turns for a in t.attachments]
