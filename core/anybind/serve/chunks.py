"""Chat events as OpenAI ``chat.completion.chunk`` objects and a whole ``chat.completion``.

Outputs (drawn images, and any output modality a decoder plugin adds) go into the answer's
text in their place, as Markdown with a data URL, which every OpenAI client can read::

    "Four is the digit four.\\n\\n![image 1](data:image/png;base64,iVBOR...)\\n\\n"

(a sound as a link, ``[audio 2](data:audio/wav;base64,...)``, where Markdown has no player)

and, for programs that want them without parsing Markdown, in the ``anybind`` extension field
of the same chunk (``delta.anybind.outputs``) or of the whole message (``message.anybind.outputs``)::

    {"type": "image", "index": 0, "mime": "image/png", "data": "<base64>", "offset": 23}

``offset`` is where the Markdown starts in the message's content.
"""

from __future__ import annotations

import base64
import time
import uuid

from anybind.chat.render import media
from anybind.serve.messages import OUTPUT_MARK


def output_part(event, offset: int) -> dict:
    kind = media(event.type)
    return {"type": event.type, "index": event.index, "mime": kind.mime,
            "data": base64.b64encode(kind.encode(event.value)).decode("ascii"), "offset": offset}


def output_markdown(part: dict) -> str:
    alt, src = f"{part['type']} {part['index'] + 1}", f"data:{part['mime']};base64,{part['data']}"
    return OUTPUT_MARK.format(markdown=media(part["type"]).markdown.format(alt=alt, src=src))


def usage(done) -> dict:
    prompt, completion = done.usage.get("prompt_tokens", 0), done.usage.get("completion_tokens", done.tokens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class Completion:
    """One answer being assembled: turns events into chunks as they come, and keeps the whole."""

    def __init__(self, model_id: str):
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model_id = model_id
        self.content = ""
        self.outputs: list[dict] = []
        self.notices: list[str] = []
        self.done = None

    def chunk(self, delta: dict, finish_reason: str | None = None, **extra) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model_id,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}], **extra}

    def first(self) -> dict:
        return self.chunk({"role": "assistant", "content": ""})

    def push(self, event) -> dict | None:
        """The chunk for one event (``None`` for the final event: see :meth:`last`)."""
        if event.type == "text":
            self.content += event.text
            return self.chunk({"content": event.text})
        if event.type == "notice":
            self.notices.append(event.message)
            return self.chunk({"anybind": {"notice": event.message}})
        if event.type == "done":
            self.done = event
            return None
        part = output_part(event, len(self.content))
        markdown = output_markdown(part)
        self.content += markdown
        self.outputs.append(part)
        return self.chunk({"content": markdown, "anybind": {"outputs": [part]}})

    @property
    def finish_reason(self) -> str:
        return self.done.reason if self.done is not None else "stop"

    def last(self) -> dict:
        return self.chunk({}, self.finish_reason)

    def usage_chunk(self) -> dict:
        chunk = self.chunk({})
        chunk["choices"] = []
        chunk["usage"] = usage(self.done) if self.done is not None else None
        return chunk

    def whole(self) -> dict:
        message = {"role": "assistant", "content": self.content, "refusal": None,
                   "anybind": {"outputs": self.outputs, "notices": self.notices}}
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model_id,
                "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason, "logprobs": None}],
                "usage": usage(self.done) if self.done is not None else None}
