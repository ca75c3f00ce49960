"""Every runtime command that writes one file, into a character device and a named pipe: the device
stays a device, the pipe gets exactly the bytes a regular file would hold (README: Safety)."""
import json

import av
import pytest

from runtime.common import json_text
from tests.helpers import build_model, cli, fifo, is_fifo, is_null_device, move_temp_folder, null_device


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("model") / "invert64.onnx", "invert", resolution=64, size_multiple=4)


@pytest.fixture(autouse=True)
def temp_folder(tmp_path, monkeypatch):
    return move_temp_folder(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def clip(photos_dir):
    return photos_dir / "short_hamilton_clip.mp4"


def run(capsys, *args):
    """The real entry point in-process -> (exit status, stderr with whitespace collapsed)."""
    code, _, err = cli(capsys, *args)
    return code, err


def photo(capsys, photos_dir, model, out, *extra):
    return run(capsys, photos_dir / "obama.jpg", "-o", out, "-m", model, "--provider", "cpu", *extra)


def video(capsys, clip, model, out, *extra):
    return run(capsys, "video", clip, "-o", out, "-m", model, "--provider", "cpu", "--max-frames", "6", *extra)


def test_photo_into_a_device_and_a_pipe(tmp_path, temp_folder, photos_dir, model, capsys):
    assert photo(capsys, photos_dir, model, tmp_path / "toon.png")[0] == 0
    expected = (tmp_path / "toon.png").read_bytes()
    dev = null_device(tmp_path / "null")
    code, err = photo(capsys, photos_dir, model, dev)
    assert code == 0 and f"-> {dev} (1 face)" in err and is_null_device(dev)
    # A pipe named without an extension gets PNG, like the device: the same bytes as toon.png.
    for name in ("pipe.png", "pipe"):
        with fifo(tmp_path / name) as received:
            assert photo(capsys, photos_dir, model, tmp_path / name)[0] == 0
            assert received() == expected
        assert is_fifo(tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null", "pipe", "pipe.png", "system-tmp", "toon.png"]
    assert list(temp_folder.iterdir()) == []


def test_photo_crops_into_a_device_are_refused(tmp_path, photos_dir, model, capsys):
    dev = null_device(tmp_path / "null")
    code, err = photo(capsys, photos_dir, model, dev, "--crop")
    assert code == 2 and err == (f"error: {dev}: --crop writes a file per face (NAME_0.png, NAME_1.png, ...) beside -o; "
                                 "a device or pipe is one file hint: give -o a folder")
    assert is_null_device(dev) and sorted(p.name for p in tmp_path.iterdir()) == ["null", "system-tmp"]


def test_video_into_a_device_and_a_pipe(tmp_path, temp_folder, clip, model, capsys):
    assert video(capsys, clip, model, tmp_path / "toon.mp4")[0] == 0
    expected = (tmp_path / "toon.mp4").read_bytes()
    dev = null_device(tmp_path / "null")
    code, err = video(capsys, clip, model, dev)
    assert code == 0 and f"6 frames, a face in 6" in err and err.endswith(f"-> {dev}") and is_null_device(dev)
    with fifo(tmp_path / "pipe") as received:      # no extension: MP4, the default container
        assert video(capsys, clip, model, tmp_path / "pipe")[0] == 0
        assert received() == expected
    with fifo(tmp_path / "pipe.mkv") as received:  # the extension still picks the container
        assert video(capsys, clip, model, tmp_path / "pipe.mkv")[0] == 0
        (tmp_path / "copy.mkv").write_bytes(received())
    with av.open(str(tmp_path / "copy.mkv")) as c:
        assert c.format.name == "matroska,webm" and len(list(c.decode(video=0))) == 6
    assert is_fifo(tmp_path / "pipe") and is_fifo(tmp_path / "pipe.mkv") and list(temp_folder.iterdir()) == []


def test_video_report_into_a_device_and_a_pipe(tmp_path, temp_folder, clip, model, capsys):
    dev = null_device(tmp_path / "null")
    assert video(capsys, clip, model, tmp_path / "a.mp4", "--report", dev)[0] == 0
    assert is_null_device(dev)
    with fifo(tmp_path / "report.json") as received:
        assert video(capsys, clip, model, tmp_path / "b.mp4", "--report", tmp_path / "report.json")[0] == 0
        data = received()
    report = json.loads(data)
    assert data == json_text(report).encode()   # all of it, as a file holds it
    assert report["frames"] == 6 and report["output"] == str(tmp_path / "b.mp4")
    assert is_fifo(tmp_path / "report.json") and list(temp_folder.iterdir()) == []


def test_video_into_a_socket_is_refused_before_any_frame(tmp_path, clip, model, capsys):
    import socket
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "s.sock"))
        code, err = video(capsys, clip, model, tmp_path / "s.sock")
    assert code == 2 and err == (f"error: {tmp_path / 's.sock'}: this is a socket: an output cannot be written into it "
                                 "hint: write to a file, a device or a named pipe")


def test_photo_through_a_symlink_replaces_its_target_and_never_an_input(tmp_path, photos_dir, model, capsys):
    (tmp_path / "v1.png").write_bytes(b"old")
    (tmp_path / "latest.png").symlink_to("v1.png")
    assert photo(capsys, photos_dir, model, tmp_path / "latest.png")[0] == 0
    assert (tmp_path / "latest.png").readlink().name == "v1.png"
    assert (tmp_path / "v1.png").read_bytes().startswith(b"\x89PNG")
    (tmp_path / "input.png").symlink_to(photos_dir / "obama.jpg")
    code, err = photo(capsys, photos_dir, model, tmp_path / "input.png")
    assert code == 2 and err == (f"error: {tmp_path / 'input.png'}: the output would overwrite the input "
                                 f"{photos_dir / 'obama.jpg'} hint: choose another -o")
