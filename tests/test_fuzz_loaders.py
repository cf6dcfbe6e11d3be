"""Fuzzed loaders: every modality's loader, fed real files mutated at random (truncated, bytes
flipped, another format's header, emptied), either reads them or raises an InputError that
names the file: never another exception, never a hang. Inputs too large to read whole are
cut or refused before they are read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anybind import plugins
from anybind.errors import InputError

HEADERS = [b"\x89PNG\r\n\x1a\n", b"RIFF\x24\x00\x00\x00WAVEfmt ", b"fLaC", b"OggS", b"ply\nformat ascii 1.0\n",
           b"\x00\x00\x00\x18ftypmp42", b"OFF\n", b"\x93NUMPY\x01\x00"]
FILE_MODALITIES = sorted(m for m, s in plugins.modalities().items() if s.reads_files and m != "text")


@st.composite
def mutations(draw):
    kind = draw(st.sampled_from(["truncate", "flip", "header", "empty", "append"]))
    return kind, draw(st.integers(0, 2**31)), draw(st.integers(1, 64)), draw(st.sampled_from(HEADERS))


def mutate(data: bytes, kind: str, seed: int, count: int, header: bytes) -> bytes:
    rng = np.random.default_rng(seed)
    if kind == "empty":
        return b""
    if kind == "truncate":
        return data[: int(rng.integers(0, max(1, len(data))))]
    if kind == "header":
        return header + data[len(header):]
    if kind == "append":
        return data + rng.bytes(count * 16)
    buf = bytearray(data)
    for position in rng.integers(0, len(buf), count):
        buf[position] ^= int(rng.integers(1, 256))
    return bytes(buf)


@pytest.mark.parametrize("modality", FILE_MODALITIES)
def test_a_mutated_file_is_read_or_named_in_an_input_error(modality, every_world, tmp_path):
    spec = plugins.get_modality(modality)
    source = Path(every_world.select(has=(modality,))[0][modality])
    original = source.read_bytes()

    @settings(max_examples=40, deadline=5000, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(mutations())
    def check(mutation):
        path = tmp_path / f"fuzzed{source.suffix}"
        path.write_bytes(mutate(original, *mutation))
        try:
            spec.load(path)
        except InputError as exc:
            assert str(path) in str(exc), exc

    check()


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels, with almost no pixel data."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b""))
    return path


def test_a_huge_image_header_is_refused_before_decoding(tmp_path):
    load = plugins.get_modality("image").load
    with pytest.raises(InputError, match=r"big\.png: image is 8000x8000"):  # under Pillow's own limit, over ours
        load(_png_header_only(tmp_path / "big.png", 8000, 8000))
    with pytest.raises(InputError, match=r"bomb\.png: image is too large"):  # 10.8 GB decoded: Pillow refuses it
        load(_png_header_only(tmp_path / "bomb.png", 60000, 60000))


def test_a_two_hour_recording_is_cut_not_read_whole(tmp_path):
    import soundfile as sf

    from anybind_audio.encoder import MAX_SECONDS

    path, rate = tmp_path / "long.wav", 8000
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as f:
        block = (np.sin(np.arange(rate * 60) / 5) * 0.1).astype(np.float32)
        for _ in range(120):  # two hours, a minute at a time
            f.write(block)
    assert path.stat().st_size > 100_000_000
    audio = plugins.get_modality("audio").load(path)
    assert len(audio.samples) == rate * MAX_SECONDS


def test_a_long_large_video_is_cut_and_downscaled_while_decoding(tmp_path):
    import av

    from anybind_video.encoder import MAX_FRAMES, MAX_SIDE

    path = tmp_path / "long.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        frame = av.VideoFrame.from_ndarray(np.zeros((720, 1280, 3), np.uint8), format="rgb24")
        for _ in range(MAX_FRAMES + 40):
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    frames = plugins.get_modality("video").load(path)
    assert frames.shape == (MAX_FRAMES, MAX_SIDE * 720 // 1280, MAX_SIDE, 3)


def test_a_point_cloud_promising_a_billion_points_is_refused(tmp_path):
    path = tmp_path / "huge.ply"
    path.write_text("ply\nformat binary_little_endian 1.0\nelement vertex 1000000000\nproperty float x\n"
                    "property float y\nproperty float z\nend_header\n")
    with pytest.raises(InputError, match=r"huge\.ply: header promises 1000000000 vertices"):
        plugins.get_modality("pointcloud").load(path)
    array = tmp_path / "huge.npy"
    np.lib.format.open_memmap(array, mode="w+", dtype=np.float32, shape=(6_000_000, 3)).flush()
    with pytest.raises(InputError, match=r"huge\.npy: array of shape"):
        plugins.get_modality("pointcloud").load(array)
