"""The audio, video and point-cloud plugins: loaders, bad input, tokenizers and encoders."""


import numpy as np
import pytest
import soundfile as sf
import torch

from anybind import plugins
from anybind.errors import InputError
from anybind.models.space import Tower
from anybind_audio.encoder import Audio, AudioEncoder, AudioEncoderConfig, load_audio
from anybind_pointcloud.encoder import PointCloudEncoder, PointCloudEncoderConfig, farthest_point_sample
from anybind_pointcloud.io import load_points, write_ply
from anybind_video.encoder import VideoEncoder, load_video
from anybind_video.world import render_clip, write_mp4
from conftest import run_cli


def _tone(rate, seconds=0.5):
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


# -- audio ---------------------------------------------------------------------------------


def test_audio_is_resampled_to_16k_and_windowed(tmp_path):
    for rate in (8000, 22050, 44100):
        sf.write(tmp_path / f"a{rate}.wav", _tone(rate), rate)
        raw = load_audio(tmp_path / f"a{rate}.wav")
        assert raw.sample_rate == rate
        sample = AudioEncoder().preprocess(raw)
        assert sample["wave"].shape == (16000,) and int(sample["length"]) == 8000
    stereo = np.stack([_tone(16000), _tone(16000)], axis=1)
    sf.write(tmp_path / "stereo.flac", stereo, 16000)
    assert load_audio(tmp_path / "stereo.flac").samples.ndim == 1


def test_audio_encoder_tokens_and_augmentation():
    encoder = AudioEncoder()
    batch = encoder.collate([encoder.preprocess(load) for load in [_raw(0.3), _raw(1.4)]])
    assert batch["wave"].shape == (2, 16000)
    augmented = encoder.augment(batch)
    assert not torch.equal(augmented["wave"], batch["wave"])
    # heard as if recorded at 8-12 kHz: a 7 kHz tone is gone, a 1 kHz one stays
    narrow = AudioEncoder(AudioEncoderConfig(narrowband=1.0, noise_snr_db=(200.0, 200.0), speed=(1.0, 1.0)))
    t = np.arange(16000) / 16000
    both = Audio((0.2 * np.sin(2 * np.pi * 1000 * t) + 0.2 * np.sin(2 * np.pi * 7000 * t)).astype(np.float32), 16000)
    spectrum = np.abs(np.fft.rfft(narrow.augment(narrow.collate([narrow.preprocess(both)]))["wave"][0].numpy()))
    assert spectrum[6500:7500].max() < 0.02 * spectrum[500:1500].max()
    encoder.eval()
    out = encoder(**batch)
    assert out.tokens.shape == (2, 12, 128)  # 101 frames -> three 2x poolings
    assert torch.equal(encoder(**batch).tokens, out.tokens)  # deterministic in eval


def test_audio_tempo_changes_length_and_keeps_pitch():
    """A fast low voice is heard in training: the tempo changes on its own, the pitch stays."""
    from anybind_audio.encoder import time_stretch

    t = np.arange(8000) / 16000
    tone = torch.from_numpy(np.sin(2 * np.pi * 440 * t).astype(np.float32)) * torch.hann_window(8000)
    for rate in (0.75, 1.4):
        fast = time_stretch(tone, rate)
        assert len(fast) == round(8000 / rate)
        peak = np.fft.rfftfreq(len(fast), 1 / 16000)[np.abs(np.fft.rfft(fast.numpy())).argmax()]
        assert abs(peak - 440) < 5
    only_tempo = AudioEncoder(AudioEncoderConfig(tempo_share=1.0, tempo=(1.4, 1.4), speed=(1.0, 1.0), narrowband=0.0))
    batch = only_tempo.collate([only_tempo.preprocess(_raw(0.5))])
    assert int(only_tempo.augment(batch)["length"][0]) == round(int(batch["length"][0]) / 1.4)


