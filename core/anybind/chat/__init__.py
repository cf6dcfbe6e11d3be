"""Chat: any-to-any answers from a chat model directory.

* :mod:`~anybind.chat.model`: the components (towers, backbone, projectors, outputs) and loading;
* :mod:`~anybind.chat.pipeline`: one answer, step by step; :mod:`~anybind.chat.session`: a conversation;
* :mod:`~anybind.chat.conversation`: turns and attachments through the backbone's chat template;
* :mod:`~anybind.chat.decode`, :mod:`~anybind.chat.outputs`: the decode loops and generative tokens;
* :mod:`~anybind.chat.best_of`: several samples of an output, the one nearest the words shown;
* :mod:`~anybind.chat.batch`: many greedy answers at once (evaluation, training);
* :mod:`~anybind.chat.events`, :mod:`~anybind.chat.render`: what an answer streams, and its renderers.
"""

from anybind.chat.model import ChatModel
from anybind.chat.session import ChatSession

__all__ = ["ChatModel", "ChatSession"]
