"""Renderers: a stream of chat events as terminal text, Markdown, one HTML page, or JSON lines.

Every renderer writes as events arrive (text is never held back for an output) to a text
stream, usually stdout or a temporary file that becomes the ``-o`` file on success.
Outputs are saved as files (named ``<prefix>-<n>.<ext>`` in ``images_dir``) except in HTML,
where they are inlined as data URIs so the page is self-contained. How an output modality
is written and shown is its :class:`Media` entry: images (PNG files, ``<img>``) are built in, and a
decoder plugin gives its own modality's (``DecoderSpec.media``: WAV files and ``<audio>`` for sound).
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, TextIO

from anybind.chat.events import OutputEvent
from anybind.errors import AnybindError
from anybind.persistence import write_output_file

FORMATS = ("terminal", "markdown", "html", "jsonl")
IMAGE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".png": "PNG"}


def save_image(image, path: Path | str) -> Path:
    """Write a PIL image atomically (format from the suffix): no partial file on failure."""
    path = Path(path)
    fmt = IMAGE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise AnybindError(f"{path}: unsupported image suffix {path.suffix or '(none)'}; use .png, .jpg, .webp or .bmp")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return write_output_file(path, buffer.getvalue())


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Media:
    """How one output modality is saved and shown."""

    suffix: str
    save: Callable  # (value, path) -> path
    encode: Callable  # value -> bytes of the saved format
    mime: str
    html: str  # with {alt} and {src}
    markdown: str = "![{alt}]({src})"  # with {alt} and {src}


MEDIA = {
    "image": Media(".png", save_image, _png, "image/png", "<img alt=\"{alt}\" src=\"{src}\">"),
}


def known_media() -> dict[str, Media]:
    """Every output modality's :class:`Media`: the built-in ones and those installed plugins give."""
    from anybind import plugins
    from anybind.specs import resolve

    found = dict(MEDIA)
    for spec in plugins.decoders().values():
        if spec.media is not None and spec.modality not in found:
            found[spec.modality] = resolve(spec.media, what=f"media of decoder {spec.name!r}")
    return found


def media(kind: str) -> Media:
    """How ``kind`` outputs are saved and shown: built in, or from the plugin whose decoder makes them."""
    if kind in MEDIA:
        return MEDIA[kind]
    found = known_media()
    if kind not in found:
        raise AnybindError(f"no renderer knows how to write {kind!r} outputs (known: {', '.join(sorted(found))})")
    return found[kind]


class Renderer:
    def __init__(self, out: TextIO, images_dir: Path | str = ".", prefix: str = "image", stats: bool = False, err=None):
        self.out = out
        self.images_dir = Path(images_dir)
        self.prefix = prefix
        self.stats = stats
        self.err = err
        self.saved = 0

    # one method per event type (``on_output`` for every output modality); ``render`` dispatches
    def render(self, events) -> None:
        for event in events:
            self.on(event)
            self.out.flush()

    def on(self, event) -> None:
        getattr(self, f"on_{event.type}", self.on_output)(event)

    def save(self, event) -> Path:
        kind = media(event.type)
        self.saved += 1
        path = kind.save(event.value, self.images_dir / f"{self.prefix}-{self.saved}{kind.suffix}")
        event.path = str(path)
        return path

    def begin_turn(self, prompt: str) -> None:
        pass

    def close(self) -> None:
        pass

    def on_text(self, event) -> None:
        self.out.write(event.text)

    def on_notice(self, event) -> None:
        if self.err is not None:
            self.err(f"[{event.message}]")

    def on_output(self, event) -> None:
        self.out.write(f"\n[{event.type}: {self.save(event)}]\n")

    def on_done(self, event) -> None:
        self.out.write("\n")
        if self.stats and self.err is not None:
            first = f", first output {event.first_token_seconds:.2f}s" if event.first_token_seconds is not None else ""
            rate = event.tokens / event.seconds if event.seconds else 0.0
            made = event.usage.get("made") or {}
            drawn = "".join(f", {n} {kind} output(s)" for kind, n in made.items())
            self.err(f"[{event.tokens} tokens in {event.seconds:.2f}s ({rate:.1f}/s){first}{drawn}; "
                     f"prompt {event.usage.get('prompt_tokens')} tokens; stop: {event.reason}]")


class TerminalRenderer(Renderer):
    """Plain text as it streams; each output saved, its path printed in its place."""


class MarkdownRenderer(Renderer):
    def begin_turn(self, prompt: str) -> None:
        self.out.write(f"**You:** {prompt}\n\n")

    def on_output(self, event) -> None:
        path = self.save(event)
        kind = media(event.type)
        self.out.write(f"\n\n{kind.markdown.format(alt=f'{event.type} {event.index + 1}', src=path.as_posix())}\n\n")


class HtmlRenderer(Renderer):
    """One self-contained page: text escaped, outputs inline as data URIs (images PNG, sound WAV)."""

    HEAD = ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>anybind</title>\n"
            "<style>body{font-family:system-ui,sans-serif;max-width:44em;margin:2em auto;line-height:1.5}"
            ".you{color:#555;margin-top:1.5em}.answer{white-space:pre-wrap}"
            "img{image-rendering:pixelated;width:128px;height:128px;display:block;margin:.5em 0;border:1px solid #ddd}"
            "audio{display:block;margin:.5em 0}"
            "</style></head><body>\n")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.out.write(self.HEAD)
        self.open = False

    def begin_turn(self, prompt: str) -> None:
        self.out.write(f"<p class=\"you\"><b>You:</b> {html.escape(prompt)}</p>\n<div class=\"answer\">")
        self.open = True

    def on_text(self, event) -> None:
        self.out.write(html.escape(event.text))

    def on_output(self, event) -> None:
        kind = media(event.type)
        data = base64.b64encode(kind.encode(event.value)).decode("ascii")
        self.out.write(kind.html.format(alt=f"{event.type} {event.index + 1}", src=f"data:{kind.mime};base64,{data}"))

    def on_done(self, event) -> None:
        if self.open:
            self.out.write("</div>\n")
            self.open = False
        super().on_done(event)

    def close(self) -> None:
        self.out.write("</body></html>\n")


class JsonlRenderer(Renderer):
    """One JSON object per event; outputs are saved and referenced by ``path``."""

    def render(self, events) -> None:
        for event in events:
            if isinstance(event, OutputEvent):
                self.save(event)
                record = {"type": event.type, "index": event.index, "path": event.path}
            else:
                record = asdict(event)
            self.out.write(json.dumps(record) + "\n")
            self.out.flush()


def make_renderer(fmt: str, out: TextIO, **kwargs) -> Renderer:
    kinds = {"terminal": TerminalRenderer, "markdown": MarkdownRenderer, "html": HtmlRenderer, "jsonl": JsonlRenderer}
    return kinds[fmt](out, **kwargs)
