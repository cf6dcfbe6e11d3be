"""Point-cloud readers: ASCII/binary PLY, XYZ text, NumPy .npy (no pickle), OFF. Return (N, 3) float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anybind.errors import InputError

MIN_POINTS = 16
#: More points are refused before they are read (a dense scan has a few million).
MAX_POINTS = 5_000_000
MAX_BYTES = 1 << 30
_PLY_TYPES = {"float": "f4", "float32": "f4", "double": "f8", "float64": "f8", "uchar": "u1", "uint8": "u1",
              "char": "i1", "int8": "i1", "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
              "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4"}


def _read_ply(path: Path) -> np.ndarray:
    data = path.read_bytes()
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise InputError(path, "not a PLY file (missing 'ply' magic or 'end_header')")
    header = data[:end].decode("ascii", errors="replace").splitlines()
    body = data[data.index(b"\n", end) + 1 :]
    fmt = next((l.split()[1] for l in header if l.startswith("format")), None)
    count, props, in_vertex = 0, [], False
    for line in header:
        parts = line.split()
        if parts[:1] == ["element"]:
            in_vertex = parts[1] == "vertex"
            if in_vertex:
                count = int(parts[2])
                if not 0 <= count <= MAX_POINTS:
                    raise InputError(path, f"header promises {count} vertices; at most {MAX_POINTS:,} are read")
        elif parts[:1] == ["property"] and in_vertex:
            if parts[1] == "list":
                raise InputError(path, "list properties on vertices are not supported")
            props.append((parts[2], _PLY_TYPES.get(parts[1], "f4")))
    names = [p[0] for p in props]
    if not {"x", "y", "z"} <= set(names):
        raise InputError(path, "PLY vertices have no x, y, z properties")
    if fmt == "ascii":
        rows = [r for r in body.decode("ascii", errors="replace").split("\n") if r.strip()][:count]
        if len(rows) < count:
            raise InputError(path, f"header promises {count} vertices, file has {len(rows)} (truncated?)")
        try:
            table = np.array([[float(v) for v in r.split()[: len(props)]] for r in rows], dtype=np.float64)
        except ValueError:
            raise InputError(path, "malformed ASCII vertex rows") from None
        if table.shape != (count, len(props)):
            raise InputError(path, f"header promises {count} vertices, file has {len(table)} (truncated?)")
        return table[:, [names.index(a) for a in "xyz"]].astype(np.float32)
    if fmt in ("binary_little_endian", "binary_big_endian"):
        order = "<" if fmt == "binary_little_endian" else ">"
        dtype = np.dtype([(n, order + t) for n, t in props])
        if len(body) < count * dtype.itemsize:
            raise InputError(path, f"truncated: header promises {count} vertices")
        table = np.frombuffer(body, dtype=dtype, count=count)
        return np.stack([table[a] for a in "xyz"], axis=1).astype(np.float32)
    raise InputError(path, f"unsupported PLY format {fmt!r}")


def _read_off(path: Path) -> np.ndarray:
    tokens = path.read_text(errors="replace").split()
    if not tokens or not tokens[0].startswith("OFF"):
        raise InputError(path, "not an OFF file (missing 'OFF' header)")
    rest = tokens[1:] if tokens[0] == "OFF" else [tokens[0][3:], *tokens[1:]]
    try:
        n = int(rest[0])
        if n > MAX_POINTS:
            raise InputError(path, f"header promises {n} vertices; at most {MAX_POINTS:,} are read")
        return np.array(rest[3 : 3 + 3 * n], dtype=np.float32).reshape(n, 3)
    except (ValueError, IndexError):
        raise InputError(path, "malformed OFF vertex list") from None


def load_points(path) -> np.ndarray:
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise InputError(path, "empty point-cloud file")
    if size > MAX_BYTES:
        raise InputError(path, f"{size / 2**30:.1f} GiB; point clouds of at most {MAX_BYTES >> 30} GiB are read")
    suffix = path.suffix.lower()
    try:
        if suffix == ".ply":
            points = _read_ply(path)
        elif suffix == ".off":
            points = _read_off(path)
        elif suffix == ".npy":
            points = np.load(path, allow_pickle=False, mmap_mode="r")  # the shape first, the data once it fits
            if points.size > 3 * MAX_POINTS:
                raise InputError(path, f"array of shape {points.shape}; at most {MAX_POINTS:,} points are read")
        else:  # .xyz: one "x y z [...]" row per point
            points = np.loadtxt(path, dtype=np.float32, ndmin=2)[:, :3]
    except InputError:
        raise
    except (ValueError, OSError, UnicodeDecodeError, IndexError, TypeError, EOFError) as exc:
        raise InputError(path, f"unreadable point cloud ({exc})") from None
    points = np.asarray(points, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] < 3:
        raise InputError(path, f"expected an (N, 3) array of points, got shape {points.shape}")
    points = points[:, :3]
    if not np.isfinite(points).all():
        raise InputError(path, f"contains NaN or infinite coordinates ({int((~np.isfinite(points)).any(1).sum())} points)")
    if len(points) < MIN_POINTS:
        raise InputError(path, f"only {len(points)} points; at least {MIN_POINTS} are needed")
    return points


def write_ply(path, points: np.ndarray) -> None:
    lines = ["ply", "format ascii 1.0", f"element vertex {len(points)}", "property float x", "property float y",
             "property float z", "end_header"]
    lines += [f"{x:.4f} {y:.4f} {z:.4f}" for x, y, z in points]
    Path(path).write_text("\n".join(lines) + "\n")
