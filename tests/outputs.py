"""Outputs that are not regular files, for the tests of every command that writes one file.

    dev = null_device(tmp_path / "null")          # a character device like /dev/null (or a skip)
    with fifo(tmp_path / "out.png") as received:  # a named pipe read by a thread
        main(["photo.jpg", "-o", str(tmp_path / "out.png"), ...])
    assert received() == expected_bytes

Shared by tests/runtime and tests/distill.
"""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest

NULL = os.makedev(1, 3)      # /dev/null's device number on Linux


def null_device(path: Path) -> Path:
    """A character device at `path` with /dev/null's number: writes into it vanish. Skips the test
    where mknod is not permitted (not root); the FIFO tests cover writing in place there."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, NULL)
    except PermissionError:
        pytest.skip("mknod is not permitted here")
    return path


def is_null_device(path: Path) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == NULL


def is_fifo(path: Path) -> bool:
    return stat.S_ISFIFO(os.lstat(path).st_mode)


@contextlib.contextmanager
def fifo(path: Path) -> Iterator[Callable[[], bytes]]:
    """A named pipe at `path`, read to its end by a thread; yields a function that returns what it
    received (once a writer has opened and closed it, or b"" if none did by the end of the block)."""
    os.mkfifo(path)
    received = bytearray()

    def read() -> None:
        with open(path, "rb") as f:          # blocks until a writer opens the pipe
            received.extend(f.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def result() -> bytes:
        reader.join(timeout=60)
        assert not reader.is_alive(), "the pipe was never closed by its writer"
        return bytes(received)

    try:
        yield result
    finally:
        if reader.is_alive():
            # Nothing wrote: open and close the write end, so the reader sees the end and stops.
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            reader.join(timeout=10)


def move_temp_folder(tmp_path: Path, monkeypatch) -> Path:
    """Move the temp folder under tmp_path (for one test), so the test sees what a write in
    place left there."""
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder
