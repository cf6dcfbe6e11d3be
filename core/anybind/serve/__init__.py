"""``anybind serve``: one loaded model behind a chat page and an OpenAI-compatible API.

    from anybind.serve import ModelHost, ServeSettings, create_app
    app = create_app(ModelHost.load(ServeSettings(Path("runs/quickstart/chat"))))

* :mod:`~anybind.serve.host`: the model, the lock requests queue on, generation in a thread;
* :mod:`~anybind.serve.routes`: ``/v1/chat/completions``, ``/v1/embeddings``, ``/v1/models``,
  ``/v1/retrieve``, ``/health``;
* :mod:`~anybind.serve.messages` and :mod:`~anybind.serve.uploads`: OpenAI messages and content
  parts into turns and attachments (content only, never a path on the server);
* :mod:`~anybind.serve.chunks`: events out as ``chat.completion.chunk`` objects;
* :mod:`~anybind.serve.guard`: the body limit and the API key;
* :mod:`~anybind.serve.app`: the FastAPI app and the page (``static/``).
"""

from anybind.serve.app import create_app
from anybind.serve.host import ModelHost, ServeSettings

__all__ = ["ModelHost", "ServeSettings", "create_app"]
