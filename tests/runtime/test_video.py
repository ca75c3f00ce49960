"""`toonify-fast video`: the shared clip end to end (frame count, timing, audio, crop jitter),
trimming, other containers, frame folders, every kind of bad input, and interrupted runs."""
import json
import math
import threading
import time
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from runtime.cli import main
from runtime.common import ToonifyError
from runtime.engine import Toonifier, physical_cores
from runtime.faces import FaceAligner
from runtime.tracking import params_quad
from runtime.video import (FrameStats, VideoConfig, convert_video, crop_track, default_output, run_stages,
                           smoothing_name)
from runtime.videoio import FolderReader, FolderWriter, Frame, VideoError, VideoReader, VideoWriter
from runtime.stability import against_truth, codec_drift, moving_face_clip
from tests.helpers import build_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    # Inverts colours exactly, so a converted face is easy to tell from a passed-through one.
    return build_model(tmp_path_factory.mktemp("model") / "invert64.onnx", "invert", resolution=64, size_multiple=4)


@pytest.fixture(scope="module")
def clip(photos_dir):
    return photos_dir / "short_hamilton_clip.mp4"


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, clip, model):
    """The whole shared clip, offline smoothing, paste-back, with a report (about 10 s)."""
    folder = tmp_path_factory.mktemp("full")
    report = convert_video(VideoConfig(clip, folder / "toon.mp4", model, provider="cpu",
                                       report=folder / "report.json"))
    return folder / "toon.mp4", report, json.loads((folder / "report.json").read_text())


