"""Attachments arrive as content, never as paths: each is decoded into the request's own
temporary folder, under a name made from the client's file name, checked against the size
limit and routed by suffix to the plugin that reads it.

Content parts understood (OpenAI's chat-completions shapes)::

    {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}
    {"type": "input_audio", "input_audio": {"data": "<base64>", "format": "wav"}}
    {"type": "file", "file": {"file_data": "data:video/mp4;base64,...", "filename": "seven.mp4"}}

``file`` carries every other installed modality (video, point clouds, a third-party plugin's
files): its file name's suffix chooses the plugin, as on the command line.
"""

from __future__ import annotations

import base64
import binascii
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from anybind import plugins
from anybind.errors import InputError
from anybind.serve.errors import bad_request, too_large, unsupported

IMAGE_SUFFIXES = {"image/png": ".png", "image/jpeg": ".jpg", "image/jpg": ".jpg", "image/webp": ".webp",
                  "image/gif": ".gif", "image/bmp": ".bmp", "image/tiff": ".tiff"}
DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,(?P<data>.*)$", re.S)
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
NOT_A_PATH = "attachments are content, not paths or links: send the file's bytes (base64 or a data: URL)"


@dataclass
class Upload:
    """One attachment written into the request folder."""

    path: Path
    filename: str  # as the client named it (what messages about it say)
    modality: str


def safe_name(filename: str) -> str:
    """The client's file name without folders or odd characters, keeping its suffixes
    (``../../etc/x.depth.npy`` -> ``x.depth.npy``)."""
    name = re.split(r"[\\/]", filename or "")[-1]
    name = SAFE_NAME.sub("_", name).lstrip(".")
    return name[-120:] or "attachment"


class RequestFiles:
    """The temporary folder of one request; deleted with everything in it by :meth:`close`."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.folder = Path(tempfile.mkdtemp(prefix="anybind-request-"))
        self.uploads: list[Upload] = []

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "RequestFiles":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- content parts -----------------------------------------------------------------------

    def add_part(self, part: dict, where: str) -> Upload:
        """Decode an ``image_url``, ``input_audio`` or ``file`` content part into a file."""
        kind = part.get("type")
        if kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            mime, data = self._data_url(url, where)
            suffix = IMAGE_SUFFIXES.get(mime or "")
            if suffix is None:
                raise unsupported(f"{where}: image_url of type {mime or 'unknown'}; send one of "
                                  f"{', '.join(sorted(IMAGE_SUFFIXES))}", where)
            return self.add_bytes(data, f"image{suffix}", where)
        if kind == "input_audio":
            audio = part.get("input_audio")
            if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
                raise bad_request(f"{where}: input_audio needs {{'data': base64, 'format': 'wav'|'mp3'|...}}", where)
            fmt = str(audio.get("format") or "wav").lower().lstrip(".")
            name = f"audio.{safe_name(fmt)}"
            return self.add_bytes(self._base64(audio["data"], where, name), name, where)
        if kind == "file":
            file = part.get("file")
            if not isinstance(file, dict):
                raise bad_request(f"{where}: a file part needs {{'file_data': ..., 'filename': ...}}", where)
            if "file_id" in file and "file_data" not in file:
                raise bad_request(f"{where}: file_id is not supported (this server keeps no files); send file_data", where)
            filename = file.get("filename")
            if not isinstance(filename, str) or not filename.strip():
                raise bad_request(f"{where}: a file part needs a filename (its suffix chooses the plugin that reads it)", where)
            raw = file.get("file_data")
            data = (self._data_url(raw, where, filename)[1] if isinstance(raw, str) and raw.startswith("data:")
                    else self._base64(raw, where, filename))
            return self.add_bytes(data, filename, where)
        raise bad_request(f"{where}: unknown content part type {kind!r} (use text, image_url, input_audio or file)", where)

    def add_bytes(self, data: bytes, filename: str, where: str) -> Upload:
        """Write ``data`` as ``filename`` (made safe) into the folder, after the size and suffix checks."""
        self._check_size(len(data), filename, where)
        path = self.folder / f"{len(self.uploads):02d}-{safe_name(filename)}"
        try:
            modality = plugins.modality_for_path(path).name
        except InputError as exc:
            raise unsupported(f"{filename}: {exc.problem}", where) from None
        path.write_bytes(data)
        upload = Upload(path, filename, modality)
        self.uploads.append(upload)
        return upload

    # --- decoding ------------------------------------------------------------------------------

    def _check_size(self, size: int, filename: str, where: str) -> None:
        if size > self.max_bytes:
            raise too_large(f"{filename}: {size / 2**20:.1f} MB is over this server's upload limit of "
                            f"{self.max_bytes / 2**20:g} MB (anybind serve --max-upload-mb)", where)

    def _data_url(self, url, where: str, name: str = "image") -> tuple[str | None, bytes]:
        if not isinstance(url, str):
            raise bad_request(f"{where}: expected a data: URL", where)
        match = DATA_URL.match(url)
        if match is None:
            raise bad_request(f"{where}: {NOT_A_PATH}", where)
        if not match["b64"]:
            raise bad_request(f"{where}: the data: URL must be base64 (data:MIME;base64,...)", where)
        return (match["mime"] or "").lower() or None, self._base64(match["data"], where, name)

    def _base64(self, text, where: str, name: str) -> bytes:
        if not isinstance(text, str) or not text:
            raise bad_request(f"{where}: expected base64 content; {NOT_A_PATH}", where)
        self._check_size(len(text) * 3 // 4, name, where)  # before decoding a huge string
        try:
            return base64.b64decode(re.sub(r"\s+", "", text), validate=True)
        except (binascii.Error, ValueError):
            raise bad_request(f"{where}: not valid base64; {NOT_A_PATH}", where) from None
