"""The video part of the sample world: each real digit drifting and zooming, as an mp4.

In the ``ood`` variant each digit turns and slides across a photographed background
(paper or a chalkboard) for 10-20 frames at 6-24 fps: motion, lengths and rates training never saw.
"""

from __future__ import annotations

import numpy as np

FRAMES, SIZE, FPS = 8, 32, 8


def render_clip(pixels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """(8, 8) digit -> FRAMES RGB frames of SIZE x SIZE: a random drift plus a zoom in or out."""
    from PIL import Image

    ink = Image.fromarray((255 - pixels * 255).astype(np.uint8), mode="L")
    start, end = rng.uniform(-5, 5, 2), rng.uniform(-5, 5, 2)
    zoom = rng.uniform(0.7, 1.0, 2)
    if rng.random() < 0.5:
        zoom = zoom[::-1]
    frames = []
    for t in np.linspace(0, 1, FRAMES):
        scale = zoom[0] + (zoom[1] - zoom[0]) * t
        side = max(8, int(round(SIZE * scale)))
        digit = ink.resize((side, side), Image.BICUBIC)
        canvas = Image.new("L", (SIZE, SIZE), 255)
        dx, dy = (start + (end - start) * t + (SIZE - side) / 2).round().astype(int)
        canvas.paste(digit, (int(dx), int(dy)))
        frames.append(np.asarray(canvas.convert("RGB")))
    return frames


def write_mp4(path, frames: list[np.ndarray], fps: int = FPS) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def turning_clip(ink: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """A digit that turns through up to 40 degrees and slides, on paper or a chalkboard: 10-20 frames."""
    from PIL import Image

    from anybind_image.world import photographed

    still = np.asarray(photographed(ink, rng).resize((48, 48)))
    background = np.median(np.concatenate([still[0], still[-1], still[:, 0], still[:, -1]]), axis=0)
    start, turn = rng.uniform(-20, 20), rng.uniform(-20, 20)
    shift = rng.uniform(-6, 6, 2)
    frames = []
    for t in np.linspace(0, 1, int(rng.integers(10, 21))):
        moved = Image.fromarray(still).rotate(start + turn * t, Image.BILINEAR, translate=tuple(shift * t),
                                             fillcolor=tuple(int(v) for v in background))
        frames.append(np.asarray(moved))
    return frames


def build(builder) -> None:
    # each frame a line drawing, as images read; clips turned, scaled and turning a little in training
    builder.encoders["video"] = {"normalize": "ink", "ink_grid": 8, "rotate": 20.0, "scale": 0.15, "turn": 20.0}
    if builder.variant != "ood":
        builder.write_per_digit("video", ".mp4", lambda path, pixels, rng: write_mp4(path, render_clip(pixels, rng)))
        return
    for i in range(len(builder.digits)):
        glyph = builder.digits.glyphs[i]
        path = builder.path("video", f"d{i:05d}.mp4")
        rng = builder.np_rng
        write_mp4(path, turning_clip(glyph if glyph is not None else builder.digits.images[i], rng),
                  fps=int(rng.choice([6, 12, 24])))
        builder.attach(i, "video", path)