def test_audio_is_heard_at_three_tempos_out_of_training_and_at_its_own_in_training():
    from anybind_audio.encoder import time_stretch

    torch.manual_seed(0)
    encoder = AudioEncoder(AudioEncoderConfig(test_tempos=(0.8, 1.25)))
    alone = AudioEncoder(AudioEncoderConfig(test_tempos=()))
    alone.load_state_dict(encoder.state_dict())
    batch = encoder.collate([encoder.preprocess(load) for load in [_raw(0.3), _raw(0.9)]])
    wave, width = batch["wave"], batch["wave"].shape[1]
    assert time_stretch(wave, 0.8, width).shape == wave.shape and time_stretch(wave, 1.25, width).shape == wave.shape
    encoder.eval(), alone.eval()
    heard = [alone(wave=w).summary for w in (wave, time_stretch(wave, 0.8, width), time_stretch(wave, 1.25, width))]
    assert torch.allclose(encoder(**batch).summary, torch.stack(heard).mean(0), atol=1e-5)
    assert torch.equal(encoder(**batch).tokens, alone(**batch).tokens)
    assert not torch.allclose(encoder(**batch).summary, heard[0])
    encoder.train(), alone.train()
    torch.manual_seed(1)
    trained = encoder(**batch).summary
    torch.manual_seed(1)
    assert torch.equal(trained, alone(**batch).summary)  # training hears the clip as augmented, once


def _raw(seconds):
    return Audio(_tone(16000, seconds), 16000)


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda p: p.write_bytes(b""), "empty audio file"),
        (lambda p: p.write_bytes(b"RIFF\x00\x00garbage"), "not readable audio"),
        (lambda p: sf.write(p, np.zeros(0, np.float32), 16000), "zero length"),
        (lambda p: sf.write(p, np.array([0.1, np.nan] * 100, np.float32), 16000, subtype="FLOAT"), "NaN"),
        (lambda p: sf.write(p, _tone(1000), 1000), "sample rate 1000 Hz is too low"),
    ],
)
def test_bad_audio_names_the_file(tmp_path, make, problem):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(InputError, match=rf"bad\.wav: .*{problem}"):
        load_audio(path)


