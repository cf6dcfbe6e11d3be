"""The point-cloud part of the sample world: each digit's strokes extruded to 3-D, as .ply."""

from __future__ import annotations

import numpy as np

from anybind_pointcloud.io import write_ply

POINTS = 1024
GRID = 32  # the digit is upsampled to GRID x GRID before ink is sampled


def extrude(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(8, 8) digit -> (POINTS, 3): ink sampled in the plane, extruded in depth, jittered and tilted."""
    from PIL import Image

    big = np.asarray(Image.fromarray((pixels * 255).astype(np.uint8)).resize((GRID, GRID), Image.BICUBIC), dtype=np.float32) / 255
    ys, xs = np.nonzero(big > 0.4)
    weights = big[ys, xs] / big[ys, xs].sum()
    pick = rng.choice(len(xs), size=POINTS, p=weights)
    x = (xs[pick] + rng.uniform(-0.5, 0.5, POINTS)) / GRID - 0.5
    y = 0.5 - (ys[pick] + rng.uniform(-0.5, 0.5, POINTS)) / GRID
    z = rng.uniform(-0.08, 0.08, POINTS)
    points = np.stack([x, y, z], axis=1) + rng.normal(0, 0.01, (POINTS, 3))
    ax, ay = rng.uniform(-0.35, 0.35, 2)  # tilt out of the plane, up to 20 degrees
    az = rng.uniform(-0.15, 0.15)  # and a little in-plane rotation (9 degrees): more turns a 6 into a 9
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return (points @ (rz @ ry @ rx).T).astype(np.float32)


def build(builder) -> None:
    builder.write_per_digit("pointcloud", ".ply", lambda path, pixels, rng: write_ply(path, extrude(pixels, rng)))
