"""The .strokes format (text, one pen step 'dx dy pen' per line) and this modality's part of the sample world."""

import numpy as np
from PIL import Image

from anybind.errors import InputError


def load_strokes(path) -> np.ndarray:
    """A .strokes file -> (T, 3) float32 pen steps (dx, dy, pen); errors name the file."""
    try:
        steps = np.loadtxt(path, dtype=np.float32, comments="#", ndmin=2)
    except ValueError as exc:
        raise InputError(path, f"not a .strokes file: every line must be 'dx dy pen' ({exc})") from None
    if steps.shape[1:] != (3,) or len(steps) < 2 or not np.isfinite(steps).all() or set(np.unique(steps[:, 2])) - {0, 1}:
        raise InputError(path, f"expected 2 or more lines 'dx dy pen' (finite numbers, pen 0 or 1), read {steps.shape}")
    return steps


def trace(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(8, 8) digit -> (T, 3) pen steps: a nearest-neighbour walk over its ink, lifting the pen across gaps."""
    big = np.asarray(Image.fromarray((pixels * 255).astype(np.uint8)).resize((16, 16), Image.BILINEAR)) / 255
    ys, xs = np.nonzero(big > 0.4)
    angle, scale = rng.uniform(-0.1, 0.1), rng.uniform(0.9, 1.1)  # each writer's hand: a little turned, sized, shaky
    turn = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    ink = (np.stack([xs, -ys], 1) / 16 + rng.normal(0, 0.01, (len(xs), 2))) @ turn.T
    distance = np.linalg.norm(ink[:, None] - ink[None], axis=2)  # (N, N)
    order, pen = [int(np.argmax(ink[:, 1] - 0.1 * ink[:, 0]))], [0]  # start at the top
    while len(order) < len(ink):
        distance[:, order[-1]] = np.inf  # visited
        order.append(int(np.argmin(distance[order[-1]])))
        pen.append(int(distance[order[-2], order[-1]] < 0.1))  # neighbouring pixels are 1/16 apart; farther is a jump
    path = ink[order]
    return np.column_stack([np.diff(path, axis=0, prepend=path[:1]), pen]).astype(np.float32)


def write_strokes(path, steps: np.ndarray) -> None:
    lines = ["# anybind strokes: one pen step per line, 'dx dy pen' (pen 1 = drawing, 0 = lifted)"]
    path.write_text("\n".join(lines + [f"{dx:.4f} {dy:.4f} {int(pen)}" for dx, dy, pen in steps]) + "\n")


def build(builder) -> None:
    builder.write_per_digit("strokes", ".strokes", lambda path, pixels, rng: write_strokes(path, trace(pixels, rng)))
