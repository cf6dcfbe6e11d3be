"""Evaluation: the shared space (:mod:`~anybind.eval.bind`), chat about attachments
(:mod:`~anybind.eval.chat`), multi-turn conversations (:mod:`~anybind.eval.conversations`) and
generated outputs judged by an independent classifier
(:mod:`~anybind.eval.generate`, :mod:`~anybind.eval.judge`), each returning a dict of
held-out metrics."""

from anybind.eval.bind import evaluate_bind
from anybind.eval.chat import evaluate_chat, mentioned_label
from anybind.eval.conversations import evaluate_conversations
from anybind.eval.generate import evaluate_generate, evaluate_together, evaluate_words_only, output_judge

__all__ = ["evaluate_bind", "evaluate_chat", "evaluate_conversations", "evaluate_generate", "evaluate_together",
           "evaluate_words_only", "mentioned_label", "output_judge"]
