import os
import stat

import pytest

from runtime.common import UMASK, ToonifyError, atomic_path, write_json_atomic
from runtime.videoio import atomic_dir


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
