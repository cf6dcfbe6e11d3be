"""The image judge of ``anybind eval generate``: an SVM on small grey thumbnails of real images."""

from __future__ import annotations

import numpy as np

from anybind.eval.judge import Judge


class ImageJudge(Judge):
    size = 16  # thumbnails of size x size grey pixels

    def features(self, images) -> np.ndarray:
        from PIL import Image

        if not images:  # e.g. a label with no held-out image in a small world
            return np.zeros((0, self.size * self.size), dtype="float32")
        return np.stack([np.asarray(im.convert("L").resize((self.size, self.size), Image.BILINEAR), dtype="float32")
                         .ravel() / 255.0 for im in images])

    def key(self, image) -> bytes:
        return image.tobytes()