def test_mp3_is_read_through_pyav(tmp_path):
    import av

    path = tmp_path / "tone.mp3"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mp3", rate=16000)
        frame = av.AudioFrame.from_ndarray(_tone(16000)[None], format="flt", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    raw = load_audio(path)
    assert raw.sample_rate == 16000 and len(raw.samples) > 6000


# -- video ---------------------------------------------------------------------------------


def test_video_round_trip_and_encoder(tmp_path):
    digit = np.zeros((8, 8), np.float32)
    digit[2:6, 3:5] = 1
    write_mp4(tmp_path / "clip.mp4", render_clip(digit, np.random.default_rng(0)))
    frames = load_video(tmp_path / "clip.mp4")
    assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8
    encoder = VideoEncoder()
    sample = encoder.preprocess(frames)
    assert sample["frames"].shape == (4, 3, 32, 32)
    assert encoder(**encoder.collate([sample, sample])).tokens.shape == (2, 4, 64)


def test_video_augment_turns_each_clip_more_from_frame_to_frame():
    from anybind_video.encoder import VideoEncoderConfig

    digit = np.zeros((8, 8), np.float32)
    digit[1:7, 3:5] = 1  # an upright bar: turning moves ink away from the middle columns
    frames = np.stack(render_clip(digit, np.random.default_rng(0)))
    still = VideoEncoder()
    batch = still.collate([still.preprocess(frames)])
    assert still.augment(batch) is batch  # off by default: towers saved before keep training as they did
    torch.manual_seed(0)
    turning = VideoEncoder(VideoEncoderConfig(turn=40.0))
    augmented = turning.augment(batch)["frames"]
    assert augmented.shape == batch["frames"].shape
    moved = (augmented - batch["frames"]).abs().flatten(2).mean(-1)[0]  # (T,): how far each frame moved
    assert moved[0] < 1e-6 < moved[-1]  # the first frame is where the turn starts


def test_video_trunk_initialises_from_the_image_trunk():
    image = Tower.create("image", 16).encoder
    video = VideoEncoder()
    video.init_from(image)
    for a, b in zip(image.trunk.state_dict().values(), video.trunk.state_dict().values()):
        assert torch.equal(a, b)


def test_bad_video_names_the_file(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.mp4: empty video file"):
        load_video(tmp_path / "empty.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    with pytest.raises(InputError, match=r"junk\.mp4: not a readable video"):
        load_video(tmp_path / "junk.mp4")
    sf.write(tmp_path / "sound.wav", _tone(16000), 16000)
    sound_as_video = tmp_path / "sound.mp4"
    sound_as_video.write_bytes((tmp_path / "sound.wav").read_bytes())
    with pytest.raises(InputError, match=r"sound\.mp4: (has no video stream|not a readable video)"):
        load_video(sound_as_video)


def test_video_with_no_frames(tmp_path):
    import av

    path = tmp_path / "noframes.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        container.start_encoding()
    with pytest.raises(InputError, match=r"noframes\.mkv: video has no frames"):
        load_video(path)


# -- point clouds ----------------------------------------------------------------------------


def _cloud(n=300, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)


def test_every_point_cloud_format_loads_the_same_points(tmp_path):
    points = _cloud()
    write_ply(tmp_path / "a.ply", points)
    np.save(tmp_path / "a.npy", points)
    np.savetxt(tmp_path / "a.xyz", points)
    (tmp_path / "a.off").write_text(f"OFF\n{len(points)} 0 0\n" + "\n".join(" ".join(map(str, p)) for p in points))
    binary = tmp_path / "b.ply"
    header = f"ply\nformat binary_little_endian 1.0\nelement vertex {len(points)}\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
    binary.write_bytes(header.encode() + points.astype("<f4").tobytes())
    for name in ("a.ply", "a.npy", "a.xyz", "a.off", "b.ply"):
        assert np.allclose(load_points(tmp_path / name), points, atol=1e-4), name


@pytest.mark.parametrize(
    "name, make, problem",
    [
        ("nan.npy", lambda p: np.save(p, np.full((100, 3), np.nan, np.float32)), "contains NaN"),
        ("three.xyz", lambda p: np.savetxt(p, _cloud(3)), "only 3 points; at least 16"),
        ("trunc.ply", lambda p: p.write_text("ply\nformat ascii 1.0\nelement vertex 100\nproperty float x\nproperty float y\nproperty float z\nend_header\n0 0 0\n"), "header promises 100 vertices"),
        ("flat.npy", lambda p: np.save(p, np.zeros(50, np.float32)), "expected an \\(N, 3\\) array"),
        ("pickle.npy", lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True), "unreadable point cloud"),
        ("empty.ply", lambda p: p.write_bytes(b""), "empty point-cloud file"),
        ("noheader.ply", lambda p: p.write_text("1 2 3\n"), "not a PLY file"),
    ],
)
def test_bad_point_clouds_name_the_file(tmp_path, name, make, problem):
    make(tmp_path / name)
    with pytest.raises(InputError, match=rf"{name.replace('.', chr(92) + '.')}: .*{problem}"):
        load_points(tmp_path / name)


def test_point_cloud_tokens_are_deterministic_and_rotation_augmented():
    encoder = PointCloudEncoder(PointCloudEncoderConfig(jitter=0.0, token_drop=0.0))
    c = encoder.config
    a, b = encoder.preprocess(_cloud()), encoder.preprocess(_cloud())
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["neighbours"].shape == (c.groups, c.group_size, 3) and a["centres"].shape == (c.groups, 3)
    batch = encoder.collate([a, a])
    rotated = encoder.augment(batch)
    # rotation and scaling keep the shape of each group up to scale
    before, after = batch["neighbours"][0].norm(dim=-1), rotated["neighbours"][0].norm(dim=-1)
    moved = before > 1e-6  # each group holds its own centre at distance 0
    ratio = after[moved] / before[moved]
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), atol=1e-4) and 0.85 <= float(ratio[0]) <= 1.15
    assert not torch.allclose(rotated["centres"], batch["centres"])
    assert encoder(**rotated).tokens.shape == (2, c.groups, c.width)


def test_point_cloud_augment_jitters_and_drops_groups():
    encoder = PointCloudEncoder(PointCloudEncoderConfig(jitter=0.1, token_drop=0.25))
    c = encoder.config
    batch = encoder.collate([encoder.preprocess(_cloud())] * 2)
    augmented = encoder.augment(batch)
    keep = c.groups - round(c.groups * 0.25)
    assert augmented["neighbours"].shape == (2, keep, c.group_size, 3) and augmented["centres"].shape == (2, keep, 3)
    assert encoder(**augmented).tokens.shape == (2, keep, c.width)
    assert encoder(**batch).tokens.shape == (2, c.groups, c.width)  # embedding (no augment) keeps every group


def test_a_partial_point_cloud_loses_one_side_and_is_recentred():
    torch.manual_seed(0)
    encoder = PointCloudEncoder(PointCloudEncoderConfig(jitter=0.0, token_drop=0.5, partial=1.0))
    batch = encoder.collate([encoder.preprocess(_cloud())] * 4)
    augmented = encoder.augment(batch)
    centres = augmented["centres"]
    assert centres.mean(1).norm(dim=-1).max() < 1e-4  # what is left is centred again
    points = augmented["neighbours"] / encoder.config.neighbour_scale + centres[:, :, None]
    assert abs(points.norm(dim=-1).flatten(1).amax(1) - 1).max() < 1e-4  # and reaches the unit sphere


