"""Independent judges of generated outputs: classifiers of a world's labels trained on its
*real* training files of one modality, never on generated ones.

A decoder plugin supplies its output modality's judge (``DecoderSpec.judge``) by saying how
to turn a sample into a feature vector; the classifier, its accuracy on real held-out files
and the diversity measure are shared here.
"""

from __future__ import annotations

import numpy as np
import torch

from anybind import plugins
from anybind.data.manifest import Manifest
from anybind.errors import InputError


class Judge:
    """An RBF SVM over :meth:`features` of real files of ``modality``, with their labels."""

    #: real held-out samples per label kept to measure the diversity of generated ones against
    real_per_label = 20

    def __init__(self, manifest: Manifest, modality: str):
        from sklearn.svm import SVC

        self.labels, self.modality = manifest.labels, modality
        spec = plugins.get_modality(modality)
        train, test = self.split(manifest, modality)
        if not train:
            raise InputError(manifest.path, f"no labelled {modality} files to train the {modality} judge on")
        self.svm = SVC(C=10.0, gamma="scale").fit(self.features([spec.load(r[modality]) for r in train]),
                                                  [r["label"] for r in train])
        self.accuracy = None
        if test:
            predicted = self.predict([spec.load(r[modality]) for r in test])
            self.accuracy = sum(p == r["label"] for p, r in zip(predicted, test)) / len(test)
        self.real = {label: self.features([spec.load(r[modality]) for r in test if r["label"] == label][:self.real_per_label])
                     for label in self.labels}

    def split(self, manifest: Manifest, modality: str) -> tuple[list[dict], list[dict]]:
        """``(rows it trains on, rows its accuracy is measured on)``: by default the training and
        held-out splits; a judge may train on other real files (held-out voices, say)."""
        return manifest.select("train", has=(modality, "label")), manifest.select("test", has=(modality, "label"))

    def features(self, samples) -> np.ndarray:
        """``(N, F)`` features of raw samples (what the modality's loader or its decoder returns)."""
        raise NotImplementedError

    def key(self, sample) -> bytes:
        """Identical samples share a key (to count distinct outputs)."""
        return self.features([sample]).tobytes()

    def predict(self, samples) -> list[str]:
        return list(self.svm.predict(self.features(samples))) if samples else []

    def diversity(self, label: str, samples) -> float:
        """Mean pairwise distance between ``samples`` over that between real held-out samples of ``label``."""
        def spread(x):
            if len(x) < 2:
                return 0.0
            x = torch.as_tensor(x)
            return float(torch.cdist(x, x).sum() / (len(x) * (len(x) - 1)))

        real = spread(self.real.get(label, []))
        return spread(self.features(samples)) / real if real else 0.0
