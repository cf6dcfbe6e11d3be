"""Digits printed in real fonts, as ink arrays like the handwritten ones.

The sample world's out-of-distribution variant is made of them: type is unlike any
handwriting the training world holds. ``TRAIN_FAMILIES`` are the families a training world
may print in (kept apart from ``OOD_FAMILIES``, so that evaluation stays on unseen type).
Fonts come from Debian's font packages (``FONT_PACKAGES``, installed by ``make`` set-up).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anybind.errors import AnybindError

FONT_PACKAGES = ("fonts-dejavu-core", "fonts-liberation2", "fonts-freefont-ttf", "fonts-urw-base35")
FONT_DIRS = (Path("/usr/share/fonts"),)
#: Families printed into the training world, and the disjoint ones the OOD world is printed in.
TRAIN_FAMILIES = ("DejaVu", "Liberation")
OOD_FAMILIES = ("Nimbus", "URW", "C059", "P052", "Free")
#: Fonts without ordinary digits (symbols, dingbats, a calligraphic face too far from print).
EXCLUDED = ("Math", "Symbol", "D050000L", "Z003")
SIZE = 32


def font_files(families: tuple[str, ...]) -> list[Path]:
    """The installed TrueType/OpenType fonts of ``families`` (by file name), sorted; an error naming
    the packages to install when there are none."""
    found = sorted({p for d in FONT_DIRS if d.is_dir() for p in d.rglob("*") if p.suffix.lower() in (".ttf", ".otf")
                    and p.name.startswith(families) and not any(x in p.name for x in EXCLUDED)}, key=lambda p: p.name)
    if not found:
        raise AnybindError(f"no fonts of the families {', '.join(families)} are installed; the sample world prints "
                           f"digits with them: apt-get install -y {' '.join(FONT_PACKAGES)}")
    return found


def render(font: Path, digit: int, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """One digit printed in ``font``: (size, size) float32 ink in [0, 1], centred with a little jitter."""
    from PIL import Image, ImageDraw, ImageFont

    face = ImageFont.truetype(str(font), int(rng.integers(int(size * 0.55), int(size * 0.85))))
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = draw.textbbox((0, 0), str(digit), font=face)
    dx, dy = rng.integers(-2, 3, 2)
    draw.text(((size - (right - left)) / 2 - left + dx, (size - (bottom - top)) / 2 - top + dy), str(digit),
              fill=255, font=face)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def ink_grid(ink: np.ndarray, grid: int = 8, threshold: float = 0.25) -> np.ndarray:
    """Ink (H, W) in [0, 1] -> (grid, grid): cropped to the ink's bounding box, padded square about
    its centre, averaged down and scaled to a peak of 1. This is how the handwritten digits were
    made (UCI: size-normalised 32x32 bitmaps, ink counted in 4x4 blocks), so anything passed
    through it looks like them whatever its size, position or resolution."""
    from PIL import Image

    ys, xs = np.nonzero(ink > threshold * max(float(ink.max()), 1e-6))
    crop = ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] if len(xs) else ink
    h, w = crop.shape
    side = max(h, w)
    square = np.zeros((side, side), dtype=np.float32)
    square[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = crop
    small = np.asarray(Image.fromarray((square * 255).astype(np.uint8)).resize((grid, grid), Image.BOX),
                       dtype=np.float32) / 255.0
    return small / max(float(small.max()), 1e-6)


def printed_digits(families: tuple[str, ...], per_font: int, rng: np.random.Generator,
                   fonts: int | None = None) -> tuple[list[np.ndarray], list[int]]:
    """Every digit printed ``per_font`` times in each font of ``families`` (the first ``fonts`` of them):
    (SIZE, SIZE) ink glyphs and their digits."""
    glyphs, labels = [], []
    for font in font_files(families)[:fonts]:
        for digit in range(10):
            for _ in range(per_font):
                glyphs.append(render(font, digit, rng))
                labels.append(digit)
    return glyphs, labels
