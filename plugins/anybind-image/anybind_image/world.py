"""The image part of the sample world: each real 8x8 digit, upsampled, as a PNG.

In the ``ood`` variant each (printed) digit is photographed differently: on paper or a
chalkboard, turned, at any size and place, blurred, and saved as a JPEG of any quality.
"""

from __future__ import annotations

import numpy as np

SIZE = 32


def digit_image(pixels: np.ndarray, size: int = SIZE):
    """(8, 8) in [0, 1] -> size x size RGB PIL image, dark ink on white like paper."""
    from anybind_image.encoder import ink_image

    return ink_image(pixels, size)


def photographed(ink: np.ndarray, rng: np.random.Generator):
    """(h, w) ink in [0, 1] -> an RGB photo of it: paper (dark ink) or a chalkboard (light chalk),
    with grain and a light gradient, turned up to 25 degrees, at 35-80% of a 48-112 px frame."""
    from PIL import Image, ImageFilter

    side = int(rng.integers(48, 113))
    glyph = Image.fromarray((ink * 255).astype(np.uint8), mode="L")
    span = max(8, int(side * rng.uniform(0.35, 0.8)))
    glyph = glyph.resize((span, span), Image.BICUBIC).rotate(float(rng.uniform(-25, 25)), Image.BICUBIC, expand=True)
    mask = Image.new("L", (side, side), 0)
    at = rng.integers(0, max(1, side - glyph.width + 1), 2)
    mask.paste(glyph, (int(at[0]), int(at[1])))
    coverage = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    chalk = rng.random() < 0.5
    paper = rng.uniform(20, 70, 3) if chalk else rng.uniform(185, 250, 3)
    ink_colour = rng.uniform(180, 245, 3) if chalk else rng.uniform(0, 70, 3)
    ramp = np.linspace(-1, 1, side)[None, :, None] * rng.uniform(0, 20)
    grain = rng.normal(0, rng.uniform(2, 10), (side, side, 1))
    photo = paper + ramp + grain
    photo = photo * (1 - coverage) + ink_colour * coverage
    image = Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8), mode="RGB")
    return image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.2))))


#: How a tower reads these digits: as line drawings (either polarity, any background, size or
#: place, through the 8x8 grid they were made on), turned and scaled a little in training. A
#: tower for photos of anything keeps the encoder's defaults.
READ_AS = {"normalize": "ink", "ink_grid": 8, "rotate": 12.0, "scale": 0.1}


def build(builder) -> None:
    builder.encoders["image"] = dict(READ_AS)
    if builder.variant != "ood":
        builder.write_per_digit("image", ".png", lambda path, pixels, rng: digit_image(pixels).save(path))
        return
    for i in range(len(builder.digits)):
        glyph = builder.digits.glyphs[i]
        ink = glyph if glyph is not None else builder.digits.images[i]
        path = builder.path("image", f"d{i:05d}.jpg")
        photographed(ink, builder.np_rng).save(path, quality=int(builder.np_rng.integers(35, 91)))
        builder.attach(i, "image", path)
