"""The point-cloud part of the sample world: each digit's strokes extruded to 3-D, as .ply.

In the ``ood`` variant the clouds are scanned differently: 300-3000 points, more noise, and a
partial view (a random side cut away), written as .ply, .xyz or .npy.
"""

from __future__ import annotations

import numpy as np

from anybind_pointcloud.io import write_ply

POINTS = 1024
GRID = 32  # the digit is upsampled to GRID x GRID before ink is sampled


def extrude(pixels: np.ndarray, rng: np.random.Generator, points: int = POINTS, noise: float = 0.01) -> np.ndarray:
    """(8, 8) digit -> (POINTS, 3): ink sampled in the plane, extruded in depth, jittered and tilted."""
    from PIL import Image

    big = np.asarray(Image.fromarray((pixels * 255).astype(np.uint8)).resize((GRID, GRID), Image.BICUBIC), dtype=np.float32) / 255
    ys, xs = np.nonzero(big > 0.4)
    weights = big[ys, xs] / big[ys, xs].sum()
    pick = rng.choice(len(xs), size=points, p=weights)
    x = (xs[pick] + rng.uniform(-0.5, 0.5, points)) / GRID - 0.5
    y = 0.5 - (ys[pick] + rng.uniform(-0.5, 0.5, points)) / GRID
    z = rng.uniform(-0.08, 0.08, points)
    points = np.stack([x, y, z], axis=1) + rng.normal(0, noise, (points, 3))
    ax, ay = rng.uniform(-0.35, 0.35, 2)  # tilt out of the plane, up to 20 degrees
    az = rng.uniform(-0.15, 0.15)  # and a little in-plane rotation (9 degrees): more turns a 6 into a 9
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return (points @ (rz @ ry @ rx).T).astype(np.float32)


def partial_scan(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A sparser, noisier cloud with one side cut away (a scan from one direction)."""
    cloud = extrude(pixels, rng, points=int(rng.integers(400, 3001)), noise=float(rng.uniform(0.01, 0.025)))
    direction = rng.normal(size=3)
    direction[2] = 0
    direction /= np.linalg.norm(direction) + 1e-9
    along = cloud @ direction
    keep = along <= np.quantile(along, rng.uniform(0.75, 0.92))
    return cloud[keep]


def build(builder) -> None:
    if builder.variant != "ood":
        builder.write_per_digit("pointcloud", ".ply", lambda path, pixels, rng: write_ply(path, extrude(pixels, rng)))
        return
    for i in range(len(builder.digits)):
        cloud = partial_scan(builder.digits.images[i], builder.np_rng)
        suffix = (".ply", ".xyz", ".npy")[i % 3]
        path = builder.path("pointcloud", f"d{i:05d}{suffix}")
        if suffix == ".ply":
            write_ply(path, cloud)
        elif suffix == ".xyz":
            np.savetxt(path, cloud, fmt="%.4f")
        else:
            np.save(path, cloud)
        builder.attach(i, "pointcloud", path)
