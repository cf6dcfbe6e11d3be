"""What a chat answer streams: text pieces, outputs in their place, notices, then one done event;
the sampling options, and the incremental detokeniser that turns ids into text pieces."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TextEvent:
    """A piece of the answer's text, as soon as it decodes to whole characters."""

    text: str
    type: str = "text"


@dataclass
class NoticeEvent:
    """Something the user should know that is not part of the answer (e.g. dropped turns)."""

    message: str
    type: str = "notice"


@dataclass
class OutputEvent:
    """Something a decoder made (an image, a sound), in its place in the answer.

    ``type`` is its output modality (``"image"``), ``value`` what the decoder returned (a PIL
    image for images) and ``index`` counts the answer's outputs from 0."""

    type: str
    value: object
    index: int
    path: str | None = None  # set once a renderer has saved it

    @property
    def image(self):
        """``value``, by the name image outputs are read with (``event.image.save(...)``)."""
        return self.value


@dataclass
class DoneEvent:
    """The end of one answer."""

    text: str
    tokens: int
    reason: str  # "stop" (end of turn) or "length" (max tokens)
    seconds: float
    first_token_seconds: float | None
    type: str = "done"
    usage: dict = field(default_factory=dict)


@dataclass
class SamplingOptions:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None


class TextStream:
    """Incremental detokeniser: push token ids, get back text as soon as it is whole characters."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:read] is context already printed
        self.read = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """What is still held back at the end (a character cut off by the token limit decodes
        as U+FFFD), so that the pieces pushed out add up to :attr:`text`."""
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return after[len(before):]

    @property
    def text(self) -> str:
        return self._decode(self.ids)