def video_times(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [float(f.pts * s.time_base) for f in c.decode(s)]


def audio_packets(path):
    with av.open(str(path)) as c:
        return [(float(p.pts * p.time_base), bytes(p)) for p in c.demux(c.streams.audio[0]) if p.size]


def files(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file())


def frames_rgb(path, indices):
    with av.open(str(path)) as c:
        return {i: f.to_ndarray(format="rgb24") for i, f in enumerate(c.decode(video=0)) if i in indices}


def test_full_clip_keeps_frame_count_timing_and_audio(full_run, clip):
    out, report, _ = full_run
    with av.open(str(clip)) as a, av.open(str(out)) as b:
        va, vb = a.streams.video[0], b.streams.video[0]
        assert vb.codec_context.name == "h264" and (vb.width, vb.height) == (640, 360)
        assert vb.frames == va.frames == 275
        assert vb.average_rate == va.average_rate == Fraction(2997, 100)
        assert vb.time_base == va.time_base
        assert float(vb.duration * vb.time_base) == pytest.approx(float(va.duration * va.time_base), abs=1e-6)
        assert b.streams.audio[0].codec_context.name == "aac"
    assert video_times(out) == video_times(clip)
    original = audio_packets(clip)
    assert len(original) == 431 and audio_packets(out) == original      # copied byte for byte, same times
    assert report["frames"] == len(report["faces_per_frame"]) == 275


def test_faces_are_converted_and_frames_without_faces_pass_through(full_run, clip):
    out, report, _ = full_run
    faces = report["faces_per_frame"]
    assert sum(n > 0 for n in faces) > 150 and max(faces) >= 1
    face_frame, empty_frame = faces.index(1, 140), faces.index(0, 40)
    before, after = frames_rgb(clip, {face_frame, empty_frame}), frames_rgb(out, {face_frame, empty_frame})
    # No face: the same picture up to H.264 at crf 18.
    assert np.abs(after[empty_frame].astype(int) - before[empty_frame]).mean() < 2
    # A face: inside its detector box the colours are inverted (blurred by the 64 px model crop).
    left, top, right, bottom = FaceAligner().detect(before[face_frame])[0].box
    h, w = (bottom - top) // 4, (right - left) // 4
    inner = np.s_[top + h:bottom - h, left + w:right - w]
    assert after[face_frame][inner].mean() == pytest.approx(255 - before[face_frame][inner].mean(), abs=8)
    outside = np.s_[:, right + 60:]
    assert np.abs(after[face_frame][outside].astype(int) - before[face_frame][outside]).mean() < 2


def test_smoothing_cuts_crop_jitter_on_the_shared_clip(full_run):
    _, report, written = full_run
    assert written == json.loads(json.dumps(report))
    motion = written["crop_motion"]
    reduction = motion["reduction"]
    # The crop jitter a viewer sees, the face sliding within its crop (measured from pixels, by the
    # measurement smoothing follows, whose own error against a known path is 0.01% of the crop side
    # a frame: the moving-face test below), and the crop scale's frame-to-frame change: both cut
    # >= 3x (4.3x, 6.6x). The crop centre's own frame-to-frame change stays: it is the dancer
    # moving, which the crop must follow (bench/video.py: a Gaussian that does not follow it cuts
    # that change but lets the face slide 4x more within the crop than no smoothing at all).
    assert reduction["slip"] >= 3 and reduction["change_scale"] >= 3
    assert 0.9 < reduction["change_centre"] < 1.2
    assert motion["raw"]["slip"] > 0.003                       # dlib's landmarks wobble ~0.4% of the crop side
    # The price: the smoothed crop centre stays within 1% of the crop side of the raw one on average.
    assert 0 < motion["smoothing_offset"]["mean"] < 0.01
    assert written["face_motion"]["measured"] > 0.9 * sum(written["faces_per_frame"])
    # Why: the face itself moves 2.3% of the crop side a frame (measured from its pixels), 97% of
    # the raw crop centre's 2.34%. A crop that changed a third as much would let it slide >= 1.5%.
    assert written["face_motion"]["per_frame"] == pytest.approx(motion["raw"]["change_centre"], rel=0.1)
    change = written["face_region_change"]
    assert change["input"] > 0 and change["output"] > 0
    assert written["smoothing"] == "gaussian sigma=6.0 frames, guided by the face's measured motion" and written["mode"] == "paste"


def test_smoothing_cuts_a_still_faces_crop_change_3x(tmp_path, photos_dir, model):
    # A face that does not move (a photo on a tripod: sensor noise and H.264 on every frame): all
    # the crop's frame-to-frame change is the landmarks' wobble, and smoothing cuts it >= 3x.
    path = tmp_path / "still.mp4"
    moving_face_clip(path, photos_dir / "obama.jpg", photos_dir / "dogs.jpg", frames=40, moves=False)
    report = convert_video(VideoConfig(path, tmp_path / "toon.mp4", model, provider="cpu", report=tmp_path / "r.json"))
    assert sum(report["faces_per_frame"]) == 40
    motion = report["crop_motion"]
    assert motion["raw"]["change_centre"] > 1e-4 and report["face_motion"]["per_frame"] < 1e-4
    assert motion["reduction"]["change_centre"] >= 3 and motion["reduction"]["change_scale"] >= 3


def test_smoothing_follows_a_moving_face_and_cuts_its_crop_jitter(tmp_path, photos_dir, model):
    # A face swaying and nodding along a known path (3.5% of the crop side a frame), encoded
    # losslessly so that the path is exactly where the face is: the crop is judged against the
    # truth, its jitter being its frame-to-frame change less the face's own step.
    path = tmp_path / "moving.mp4"
    truth = moving_face_clip(path, photos_dir / "obama.jpg", photos_dir / "dogs.jpg", frames=60, crf=0)
    ways = {"raw": {"sigma": 0, "guided": False}, "guided": {}, "plain": {"guided": False}}
    measured = {name: against_truth(crop_track(VideoConfig(path, tmp_path / "out.mp4", model, **kw)), truth)
                for name, kw in ways.items()}
    raw, guided, plain = measured["raw"], measured["guided"], measured["plain"]
    # The default (guided, sigma 6) follows the face: its centre jitters 24x less than the
    # landmarks' crop, its scale 60x less, and it stays 5x closer to the face's path.
    assert guided["jitter_centre"] < raw["jitter_centre"] / 10 and guided["jitter_scale"] < raw["jitter_scale"] / 20
    assert guided["offset"] < raw["offset"] / 3
    # The same Gaussian not guided lags the swaying face: 19x the raw crop's jitter, 57x its offset.
    assert plain["jitter_centre"] > 10 * raw["jitter_centre"] and plain["offset"] > 20 * raw["offset"]


def test_what_smoothing_leaves_of_a_compressed_moving_face_is_the_codecs(tmp_path, photos_dir, model):
    # At crf 23, H.264's quarter-pixel motion compensation moves the decoded face off the rendered
    # path a little on every frame. The guided crop follows the decoded face, so against the path
    # it is charged exactly that (measured: 0.0602% and 0.0602% of the crop side a frame), still
    # 2.9x below the landmarks' crop.
    path = tmp_path / "moving23.mp4"
    face, background = photos_dir / "obama.jpg", photos_dir / "dogs.jpg"
    truth = moving_face_clip(path, face, background, frames=60, crf=23)
    raw = crop_track(VideoConfig(path, tmp_path / "out.mp4", model, sigma=0, guided=False))
    guided = against_truth(crop_track(VideoConfig(path, tmp_path / "out.mp4", model)), truth)["jitter_centre"]
    assert guided == pytest.approx(codec_drift(path, face, background, truth, raw), rel=0.1)
    assert against_truth(raw, truth)["jitter_centre"] > 2.5 * guided


def test_report_counts_detections_and_setup(full_run):
    _, report, _ = full_run
    # Two single-threaded runs at once on the 2-core machine; dlib's and the ONNX model's loading is setup.
    assert report["inference_runs_at_once"] == physical_cores() and report["threads_per_run"] == 1
    assert 0 < report["setup_seconds"] < report["seconds"]
    # Coarse detections every 5 frames while a face is followed, every 3 while none is: far fewer
    # than frames, and the costly whole-frame fine ones rarer still.
    detections = report["detections"]
    assert 40 < detections["coarse"] < 100 and 0 < detections["fine"] < 12 and detections["fine_local"] < 12


class ListSink:
    def __init__(self):
        self.written = []

    def write(self, frame, image, alpha=None):
        self.written.append((frame.index, image))


def test_concurrent_runs_keep_frames_and_faces_in_order(tmp_path, monkeypatch):
    toonifier = Toonifier(build_model(tmp_path / "m.onnx", "invert", resolution=32), "cpu", threads=1, batch_size=3)
    run, delays = Toonifier.run, iter(np.random.default_rng(0).uniform(0, 0.02, 100))
    monkeypatch.setattr(Toonifier, "run", lambda self, crops: time.sleep(next(delays)) or run(self, crops))
    # Frame i is flat grey 10 i with i % 3 faces (squares centred at x = 20, 64, 108): batches of
    # 3 crops straddle frames, and the runs finish in random order.
    centres = (20, 64, 108)
    quads = [params_quad(np.array([x, 32.0, math.log(12), 0])) for x in centres]
    frames = [(Frame(i, np.full((64, 128, 3), 10 * i, np.uint8)), quads[:i % 3]) for i in range(20)]
    sink = ListSink()
    run_stages(iter(frames), toonifier, 4, sink, FrameStats(measure=False), False, lambda: None)
    assert [index for index, _ in sink.written] == list(range(20))
    for i, out in sink.written:
        assert [out[32, x, 0] for x in centres] == [255 - 10 * i if k < i % 3 else 10 * i for k in range(3)]


def test_cli_live_crop_to_webm_reencodes_audio(tmp_path, clip, model, capsys):
    out, report = tmp_path / "face.webm", tmp_path / "live.json"
    with pytest.raises(SystemExit) as exit_:
        main(["video", str(clip), "-o", str(out), "-m", str(model), "--provider", "cpu", "--live", "--no-guide", "--crop",
              "--max-frames", "30", "--codec", "libvpx-vp9", "--crf", "40", "--report", str(report)])
    assert exit_.value.code == 0
    assert "re-encoding it as libopus" in capsys.readouterr().err
    with av.open(str(out)) as c:
        v = c.streams.video[0]
        assert (v.codec_context.name, v.width, v.height) == ("vp9", 64, 64)
        assert c.streams.audio[0].codec_context.name == "opus"
    times = video_times(out)
    assert len(times) == 30 and np.diff(times) == pytest.approx(100 / 2997, abs=1e-3)
    # The audio stops with the last frame (give or take one 20 ms Opus packet).
    assert audio_packets(out)[-1][0] == pytest.approx(times[-1] + 100 / 2997, abs=0.025)
    data = json.loads(report.read_text())
    assert data["smoothing"] == "one-euro (causal)" and data["face_motion"] is None
    assert data["mode"] == "crop" and data["frames"] == 30


def test_live_smoothing_is_guided_by_default(tmp_path, clip, model):
    report = tmp_path / "live.json"
    convert_video(VideoConfig(clip, tmp_path / "live.mp4", model, provider="cpu", live=True, start=3.5,
                              max_frames=40, report=report))
    data = json.loads(report.read_text())
    assert data["smoothing"] == "one-euro (causal), guided by the face's measured motion"
    faces = sum(data["faces_per_frame"])
    assert faces > 30 and data["face_motion"]["measured"] + data["face_motion"]["from_landmarks"] == faces - 1
    motion = data["crop_motion"]
    assert motion["smoothed"]["slip"] < motion["raw"]["slip"]         # the face slides less within its crop
    assert motion["smoothing_offset"]["mean"] < 0.01


def test_cli_sigma_zero_turns_smoothing_off(tmp_path, clip, model):
    report = tmp_path / "raw.json"
    with pytest.raises(SystemExit) as exit_:
        main(["video", str(clip), "-o", str(tmp_path / "raw.mp4"), "-m", str(model), "--provider", "cpu",
              "--sigma", "0", "--no-guide", "--start", "3.5", "--max-frames", "20", "--report", str(report)])
    assert exit_.value.code == 0
    data = json.loads(report.read_text())
    assert data["smoothing"] == "none (--sigma 0)"
    assert data["crop_motion"]["smoothed"] == data["crop_motion"]["raw"]
    assert data["crop_motion"]["smoothing_offset"]["max"] == 0


def test_start_and_end_trim_video_and_audio_alike(tmp_path, clip, model):
    out = tmp_path / "part.mov"
    convert_video(VideoConfig(clip, out, model, provider="cpu", start=4.0, end=5.0))
    with av.open(str(clip)) as c:
        origin = c.start_time / av.time_base
    # Both streams shift by the same 4 s; MOV stores a stream's start delay in whole milliseconds.
    wanted = [t - origin - 4 for t in video_times(clip) if 4 <= t - origin < 5]
    assert video_times(out) == pytest.approx(wanted, abs=1e-3) and len(wanted) == 30
    original = [(t - origin - 4, data) for t, data in audio_packets(clip) if 4 <= t - origin < 5]
    got = audio_packets(out)
    assert [d for _, d in got] == [d for _, d in original] and len(got) == 43
    assert [t for t, _ in got] == pytest.approx([t for t, _ in original], abs=1e-3)


def test_frame_folder_keeps_names_count_and_alpha(tmp_path, clip, model, capsys):
    frames, out = tmp_path / "frames", tmp_path / "toon"
    frames.mkdir()
    names = []
    for i, rgb in frames_rgb(clip, set(range(140, 146))).items():
        name = f"shot_{i - 132}" + (".jpg" if i == 141 else ".png")      # shot_8 ... shot_13
        if i == 142:
            rgba = np.dstack([rgb, np.tile(np.arange(640) % 256, (360, 1)).astype(np.uint8)])
            Image.fromarray(rgba).save(frames / name)
        else:
            Image.fromarray(rgb).save(frames / name)
        names.append(name)
    (frames / "notes.txt").write_text("not a frame")
    (frames / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert [p.name for p in FolderReader(frames).paths] == ["broken.png"] + names    # shot_9 before shot_10
    report = convert_video(VideoConfig(frames, out, model, provider="cpu"))
    err = capsys.readouterr().err
    assert "notes.txt" in err and "broken.png" in err
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    assert report["frames"] == 6 and sum(report["faces_per_frame"]) >= 5
    with Image.open(frames / "shot_10.png") as a, Image.open(out / "shot_10.png") as b:
        assert b.mode == "RGBA" and np.array_equal(np.asarray(a)[..., 3], np.asarray(b)[..., 3])
        assert not np.array_equal(np.asarray(a)[..., :3], np.asarray(b)[..., :3])


def test_video_to_a_folder_of_numbered_frames(tmp_path, clip, model):
    # 2 s in there is no face: the frames pass through, and PNG keeps them exactly.
    report = convert_video(VideoConfig(clip, tmp_path / "frames", model, provider="cpu", start=2.0, max_frames=3))
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["000000.png", "000001.png", "000002.png"]
    assert report["faces_per_frame"] == [0, 0, 0]
    with av.open(str(clip)) as c:
        origin = c.start_time / av.time_base
    first = next(i for i, t in enumerate(video_times(clip)) if t - origin >= 2.0)
    with Image.open(tmp_path / "frames" / "000000.png") as im:
        assert np.array_equal(np.asarray(im), frames_rgb(clip, {first})[first])


def test_odd_frame_size_is_padded_to_even(tmp_path, model, capsys):
    odd = tmp_path / "odd.mkv"
    pictures = [np.random.default_rng(i).integers(0, 256, (49, 67, 3), np.uint8) for i in range(5)]
    with av.open(str(odd), "w") as c:
        s = c.add_stream("ffv1", rate=25)
        s.width, s.height = 67, 49
        for p in pictures:
            c.mux(s.encode(av.VideoFrame.from_ndarray(p, format="rgb24")))
        c.mux(s.encode(None))
    out = tmp_path / "odd.mp4"
    convert_video(VideoConfig(odd, out, model, provider="cpu"))
    assert "67x49 frames; libx264 needs even sizes, so the output is 68x50" in capsys.readouterr().err
    got = frames_rgb(out, set(range(5)))
    assert len(got) == 5 and got[0].shape == (50, 68, 3)
    assert video_times(out) == pytest.approx([i / 25 for i in range(5)])


def write_mkv(path, times_ms):
    """A 64x48 FFV1 clip with frames at these times (ms): any frame rate, or none."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=25)
        s.width, s.height = 64, 48
        s.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 30 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            c.mux(s.encode(frame))
        c.mux(s.encode(None))


def test_variable_frame_rate_keeps_every_timestamp(tmp_path, model):
    times_ms = [0, 40, 50, 120, 200, 210, 400]
    write_mkv(tmp_path / "vfr.mkv", times_ms)
    assert video_times(tmp_path / "vfr.mkv") == pytest.approx([t / 1000 for t in times_ms])
    convert_video(VideoConfig(tmp_path / "vfr.mkv", tmp_path / "vfr.mp4", model, provider="cpu"))
    assert video_times(tmp_path / "vfr.mp4") == pytest.approx([t / 1000 for t in times_ms], abs=1e-6)
    # A broken input repeating a timestamp keeps all its frames, the repeat nudged by one tick.
    write_mkv(tmp_path / "repeat.mkv", [0, 40, 40, 80])
    convert_video(VideoConfig(tmp_path / "repeat.mkv", tmp_path / "repeat.mp4", model, provider="cpu"))
    assert video_times(tmp_path / "repeat.mp4") == pytest.approx([0, 0.04, 0.041, 0.08], abs=1e-6)


def test_truncated_stream_converts_the_readable_part_and_says_so(tmp_path, clip, model, capsys):
    # A "fast start" MP4 (index first) cut short: FFmpeg can open it and decodes until the cut.
    whole, cut = tmp_path / "faststart.mp4", tmp_path / "cut.mp4"
    with av.open(str(clip)) as src, av.open(str(whole), "w", options={"movflags": "+faststart"}) as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                dst.mux(packet)
    cut.write_bytes(whole.read_bytes()[:120_000])
    out = tmp_path / "out.mp4"
    report = convert_video(VideoConfig(cut, out, model, provider="cpu"))
    err = " ".join(capsys.readouterr().err.split())
    n = report["frames"]
    assert 0 < n < 275 and f"the video stream ends after {n} of the 275 frames its header announces" in err
    assert len(video_times(out)) == n


def empty_avi(path):
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=30)
        s.width, s.height = 64, 64
        c.start_encoding()


def audio_only(path):
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=44100)
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, i * 1024
            c.mux(s.encode(frame))
        c.mux(s.encode(None))


def bad_input(case, folder, clip):
    """The input file or folder for one case of BAD_INPUTS."""
    path = folder / {"missing": "nope.mp4", "not_a_video": "notes.mp4", "output_is_input": "notes.mp4",
                     "truncated_without_index": "cut.mp4", "no_video_stream": "sound.m4a",
                     "zero_frames": "empty.avi"}.get(case, "frames")
    if case in ("not_a_video", "output_is_input"):
        path.write_text("hello")
    elif case == "truncated_without_index":     # the clip's index (moov) is at its end: cut off
        path.write_bytes(clip.read_bytes()[:300_000])
    elif case == "no_video_stream":
        audio_only(path)
    elif case == "zero_frames":
        empty_avi(path)
    elif case in ("folder_without_images", "folder_to_video"):
        path.mkdir()
        (path / "notes.txt").write_text("not a frame")
    elif case != "missing":
        return clip
    return path


BAD_INPUTS = {
    # case: (output name, VideoConfig options, message, which path the error names)
    "missing": ("out.mp4", {}, "no such file or folder", "in"),
    "not_a_video": ("out.mp4", {}, "not a video FFmpeg can read", "in"),
    "truncated_without_index": ("out.mp4", {}, "not a video FFmpeg can read", "in"),
    "no_video_stream": ("out.mp4", {}, "has no video stream", "in"),
    "zero_frames": ("out.mp4", {}, "no frames to convert", "in"),
    "start_after_the_end": ("out.mp4", {"start": 20.0}, "no frames to convert between --start and --end", "in"),
    "end_before_start": ("out.mp4", {"start": 3.0, "end": 2.0}, "--end 2.0 is not after --start 3.0", None),
    "folder_without_images": ("out", {}, "no image files in this folder", "in"),
    "folder_to_video": ("out.mp4", {}, "a folder of frames converts to a folder of frames", "out"),
    "output_folder_not_empty": ("full", {}, "the output folder exists and is not empty", "out"),
    "unknown_codec": ("out.mp4", {"codec": "nope", "max_frames": 2}, "unknown video encoder 'nope'", None),
    "unknown_container": ("out.zzz", {"max_frames": 2}, "cannot write a video with this extension", "out"),
    "output_is_input": ("../notes.mp4", {}, "the output would overwrite the input", "out"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, clip, model, case):
    out_name, options, message, names = BAD_INPUTS[case]
    source = bad_input(case, tmp_path, clip)
    out = tmp_path / "outputs" / out_name
    if case == "output_folder_not_empty":
        out.mkdir(parents=True)
        (out / "keep.png").write_bytes(b"mine")
    before = files(tmp_path)
    with pytest.raises(ToonifyError) as error:          # VideoError, or UsageError (exit 2) for bad options
        convert_video(VideoConfig(source, out, model, provider="cpu", **options))
    assert message in str(error.value)
    assert error.value.path == {"in": str(source), "out": str(out), None: None}[names]
    assert files(tmp_path) == before                      # no output, no partial file left behind


def test_cli_reports_bad_input_without_traceback(tmp_path, model, capsys):
    (tmp_path / "notes.mp4").write_text("hello")
    with pytest.raises(SystemExit) as exit_:
        main(["video", str(tmp_path / "notes.mp4"), "-m", str(model)])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "error:" in err and "not a video FFmpeg can read" in err
    assert "Traceback" not in err and not default_output(tmp_path / "notes.mp4").exists()


@pytest.mark.parametrize("where", ["inference", "encoder", "folder"])
def test_interrupted_run_leaves_no_output(tmp_path, clip, model, monkeypatch, where):
    calls = {"n": 0}

    def fail_on_third(real, error):
        def patched(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 3:
                raise error
            return real(*args, **kwargs)
        return patched

    if where == "inference":       # Ctrl-C while the model runs
        monkeypatch.setattr(Toonifier, "run", fail_on_third(Toonifier.run, KeyboardInterrupt()))
    elif where == "encoder":       # a crash in the encoding thread
        monkeypatch.setattr(VideoWriter, "write", fail_on_third(VideoWriter.write, OSError("disk full")))
    else:
        monkeypatch.setattr(FolderWriter, "write", fail_on_third(FolderWriter.write, OSError("disk full")))
    out = tmp_path / "out" / ("frames" if where == "folder" else "toon.mp4")
    with pytest.raises(KeyboardInterrupt if where == "inference" else OSError):
        convert_video(VideoConfig(clip, out, model, provider="cpu", start=4.0, max_frames=20, live=True))
    # The failing call stops the run; runs already under way beside an inference run may finish.
    assert calls["n"] == 3 if where != "inference" else calls["n"] >= 3
    assert list((tmp_path / "out").iterdir()) == []          # nothing, not even a .partial file
    assert not [t for t in threading.enumerate() if t.name.startswith("toonify-video")]   # all stopped


def test_a_part_of_a_video_knows_about_how_many_frames_it_has(clip):
    """The progress bar's total with --start/--end (it read "120/?" without one)."""
    for start, end in [(None, None), (1.0, 3.0), (2.0, None), (None, 1.5), (0.5, 100.0)]:
        reader = VideoReader(clip, start, end)
        assert reader.frames_hint == sum(1 for _ in reader.frames()), (start, end)
    assert VideoReader(clip, 100.0).frames_hint is None        # past the end: nothing to count


def test_sigma_0_reports_no_smoothing_and_the_report_keeps_lists_on_a_line(tmp_path, clip, model, capsys):
    assert smoothing_name(VideoConfig(input=clip, sigma=0)) == "none (--sigma 0)"
    assert smoothing_name(VideoConfig(input=clip)) == "gaussian sigma=6.0 frames, guided by the face's measured motion"
    assert smoothing_name(VideoConfig(input=clip, live=True, guided=False)) == "one-euro (causal)"
    report = tmp_path / "report.json"
    with pytest.raises(SystemExit) as exit_:
        main(["video", str(clip), "-o", str(tmp_path / "out.mp4"), "-m", str(model), "--provider", "cpu",
              "--sigma", "0", "--max-frames", "12", "--report", str(report)])
    assert exit_.value.code == 0
    text = report.read_text()
    data = json.loads(text)
    assert data["smoothing"] == "none (--sigma 0)" and len(data["faces_per_frame"]) == 12
    assert f'"faces_per_frame": {json.dumps(data["faces_per_frame"])},\n' in text
