"""OpenAI chat messages and embedding inputs, read into anybind's turns and attachments.

An assistant message the server sent earlier comes back with its outputs as Markdown data
URLs (``![image 1](data:image/png;base64,...)``, see :mod:`anybind.serve.chunks`); they are cut
out of its text and embedded as that turn's attachments, exactly as :class:`ChatSession`
keeps a conversation, so "Now make it bigger" can refer to the image it drew.
"""

from __future__ import annotations

import base64
import re

from anybind.chat.conversation import Attachment, Turn
from anybind.chat.render import known_media
from anybind.errors import AnybindError, InputError
from anybind.models.space import resolve_input
from anybind.serve.errors import bad_request, unsupported
from anybind.serve.uploads import RequestFiles, Upload

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
#: an output as the server writes it into an answer's text (the blank lines are part of it): its
#: Markdown (an image ``![alt](data:...)``, a sound a link ``[alt](data:...)``) around a data URL
OUTPUT_MARK = "\n\n{markdown}\n\n"
_OUTPUT = re.compile(r"(?:\n\n)?!?\[(?P<alt>[^\]]*)\]\(data:(?P<mime>[\w.+-]+/[\w.+-]+);base64,(?P<data>[A-Za-z0-9+/=]*)\)(?:\n\n)?")


def _read_upload(model, upload: Upload, where: str | None, verb: str, purpose: str) -> tuple[str, object]:
    """``(modality, raw)`` of an uploaded file the model has a tower for; a file it cannot use is
    the client's error, named by the client's file name (never the server's temporary path)."""
    if upload.modality not in model.modalities:
        raise unsupported(f"{upload.filename}: a {upload.modality} file, but this model {verb} "
                          f"{', '.join(model.modalities)} (bind a {upload.modality} tower to {purpose})", where)
    try:
        return resolve_input(upload.path)
    except InputError as exc:
        raise _invalid(upload, exc.problem, where) from None


def _invalid(upload: Upload, problem: str, where: str | None):
    problem = problem.replace(str(upload.path), upload.filename).replace(str(upload.path.parent), "(upload)")
    return bad_request(f"{upload.filename}: {problem}", where, code="invalid_file")


def read_attachment(model, upload: Upload, where: str | None = None) -> Attachment:
    """Read and embed one uploaded file as a chat attachment."""
    modality, raw = _read_upload(model, upload, where, "reads", "chat about it")
    try:
        return Attachment(modality, upload.filename, model.embed_raw(modality, [raw])[0])
    except InputError as exc:
        problem = exc.problem
    except (AnybindError, ValueError, RuntimeError, OSError) as exc:  # a plugin's tokenizer refusing the content
        problem = f"cannot be read as {upload.modality} ({exc})"
    raise _invalid(upload, problem, where)


def _parts(content, where: str) -> list:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if content is None:
        return []
    if not isinstance(content, list):
        raise bad_request(f"{where}.content: expected a string or a list of content parts", f"{where}.content")
    return content


def _user_turn(model, role: str, content, files: RequestFiles, where: str) -> Turn:
    texts, attachments = [], []
    for j, part in enumerate(_parts(content, where)):
        here = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise bad_request(f"{here}: expected a content part object", here)
        if part.get("type") == "text":
            if not isinstance(part.get("text"), str):
                raise bad_request(f"{here}: a text part needs 'text'", here)
            texts.append(part["text"])
        elif role == "system":
            raise bad_request(f"{here}: a system message holds text only", here)
        else:
            attachments.append(read_attachment(model, files.add_part(part, here), here))
    return Turn(role, "\n".join(texts), attachments)


def _assistant_turn(model, content, files: RequestFiles, where: str) -> Turn:
    text = "".join(p.get("text", "") for p in _parts(content, where) if isinstance(p, dict) and p.get("type") == "text")
    outputs = []

    def cut(match: re.Match) -> str:
        outputs.append(match)
        return ""

    text = _OUTPUT.sub(cut, text)
    by_mime = {m.mime: (kind, m.suffix) for kind, m in known_media().items()}
    seen = []
    for n, match in enumerate(outputs):
        kind, suffix = by_mime.get(match["mime"], (None, None))
        if kind is None or kind not in model.modalities:
            continue  # an output the model has no tower for is not read back (as in ChatSession)
        data = base64.b64decode(match["data"] + "=" * (-len(match["data"]) % 4))
        seen.append(read_attachment(model, files.add_bytes(data, f"{kind}-{n + 1}{suffix}", where), where))
    return Turn("assistant", text, seen)


def conversation(model, messages, files: RequestFiles) -> list[Turn]:
    """The turns of an OpenAI ``messages`` list; its last message must be the user's."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages: expected a non-empty list", "messages")
    turns = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = ROLES.get(message.get("role")) if isinstance(message, dict) else None
        if role is None:
            raise bad_request(f"{where}: role must be one of {', '.join(ROLES)}", f"{where}.role")
        content = message.get("content")
        turns.append(_assistant_turn(model, content, files, where) if role == "assistant"
                     else _user_turn(model, role, content, files, where))
    if turns[-1].role != "user":
        raise bad_request("messages: the last message must be the user's", "messages")
    if not (turns[-1].text.strip() or turns[-1].attachments):
        raise bad_request(f"messages[{len(turns) - 1}]: the user's message is empty", "messages")
    if model.system_prompt and turns[0].role != "system":
        turns.insert(0, Turn("system", model.system_prompt))
    return turns


def embedding_inputs(model, value, files: RequestFiles) -> list[tuple[str, object]]:
    """``(modality, raw)`` for each input: a string is text (never a path on this server), an
    object is a content part holding a file."""
    items = [value] if isinstance(value, (str, dict)) else value
    if not isinstance(items, list) or not items:
        raise bad_request("input: expected a string, a content part, or a non-empty list of them", "input")
    resolved = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if isinstance(item, str):
            if not item.strip():
                raise bad_request(f"{where}: empty text", where)
            resolved.append(("text", item))
        elif isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str):
            resolved.append(("text", item["text"]))
        elif isinstance(item, dict):
            resolved.append(_read_upload(model, files.add_part(item, where), where, "embeds", "embed it"))
        else:
            raise bad_request(f"{where}: token arrays are not supported; send text or a content part", where)
    return resolved
