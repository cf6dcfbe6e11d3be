"""The one loaded model, shared by every request: uses of it queue on one lock (the towers
and decoders load lazily and the LM is not re-entrant), and a generation runs in a thread
that stops at its next event once the client that asked for it has gone."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from anybind.errors import AnybindError

log = logging.getLogger("anybind.serve")
_END = object()


@dataclass
class ServeSettings:
    model: Path
    bind: Path | None = None  # the bound model for /v1/embeddings and /v1/retrieve (default: the chat model's)
    index: Path | None = None
    decoder: str | None = None
    api_key: str | None = None
    max_upload_bytes: int = 25 * 2**20
    max_tokens: int = 256  # when a request gives none
    max_images: int = 4
    image_steps: int | None = None
    quantize: str | None = None  # "int8": decode with int8 weights on the CPU


@dataclass
class Counters:
    running: int = 0
    waiting: int = 0
    finished: int = 0
    stopped: int = 0  # clients that went away mid-answer
    failed: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


@dataclass
class ModelHost:
    settings: ServeSettings
    chat: object  # ChatModel
    embedder: object  # ChatModel or AnybindModel: what embeds for /v1/embeddings and /v1/retrieve
    index: object | None = None
    model_id: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    counters: Counters = field(default_factory=Counters)
    _counting: threading.Lock = field(default_factory=threading.Lock)
    started: float = field(default_factory=time.time)

    @property
    def created(self) -> int:
        return int(Path(self.settings.model, "config.json").stat().st_mtime)

    def describe(self) -> dict:
        """What the page and /v1/models tell a user: what can be attached, what comes out."""
        from anybind import plugins

        installed = plugins.modalities()
        reads = {m: list(installed[m].suffixes) for m in self.chat.modalities if m in installed}
        return {"reads": reads, "makes": list(self.chat.outputs), "backbone": self.chat.backbone.reference,
                "embed_dim": self.embedder.embed_dim, "retrieval_index": self.index is not None,
                "max_upload_bytes": self.settings.max_upload_bytes, "api_key_required": self.settings.api_key is not None}

    @classmethod
    def load(cls, settings: ServeSettings) -> "ModelHost":
        import anybind
        from anybind.chat import ChatModel
        from anybind.errors import CheckpointError

        from anybind.layout import CHAT_FORMAT
        from anybind.persistence import read_config

        if read_config(settings.model).get("format") != CHAT_FORMAT:
            raise CheckpointError(f"{settings.model}: not a chat model; serve a chat model (anybind train align-in) "
                                  "and pass a bound model as --bind")
        chat = ChatModel.from_pretrained(settings.model, decoder=settings.decoder, quantize=settings.quantize)
        same = settings.bind is None or Path(settings.bind).resolve() == Path(chat.bound_dir).resolve()
        embedder = chat if same else anybind.load(settings.bind)
        index = None
        if settings.index is not None:
            from anybind.index import Index

            index = Index.load(settings.index)
            index.check_model(embedder)
        return cls(settings, chat, embedder, index, model_id=str(settings.model))

    def count(self, name: str, change: int = 1) -> None:
        with self._counting:
            setattr(self.counters, name, getattr(self.counters, name) + change)

    def run(self, work):
        """Run ``work()`` on the model after the uses queued before it (blocks: call it from a worker thread)."""
        self.count("waiting")
        with self.lock:
            self.count("waiting", -1)
            return work()

    def _generate(self, make_events, put, stop: threading.Event) -> None:
        """Run one generation on the model (in a worker thread), handing each event to ``put``."""
        try:
            self.run(lambda: self._drain(make_events(), put, stop))
        except BaseException as exc:  # noqa: BLE001 - handed to the request, which reports it
            if not isinstance(exc, AnybindError):  # a request the model refused is not a failure of the server
                self.count("failed")
            put(_Failed(exc))
        finally:
            put(_END)

    def _drain(self, events, put, stop: threading.Event) -> None:
        """Hand on ``events`` (with the model's lock held) until they end or ``stop`` is set."""
        if stop.is_set():  # the client left while it waited
            events.close()
            return
        began, pieces = time.time(), 0
        self.count("running")
        try:
            for event in events:
                pieces += event.type == "text"
                put(event)
                if stop.is_set():
                    self.count("stopped")
                    log.warning("stopped a generation after %.1f s and %d text pieces: the client disconnected",
                                time.time() - began, pieces)
                    return
            self.count("finished")
        finally:
            events.close()
            self.count("running", -1)

    async def stream(self, make_events, disconnected, stop: threading.Event):
        """Yield the events of ``make_events()`` (a generator run on the model in a thread) as
        they come. The generation stops at its next event once ``stop`` is set (the caller sets
        it when the response ends, however it ends) or ``disconnected()`` (async, polled about
        every quarter second) says the client has gone."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def put(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the server is shutting down
                stop.set()

        threading.Thread(target=self._generate, args=(make_events, put, stop), name="anybind-generation",
                         daemon=True).start()
        checked = time.monotonic()
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), timeout=0.25)
                except asyncio.TimeoutError:
                    item = None
                if time.monotonic() - checked > 0.25:
                    checked = time.monotonic()
                    if await disconnected():
                        return
                if item is None:
                    continue
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise item.exc
                yield item
        finally:
            stop.set()
