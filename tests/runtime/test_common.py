import os
import socket
import stat
import threading

import pytest

from runtime.common import UMASK, ToonifyError, atomic_path, output_suffix, write_json_atomic, written_in_place
from runtime.videoio import atomic_dir
from tests.helpers import fifo, is_fifo, is_null_device, move_temp_folder, null_device


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    with atomic_dir(tmp_path / "frames") as folder:
        (folder / "f.png").write_bytes(b"x")
    (tmp_path / "plain").write_bytes(b"x")
    (tmp_path / "plain_dir").mkdir()
    assert _mode(tmp_path / "a.json") == _mode(tmp_path / "plain") == 0o666 & ~UMASK   # not mkstemp's 0600
    assert _mode(tmp_path / "frames") == _mode(tmp_path / "plain_dir") == 0o777 & ~UMASK  # not mkdtemp's 0700


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    dest = tmp_path / "out.png"
    dest.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_error_text_names_file_and_hint():
    assert str(ToonifyError("no face found", "a.jpg", "use --no-align")) == "a.jpg: no face found\n  hint: use --no-align"


# ---- What an existing output becomes (README: Safety) ----

@pytest.fixture
def temp_folder(tmp_path, monkeypatch):
    return move_temp_folder(tmp_path, monkeypatch)


REPORT = {"frames": 3, "name": "r"}
REPORT_BYTES = b'{\n  "frames": 3,\n  "name": "r"\n}\n'


def test_a_regular_file_is_replaced_by_a_rename(tmp_path):
    dest = tmp_path / "r.json"
    dest.write_bytes(b"old")
    before = os.stat(dest).st_ino
    write_json_atomic(dest, REPORT)
    assert dest.read_bytes() == REPORT_BYTES and os.stat(dest).st_ino != before   # a new file, renamed in


def test_a_device_is_written_into_and_stays_a_device(tmp_path, temp_folder):
    dev = null_device(tmp_path / "null")
    write_json_atomic(dev, REPORT)
    with atomic_path(dev) as tmp:
        tmp.write_bytes(b"x")
    assert is_null_device(dev) and written_in_place(dev)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null", "system-tmp"]
    assert list(temp_folder.iterdir()) == []


def test_a_fifo_gets_exactly_the_bytes_and_stays_a_fifo(tmp_path, temp_folder):
    with fifo(tmp_path / "r.json") as received:
        write_json_atomic(tmp_path / "r.json", REPORT)
        assert received() == REPORT_BYTES
    assert is_fifo(tmp_path / "r.json") and list(temp_folder.iterdir()) == []


def test_a_failed_write_sends_nothing_into_a_fifo(tmp_path, temp_folder):
    with fifo(tmp_path / "out.png") as received:
        with pytest.raises(KeyboardInterrupt):
            with atomic_path(tmp_path / "out.png") as tmp:
                assert tmp.parent == temp_folder and tmp.suffix == ".png"
                tmp.write_bytes(b"half")
                raise KeyboardInterrupt
    assert received() == b"" and is_fifo(tmp_path / "out.png") and list(temp_folder.iterdir()) == []


def test_a_descriptor_name_writes_through_the_descriptor(tmp_path, temp_folder):
    # As `--report /dev/stdout >> log` does: appended to what the shell opened, the file kept.
    log = tmp_path / "log.txt"
    log.write_bytes(b"earlier\n")
    before = os.stat(log).st_ino
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    try:
        assert written_in_place(f"/dev/fd/{fd}") and output_suffix(f"/dev/fd/{fd}", ".png") == ".png"
        write_json_atomic(f"/dev/fd/{fd}", REPORT)
        os.write(fd, b"later\n")
    finally:
        os.close(fd)
    assert log.read_bytes() == b"earlier\n" + REPORT_BYTES + b"later\n" and os.stat(log).st_ino == before
    assert not written_in_place(f"/dev/fd/{fd}")                    # closed: no longer names anything


def test_a_symlink_stays_and_what_it_points_to_is_replaced(tmp_path):
    (tmp_path / "v1.json").write_bytes(b"old")
    (tmp_path / "latest.json").symlink_to("v1.json")
    write_json_atomic(tmp_path / "latest.json", REPORT)
    assert os.readlink(tmp_path / "latest.json") == "v1.json" and (tmp_path / "v1.json").read_bytes() == REPORT_BYTES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json", "v1.json"]


def test_a_dangling_symlink_stays_and_its_target_is_created(tmp_path):
    (tmp_path / "latest.json").symlink_to(tmp_path / "runs" / "v2.json")
    write_json_atomic(tmp_path / "latest.json", REPORT)
    assert os.readlink(tmp_path / "latest.json") == str(tmp_path / "runs" / "v2.json")
    assert (tmp_path / "runs" / "v2.json").read_bytes() == REPORT_BYTES
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["v2.json"]


def test_a_symlink_to_a_device_leaves_both(tmp_path, temp_folder):
    null_device(tmp_path / "null")
    (tmp_path / "out.json").symlink_to("null")
    write_json_atomic(tmp_path / "out.json", REPORT)
    assert os.readlink(tmp_path / "out.json") == "null" and is_null_device(tmp_path / "null")


def test_a_socket_or_a_loop_of_links_is_refused(tmp_path, temp_folder):
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "s.sock"))
        with pytest.raises(ToonifyError) as e:
            write_json_atomic(tmp_path / "s.sock", REPORT)
    assert (str(e.value), e.value.exit_code) == (f"{tmp_path / 's.sock'}: this is a socket: an output cannot be written "
                                                 "into it\n  hint: write to a file, a device or a named pipe", 2)
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(ToonifyError) as e:
        write_json_atomic(tmp_path / "a", REPORT)
    assert (str(e.value), e.value.exit_code) == (f"{tmp_path / 'a'}: a loop of symbolic links\n"
                                                 "  hint: remove the link or point it at a file", 2)
    assert list(temp_folder.iterdir()) == [] and os.readlink(tmp_path / "a") == "b"


def test_a_closed_pipe_is_a_clear_error(tmp_path, temp_folder):
    os.mkfifo(tmp_path / "p")

    def read_one_byte_and_go():
        fd = os.open(tmp_path / "p", os.O_RDONLY)
        os.read(fd, 1)
        os.close(fd)

    reader = threading.Thread(target=read_one_byte_and_go)
    reader.start()
    with pytest.raises(ToonifyError) as e:
        with atomic_path(tmp_path / "p") as tmp:
            tmp.write_bytes(b"x" * (1 << 22))            # more than a pipe holds
    reader.join()
    assert str(e.value) == (f"{tmp_path / 'p'}: the pipe was closed before the whole output was written into it\n"
                            "  hint: check the program reading the pipe")
    assert list(temp_folder.iterdir()) == []


def test_the_default_format_is_only_for_outputs_written_in_place(tmp_path):
    null_device(tmp_path / "null")
    assert output_suffix(tmp_path / "null", ".png") == ".png"
    assert output_suffix(tmp_path / "new", ".png") == "" and output_suffix(tmp_path / "n.jpg", ".png") == ".jpg"
    (tmp_path / "plain").write_bytes(b"")
    assert not written_in_place(tmp_path / "plain") and not written_in_place(tmp_path)


def test_a_transient_bar_off_a_terminal_writes_nothing(capsys):
    """Off a terminal rich would leave a blank line where a transient bar was (train and eval showed two)."""
    from runtime.common import progress
    with progress("pairs", transient=True) as bar:
        bar.advance(bar.add_task("checking", total=2))
    assert capsys.readouterr().err == ""
