"""Hostile inputs for the runtime, each made here: models whose graph does not fit, file names with
markup and terminal escapes, outputs that would overwrite inputs, special files, stale partials."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from runtime.cli import main
from runtime.common import WriteError, atomic_path, partial_prefix, printable
from runtime.engine import ModelError, ModelInfo, Toonifier
from runtime.images import read_image, write_image
from runtime.photos import ConvertConfig, convert_photos
from tests.conftest import ROOT
from tests.helpers import build_model, cli

N, H, W = "N", "H", "W"


def graph_model(path: Path, nodes, inputs, outputs, resolution: int = 32, metadata: dict | None = None) -> Path:
    """A toonify-fast model with these nodes; inputs/outputs: (name, ONNX element type, shape)."""
    graph = helper.make_graph(nodes, "hostile", [helper.make_tensor_value_info(*i) for i in inputs],
                              [helper.make_tensor_value_info(*o) for o in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    meta = metadata or ModelInfo(input_name=inputs[0][0], output_name=outputs[0][0], resolution=resolution).to_metadata()
    helper.set_model_props(model, meta)
    onnx.save(model, str(path))
    return path


F, D = TensorProto.FLOAT, TensorProto.DOUBLE
IDENTITY = [helper.make_node("Identity", ["input"], ["output"])]
UNFIT = {  # name: (nodes, inputs, outputs, resolution, the reason Toonifier gives)
    "rank3": (IDENTITY, [("input", F, [3, H, W])], [("output", F, [3, H, W])], 32,
              "its input 'input' has rank 3 [3, 'H', 'W'], not 4 [N, 3, H, W]"),
    "gray": (IDENTITY, [("input", F, [N, 1, H, W])], [("output", F, [N, 1, H, W])], 32,
             "its input 'input' has 1 channels ['N', 1, 'H', 'W'], not 3 (RGB)"),
    "float64": (IDENTITY, [("input", D, [N, 3, H, W])], [("output", D, [N, 3, H, W])], 32,
                "its input 'input' has type tensor(double), not float32 (tensor(float))"),
    "fixed32": (IDENTITY, [("input", F, [N, 3, 32, 32])], [("output", F, [N, 3, 32, 32])], 64,
                "its input 'input' has the fixed size ['N', 3, 32, 32], which does not match the model "
                "resolution 64"),
    "six": ([helper.make_node("Concat", ["input", "input"], ["output"], axis=1)],
            [("input", F, [N, 3, H, W])], [("output", F, [N, 6, H, W])], 32,
            "its output 'output' has 6 channels ['N', 6, 'H', 'W'], not 3 (RGB)"),
}


@pytest.mark.parametrize("name", sorted(UNFIT))
def test_a_model_whose_graph_does_not_fit_is_refused_when_opened(tmp_path, name, capsys):
    nodes, inputs, outputs, resolution, reason = UNFIT[name]
    path = graph_model(tmp_path / f"{name}.onnx", nodes, inputs, outputs, resolution)
    with pytest.raises(ModelError) as e:
        Toonifier(path, "cpu")
    assert (e.value.reason, e.value.path, e.value.exit_code) == (reason, str(path), 2)
    with pytest.raises(SystemExit) as exit_:
        main(["info", str(path)])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and "problem" in out and "Traceback" not in err
    assert f"error: {path}: {reason}" in " ".join(err.split())


def test_an_output_of_the_wrong_size_or_not_finite_is_a_model_error(tmp_path):
    half = graph_model(tmp_path / "half.onnx", [helper.make_node("MaxPool", ["input"], ["output"], kernel_shape=[2, 2],
                                                                 strides=[2, 2])],
                       [("input", F, [N, 3, H, W])], [("output", F, [N, 3, "h", "w"])])
    with pytest.raises(ModelError) as e:
        Toonifier(half, "cpu").run(np.zeros((2, 32, 32, 3), np.uint8))
    assert e.value.reason == ("the model gave [1, 3, 16, 16] float32 for a [1, 3, 32, 32] float32 input "
                              "(it must give the input's shape back)") and e.value.path == str(half)
    nan = graph_model(tmp_path / "sqrt.onnx", [helper.make_node("Sqrt", ["input"], ["output"])],
                      [("input", F, [N, 3, H, W])], [("output", F, [N, 3, H, W])])
    toonifier = Toonifier(nan, "cpu")
    assert (toonifier.run(np.full((1, 32, 32, 3), 255, np.uint8)) == 255).all()
    with pytest.raises(ModelError) as e:
        toonifier.run(np.zeros((1, 32, 32, 3), np.uint8))
    assert e.value.reason == f"the model gave {32 * 32 * 3} NaN or infinite values" and e.value.path == str(nan)


def test_photos_that_make_the_model_fail_are_reported_and_the_rest_go_on(tmp_path, capsys):
    # sqrt(x): NaN wherever x < 0, so a dark photo fails and a white one converts.
    model = graph_model(tmp_path / "sqrt.onnx", [helper.make_node("Sqrt", ["input"], ["output"])],
                        [("input", F, [N, 3, H, W])], [("output", F, [N, 3, H, W])])
    names = ["a_white.png", "b_dark.png", "c_white.png"]
    for name in names:
        write_image(tmp_path / name, np.full((40, 48, 3), 0 if "dark" in name else 255, np.uint8))
    summary = convert_photos(ConvertConfig(inputs=tuple(str(tmp_path / n) for n in names), model=model,
                                           provider="cpu", align=False, batch_size=1))
    err = " ".join(capsys.readouterr().err.split())
    assert (summary.converted, summary.failed) == (2, 1)
    assert f"error: {tmp_path / 'b_dark.png'}: the model gave {32 * 32 * 3} NaN or infinite values" in err
    assert (read_image(tmp_path / "c_white_toon.png")[0] == 255).all()
    assert not (tmp_path / "b_dark_toon.png").exists()


def test_info_shows_markup_and_escapes_from_the_file_as_plain_text(tmp_path, capsys):
    meta = ModelInfo(input_name="input", output_name="output", resolution=32,
                     preset="\x1b]0;owned\x07\x1b[2J[/x][red]", extra={"note\x1b[31m": "a\rb"}).to_metadata()
    folder = tmp_path / "[/x]"            # the folders "[" and "x]"
    folder.mkdir(parents=True)
    path = build_model(folder / "m[b].onnx", metadata=meta)
    main_exit = None
    try:
        main(["info", str(path)])
    except SystemExit as e:
        main_exit = e.code
    out, err = capsys.readouterr()
    assert main_exit in (None, 0), err
    assert "\x1b" not in out and "\r" not in out and "\x07" not in out
    assert "\\x1b]0;owned\\x07\\x1b[2J[/x][red]" in out and "note\\x1b[31m" in out and "a\\rb" in out
    assert "[/x]/m[b].onnx" in out
    assert printable("ok [b] é\t\u202e") == "ok [b] é\\t\\u202e"


@pytest.fixture(scope="module")
def face_model(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("model") / "invert64.onnx", "invert", resolution=64, size_multiple=4)


def clip_frames(path, count):
    import av
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for _, f in zip(range(count), c.decode(video=0))]


def test_frames_of_another_size_are_skipped_and_markup_in_paths_is_plain(tmp_path, photos_dir, face_model, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, rgb in enumerate(clip_frames(photos_dir / "short_hamilton_clip.mp4", 4)):
        write_image(frames / f"f{i}.png", rgb[::2, ::2] if i == 2 else rgb)
    out = tmp_path / "o[" / "x]"               # printed as .../o[/x]: a closing tag to rich
    code, _, err = cli(capsys, "video", frames, "-o", out, "-m", face_model, "--provider", "cpu")
    assert code == 0, err
    assert f"warning: skipped {frames / 'f2.png'}: 320x180, not the 640x360 of the first frame" in err
    assert sorted(p.name for p in out.iterdir()) == ["f0.png", "f1.png", "f3.png"]
    assert f"-> {out}" in err


def test_a_report_onto_the_input_or_the_output_is_refused(tmp_path, photos_dir, face_model, capsys):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes((photos_dir / "short_hamilton_clip.mp4").read_bytes())
    before = clip.read_bytes()
    for report, which in ((clip, "input"), (tmp_path / "toon.mp4", "output")):
        code, _, err = cli(capsys, "video", clip, "-o", tmp_path / "toon.mp4", "--report", report,
                                "-m", face_model, "--provider", "cpu")
        assert (code, err) == (2, f"error: {report}: the report would overwrite the {which} hint: choose another --report")
    assert clip.read_bytes() == before and not (tmp_path / "toon.mp4").exists()


def test_a_named_pipe_as_input_is_refused_not_waited_on(tmp_path, face_model, capsys):
    white = tmp_path / "white.png"
    write_image(white, np.full((32, 32, 3), 255, np.uint8))
    os.mkfifo(tmp_path / "pipe.png")
    os.mkfifo(tmp_path / "pipe.mp4")
    summary = convert_photos(ConvertConfig(inputs=(str(tmp_path / "pipe.png"), str(white)), model=face_model,
                                           provider="cpu", align=False))
    err = " ".join(capsys.readouterr().err.split())
    assert (summary.converted, summary.failed) == (1, 1)
    assert (f"error: {tmp_path / 'pipe.png'}: not a regular file (a named pipe, device or socket): refused "
            "hint: copy it into a file first") in err
    code, _, err = cli(capsys, "video", tmp_path / "pipe.mp4", "-o", tmp_path / "t.mp4", "-m", face_model)
    assert (code, err) == (2, f"error: {tmp_path / 'pipe.mp4'}: not a regular file (a named pipe, device or socket): "
                              "refused hint: copy it into a file first")


def test_a_glob_through_a_loop_of_links_is_refused(tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(b"")
    os.symlink(".", tmp_path / "l1")
    os.symlink(".", tmp_path / "l2")
    pattern = f"{tmp_path}/**/*.png"
    started = time.perf_counter()
    code, _, err = cli(capsys, pattern, "-m", tmp_path / "none.onnx")
    assert time.perf_counter() - started < 20
    assert (code, err) == (2, f"error: {pattern!r} goes round a loop of symbolic links: {tmp_path / 'l1'} is "
                              f"{tmp_path} again hint: remove the link that points back up, or narrow the pattern")


def test_an_empty_folder_named_like_an_image_is_one_failed_input(tmp_path, face_model, capsys):
    white = tmp_path / "white.png"
    write_image(white, np.full((32, 32, 3), 255, np.uint8))
    (tmp_path / "x.jpg").mkdir()
    code, _, err = cli(capsys, tmp_path / "x.jpg", white, "-m", face_model, "--provider", "cpu", "--no-align")
    assert code == 1 and f"error: {tmp_path / 'x.jpg'}: is a folder, not an image" in err
    assert "1 converted, 1 failed" in err and (tmp_path / "white_toon.png").is_file()


@pytest.mark.parametrize("name, reason, hint", [
    ("out.xyz", "unknown image format '.xyz'",
     "use .png, .jpg, .webp or .bmp, or give a folder (a name without an extension)"),
    (".png", "-o .png is a hidden name with no extension, not a .png file",
     "name the file (-o photo.png) or give a folder")])
def test_an_output_name_no_image_format_has_is_refused_before_work(tmp_path, face_model, capsys, name, reason, hint):
    white = tmp_path / "white.png"
    write_image(white, np.full((32, 32, 3), 255, np.uint8))
    code, _, err = cli(capsys, white, "-o", tmp_path / name, "-m", face_model, "--no-align")
    assert (code, err) == (2, f"error: {tmp_path / name}: {reason} hint: {hint}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["white.png"]


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_rerun_removes_the_partials_of_killed_runs_only(tmp_path):
    dead, out, host = dead_pid(), tmp_path / "out.png", partial_prefix("x").split("-")[-2]
    stale = [tmp_path / f".out.partial-{dead}-{host}-abc123.png", tmp_path / f".toon.partial-{dead}-{host}-q1w2e3"]
    stale[0].write_bytes(b"half")
    stale[1].mkdir()
    (stale[1] / "000001.png").write_bytes(b"half")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        live = [tmp_path / f".out.partial-{os.getpid()}-{host}-mine.png",
                tmp_path / f".out.partial-{sleeper.pid}-{host}-theirs.png",
                tmp_path / f".out.partial-{dead}-0000ffff-another-machine.png", tmp_path / f".other.partial-{dead}-{host}-x.png"]
        for path in live:
            path.write_bytes(b"in progress")
        write_image(out, np.zeros((8, 8, 3), np.uint8))
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name] + [p.name for p in live + [stale[1]]])
        from runtime.videoio import atomic_dir
        with atomic_dir(tmp_path / "toon") as folder:
            (folder / "a.png").write_bytes(b"x")
        assert not stale[1].exists() and (tmp_path / "toon" / "a.png").is_file()
        assert all(p.exists() for p in live)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_sigkill_mid_write_leaves_a_partial_that_the_next_write_removes(tmp_path):
    out = tmp_path / "out.bin"
    code = ("import sys, time; from pathlib import Path; from runtime.common import atomic_path\n"
            "with atomic_path(Path(sys.argv[1])) as tmp:\n"
            "    tmp.write_bytes(b'half'); print(tmp.name, flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    name = child.stdout.readline().strip()
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert name.startswith(f".out.partial-{child.pid}-{partial_prefix('x').split('-')[-2]}-") and (tmp_path / name).exists()
    with atomic_path(out) as tmp:
        tmp.write_bytes(b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"] and out.read_bytes() == b"whole"


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_a_signal_says_interrupted_and_exits_130(tmp_path, how):
    code = ("import os, signal, time; import runtime.photos as photos; from runtime.cli import main\n"
            f"photos.convert_photos = lambda cfg: (os.kill(os.getpid(), signal.{how}), time.sleep(30))\n"
            "main(['convert', 'a.png'])\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stderr.strip()) == (130, "error: interrupted: nothing was written for the work in "
                                                         "progress")


def remux(src_path, dst_path, rotation=None):
    """Copy every packet of src_path into dst_path (container from its extension), with a display
    rotation on the video stream as a phone stores it."""
    import av
    with av.open(str(src_path)) as src, av.open(str(dst_path), "w") as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in src.streams}
        if rotation is not None:
            streams[src.streams.video[0].index].set_display_rotation(rotation)
        for packet in src.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                dst.mux(packet)
    return dst_path


def phone_clip(path, frames, rotation=-90):
    """A clip stored as a phone stores it: the pictures turned sideways, with a display rotation
    that turns them back (lossless FFV1, 25 frames/s)."""
    import av
    turns = round(rotation / 90) % 4
    stored = [np.ascontiguousarray(np.rot90(f, -turns)) for f in frames]
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=25)
        s.height, s.width = stored[0].shape[:2]
        s.set_display_rotation(rotation)
        for f in stored:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode(None))
    return path


def test_a_clip_stored_rotated_is_converted_upright(tmp_path, photos_dir, face_model):
    from runtime.video import VideoConfig, convert_video
    frames = clip_frames(photos_dir / "short_hamilton_clip.mp4", 144)[140:]
    upright = phone_clip(tmp_path / "upright.mkv", frames, rotation=0)
    phone = phone_clip(tmp_path / "phone.mkv", frames, rotation=-90)
    a = convert_video(VideoConfig(upright, tmp_path / "a.mkv", face_model, provider="cpu", codec="ffv1"))
    b = convert_video(VideoConfig(phone, tmp_path / "b.mkv", face_model, provider="cpu", codec="ffv1"))
    assert a["faces_per_frame"] == [1, 1, 1, 1] and b["faces_per_frame"] == [1, 1, 1, 1]
    shown, reference = clip_frames(tmp_path / "b.mkv", 4), clip_frames(tmp_path / "a.mkv", 4)
    assert shown[0].shape == (360, 640, 3)
    # Equal up to the 4:2:0 chroma of the stored (turned) pictures and the face found in them.
    assert max(np.abs(x.astype(int) - y).mean() for x, y in zip(shown, reference)) < 2


def test_a_truncated_mkv_converts_what_is_there_and_says_so(tmp_path, photos_dir, face_model, capsys):
    from runtime.video import VideoConfig, convert_video
    whole = remux(photos_dir / "short_hamilton_clip.mp4", tmp_path / "whole.mkv")
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[:whole.stat().st_size * 55 // 100])
    report = convert_video(VideoConfig(cut, tmp_path / "out.mp4", face_model, provider="cpu", sigma=0))
    err = " ".join(capsys.readouterr().err.split())
    n = report["frames"]
    assert 100 < n < 275
    assert f"the video stream ends at " in err and f"of the 10.03 s its header announces (a truncated file?); " \
           f"converting the {n} frames before" in err
    assert len(clip_frames(tmp_path / "out.mp4", 300)) == n


def test_unwritable_video_frame_and_report_outputs_are_refused_before_work(tmp_path, photos_dir, face_model, capsys):
    (tmp_path / "file").write_text("not a folder")
    frames = tmp_path / "frames"
    frames.mkdir()
    write_image(frames / "f0.png", np.zeros((32, 32, 3), np.uint8))
    clip = photos_dir / "short_hamilton_clip.mp4"
    blocked = tmp_path / "file" / "out"
    for args, dest in (((clip, "-o", blocked.with_suffix(".mp4")), blocked.with_suffix(".mp4")),
                       ((frames, "-o", blocked), blocked),
                       ((clip, "-o", tmp_path / "toon.mp4", "--report", blocked.with_suffix(".json")),
                        blocked.with_suffix(".json"))):
        code, _, err = cli(capsys, "video", *args, "-m", face_model, "--provider", "cpu")
        assert (code, err) == (2, f"error: {dest}: cannot write it: {tmp_path / 'file'} is not a folder hint: check "
                                  "that the folder exists and is writable, and the disk has space")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "frames"]


def test_a_full_disk_while_writing_is_one_error_line(tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")
    out = tmp_path / "out.json"
    with pytest.raises(WriteError) as e:
        with atomic_path(out) as tmp:
            no_space()
    assert str(e.value) == (f"{out}: cannot write it (No space left on device)\n"
                            "  hint: check that the folder exists and is writable, and the disk has space")
    assert list(tmp_path.iterdir()) == []


def test_external_data_outside_the_models_folder_is_refused(tmp_path):
    from onnx import numpy_helper
    (tmp_path / "secret.bin").write_bytes(np.ones(3, np.float32).tobytes())
    weight = numpy_helper.from_array(np.zeros((1, 3, 1, 1), np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "12")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("Add", ["input", "w"], ["output"])], "g",
                              [helper.make_tensor_value_info("input", F, [N, 3, H, W])],
                              [helper.make_tensor_value_info("output", F, [N, 3, H, W])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, ModelInfo(input_name="input", output_name="output", resolution=32).to_metadata())
    (tmp_path / "m").mkdir()
    onnx.save(model, str(tmp_path / "m" / "m.onnx"))
    with pytest.raises(ModelError) as e:
        Toonifier(tmp_path / "m" / "m.onnx", "cpu")
    assert e.value.exit_code == 2 and "External data path escapes model directory" in e.value.reason
