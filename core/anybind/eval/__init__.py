"""Evaluation: the shared space (:mod:`~anybind.eval.bind`), chat about attachments
(:mod:`~anybind.eval.chat`) and generated outputs judged by an independent classifier
(:mod:`~anybind.eval.generate`, :mod:`~anybind.eval.judge`), each returning a dict of
held-out metrics."""

from anybind.eval.bind import evaluate_bind
from anybind.eval.chat import evaluate_chat, mentioned_label
from anybind.eval.generate import evaluate_generate

__all__ = ["evaluate_bind", "evaluate_chat", "evaluate_generate", "mentioned_label"]
