"""Renderers: a stream of chat events as terminal text, Markdown, one HTML page, or JSON lines.

Every renderer writes as events arrive (text is never held back for an image) to a text
stream, usually stdout or a temporary file that becomes the ``-o`` file on success.
Images are saved as files (named ``<prefix>-<n>.png`` in ``images_dir``) except in HTML,
where they are inlined as data URIs so the page is self-contained.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

FORMATS = ("terminal", "markdown", "html", "jsonl")


class Renderer:
    def __init__(self, out: TextIO, images_dir: Path | str = ".", prefix: str = "image", stats: bool = False, err=None):
        self.out = out
        self.images_dir = Path(images_dir)
        self.prefix = prefix
        self.stats = stats
        self.err = err
        self.saved = 0

    # one method per event type; ``render`` dispatches
    def render(self, events) -> None:
        for event in events:
            getattr(self, f"on_{event.type}")(event)
            self.out.flush()

    def save(self, event) -> Path:
        from anybind.decoders import save_image

        self.saved += 1
        path = save_image(event.image, self.images_dir / f"{self.prefix}-{self.saved}.png")
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

    def on_image(self, event) -> None:
        self.out.write(f"\n[image: {self.save(event)}]\n")

    def on_done(self, event) -> None:
        self.out.write("\n")
        if self.stats and self.err is not None:
            first = f", first output {event.first_token_seconds:.2f}s" if event.first_token_seconds is not None else ""
            rate = event.tokens / event.seconds if event.seconds else 0.0
            images = event.usage.get("images")
            drawn = f", {images} image(s)" if images else ""
            self.err(f"[{event.tokens} tokens in {event.seconds:.2f}s ({rate:.1f}/s){first}{drawn}; "
                     f"prompt {event.usage.get('prompt_tokens')} tokens; stop: {event.reason}]")


class TerminalRenderer(Renderer):
    """Plain text as it streams; each image saved, its path printed in its place."""


class MarkdownRenderer(Renderer):
    def begin_turn(self, prompt: str) -> None:
        self.out.write(f"**You:** {prompt}\n\n")

    def on_image(self, event) -> None:
        path = self.save(event)
        self.out.write(f"\n\n![image {event.index + 1}]({path.as_posix()})\n\n")


class HtmlRenderer(Renderer):
    """One self-contained page: text escaped, images inline as PNG data URIs."""

    HEAD = ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>anybind</title>\n"
            "<style>body{font-family:system-ui,sans-serif;max-width:44em;margin:2em auto;line-height:1.5}"
            ".you{color:#555;margin-top:1.5em}.answer{white-space:pre-wrap}"
            "img{image-rendering:pixelated;width:128px;height:128px;display:block;margin:.5em 0;border:1px solid #ddd}"
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

    def on_image(self, event) -> None:
        buffer = io.BytesIO()
        event.image.save(buffer, format="PNG")
        data = base64.b64encode(buffer.getvalue()).decode("ascii")
        self.out.write(f"<img alt=\"image {event.index + 1}\" src=\"data:image/png;base64,{data}\">")

    def on_done(self, event) -> None:
        if self.open:
            self.out.write("</div>\n")
            self.open = False
        super().on_done(event)

    def close(self) -> None:
        self.out.write("</body></html>\n")


class JsonlRenderer(Renderer):
    """One JSON object per event; images are saved and referenced by ``path``."""

    def render(self, events) -> None:
        for event in events:
            if event.type == "image":
                self.save(event)
                record = {"type": "image", "index": event.index, "path": event.path}
            else:
                record = asdict(event)
            self.out.write(json.dumps(record) + "\n")
            self.out.flush()


def make_renderer(fmt: str, out: TextIO, **kwargs) -> Renderer:
    kinds = {"terminal": TerminalRenderer, "markdown": MarkdownRenderer, "html": HtmlRenderer, "jsonl": JsonlRenderer}
    return kinds[fmt](out, **kwargs)