def test_point_cloud_view_tokens_see_the_projected_outline():
    encoder = PointCloudEncoder(PointCloudEncoderConfig(view=8, jitter=0.0, token_drop=0.0))
    # Points in the top-left corner of the plane land in the top-left cells (y up, as drawn).
    grid = encoder.project(torch.tensor([[[-0.9, 0.9, 0.0], [-0.9, 0.9, 0.3], [0.9, -0.9, 0.0]]]))
    assert grid.shape == (1, 1, 8, 8)
    assert grid[0, 0, 0, 0] == 1.0 and grid[0, 0, 7, 7] == 0.5 and grid.sum() == 1.5  # depth is ignored
    c = encoder.config
    batch = encoder.collate([encoder.preprocess(_cloud())] * 2)
    tokens = encoder(**batch).tokens
    assert tokens.shape == (2, c.groups + (8 // 8) ** 2, c.width)  # three 2x pools: one view token
    # The spec turns view tokens on for new towers; configs saved without the key load without them.
    assert plugins.get_modality("pointcloud").config["view"] == 16 and PointCloudEncoderConfig().view == 0


def test_a_point_cloud_embeds_as_the_mean_over_its_resamplings_and_trains_on_the_first():
    torch.manual_seed(0)
    encoder = PointCloudEncoder(PointCloudEncoderConfig(jitter=0.0, token_drop=0.0, test_views=3))
    one = PointCloudEncoder(PointCloudEncoderConfig(jitter=0.0, token_drop=0.0, test_views=1))
    one.load_state_dict(encoder.state_dict())
    sample = encoder.preprocess(_cloud())
    first = one.preprocess(_cloud())
    assert sample["more_neighbours"].shape[0] == 2 and set(first) == {"neighbours", "centres"}
    assert all(torch.equal(sample[k], first[k]) for k in first)  # the first resampling is the one training reads
    assert not torch.equal(sample["more_centres"][0], sample["centres"])  # the others are other points
    batch = encoder.collate([sample] * 2)
    augmented = encoder.augment(batch)
    assert augmented.keys() == batch.keys() and torch.equal(augmented["more_centres"], batch["more_centres"])
    encoder.eval()
    pooled = encoder(**batch).pooled()
    views = [encoder(neighbours=batch["neighbours"], centres=batch["centres"]).pooled()] + [
        encoder(neighbours=batch["more_neighbours"][:, v], centres=batch["more_centres"][:, v]).pooled() for v in range(2)]
    assert torch.allclose(pooled, torch.stack(views).mean(0), atol=1e-5)
    encoder.train()
    assert torch.equal(encoder(**batch).pooled(), encoder(neighbours=batch["neighbours"], centres=batch["centres"]).pooled())


def test_farthest_point_sampling_spreads_out():
    points = torch.cat([torch.zeros(100, 3), torch.tensor([[10.0, 0, 0], [-10.0, 0, 0]])])
    chosen = farthest_point_sample(points, 3)
    assert {100, 101} <= set(chosen.tolist())
    both = farthest_point_sample(torch.stack([points, points.flip(0)]), 3)  # each cloud of a batch its own
    assert torch.equal(both[0], chosen) and {0, 1} <= set(both[1].tolist())


def test_cli_embed_names_a_bad_point_cloud(tmp_path):
    np.savetxt(tmp_path / "tiny.xyz", _cloud(3))
    proc = run_cli("embed", str(tmp_path / "tiny.xyz"))
    assert proc.returncode == 1
    assert "tiny.xyz: only 3 points" in proc.stderr and "Traceback" not in proc.stderr


def test_every_first_party_modality_is_registered():
    assert {"text", "image", "audio", "video", "pointcloud"} <= set(plugins.modalities())


def test_audio_world_holds_out_whole_voices(tmp_path):
    run_cli("world", "build", str(tmp_path), "--modality", "audio", "--small", check=True)
    from anybind.data import read_manifest

    rows = read_manifest(tmp_path).select(has=("audio",))
    voices = {split: {r["meta"]["voice"].split("+")[1] for r in rows if r["split"] == split} for split in ("train", "test")}
    assert len(voices["test"]) == 5 and len(voices["train"]) == 20
    assert not voices["train"] & voices["test"]
    assert {r["label"] for r in rows} == {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
    clip = load_audio(rows[0]["audio"])
    assert clip.sample_rate == 16000 and 0.1 < len(clip.samples) / 16000 < 1.5
