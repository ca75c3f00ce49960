"""Plumbing every stage shares: user-facing errors, notes, atomic writes, JSON, the console and
progress bars.

    with atomic_path(out) as tmp:   # write tmp; it becomes `out` only if the block succeeds
        image.save(tmp)

What an existing output becomes (the README's Safety section): a regular file is replaced in one
rename; a device or named pipe (/dev/null, /dev/stdout, a FIFO) is written into in place, once the
whole output is complete, and stays what it is; a symbolic link is followed (what it points to is
written as above, a dangling link's target created) and stays a link; a socket is refused.

Nothing here imports torch: the runtime and the distillation code both use it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task,
                           TextColumn, TimeElapsedColumn, TimeRemainingColumn)
from rich.markup import escape
from rich.text import Text


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Temporary files are created private (0600, 0700); what they become gets the permissions a plain
# open() or mkdir() would have given it.
UMASK = _read_umask()

# Messages, warnings and progress go to stderr so stdout stays clean for data (JSON, paths).
console = Console(stderr=True, highlight=False)


class ToonifyError(Exception):
    """An error the user can act on: what went wrong, with which file, and a hint.

    The CLI prints it as one or two lines (never a traceback) and exits with `exit_code`.
    """
    exit_code = 1

    def __init__(self, reason: str, path: str | os.PathLike | None = None, hint: str | None = None):
        self.reason, self.path, self.hint = reason, (str(path) if path is not None else None), hint
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.path}: {self.reason}" if self.path else self.reason
        return f"{text}\n  hint: {self.hint}" if self.hint else text


class UsageError(ToonifyError):
    """The command was asked for something that cannot be done as given: bad options, missing or
    clashing paths. Nothing has been done yet; exit status 2."""
    exit_code = 2


class Interrupted(ToonifyError):
    """Stopped by a signal (Ctrl-C, SIGTERM) after saving what can be resumed; exit status 130."""
    exit_code = 130


def printable(text: str) -> str:
    """`text` with every control or format character (terminal escapes, carriage returns, bidi
    overrides) shown as a Python escape (\\x1b, \\r, \\u202e): for anything printed that came
    from a file or a file name, so that it cannot move the cursor, recolour or retitle the terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class WriteError(ToonifyError):
    """An output that cannot be written: its folder is missing, not a folder or not writable, or
    the disk is full. Nothing is left of it (atomic_path)."""


WRITE_HINT = "check that the folder exists and is writable, and the disk has space"
# What a failing write reports; other errors inside an atomic_path block are the writer's own.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                errno.ENOENT}


def write_error(error: OSError, dest: str | os.PathLike) -> WriteError:
    """The WriteError for an OSError met while writing `dest` (one line: file, reason, hint)."""
    return WriteError(f"cannot write it ({error.strerror or error})", dest, hint=WRITE_HINT)


def check_writable(dest: str | os.PathLike) -> None:
    """Raise UsageError unless `dest` can be written (before any work is done): the nearest folder
    above it that exists must be a folder this process may write into. Devices and pipes pass."""
    dest = Path(dest)
    if written_in_place(dest):
        return
    folder = dest.absolute().parent
    while not os.path.lexists(folder):
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"cannot write it: {folder} is not a folder", dest, hint=WRITE_HINT)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write it: the folder {folder} is not writable", dest, hint=WRITE_HINT)


def note(text: str, kind: str = "note") -> None:
    """One line on stderr: 'note: ...' (kind 'note'), 'warning: ...' or 'error: ...'; `text` is plain
    (file names may hold rich markup such as [/x], so nothing in it is interpreted, and control
    characters are shown escaped; a hint keeps its own line)."""
    colour = {"note": "yellow", "warning": "yellow", "error": "red"}[kind]
    text = "\n".join(printable(line) for line in text.split("\n"))
    console.print(f"[{colour}]{kind}:[/{colour}] {escape(text)}", soft_wrap=True)


def from_jsonable(cls, data: dict):
    """A flat config dataclass back from its jsonable() form: keys it has no field for are dropped,
    paths and tuples restored from the fields' types (an error here is a damaged file's)."""
    import typing
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, kinds = data[f.name], {hints[f.name], *typing.get_args(hints[f.name])}
        if value is not None and Path in kinds:
            value = Path(value)
        elif value is not None and any(k is tuple or typing.get_origin(k) is tuple for k in kinds):
            value = tuple(value)
        values[f.name] = value
    return cls(**values)


def jsonable(value):
    """Configs and results as JSON values: dataclasses as dicts, paths as strings, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value) if isinstance(value, os.PathLike) else value


def written_in_place(path: str | os.PathLike) -> bool:
    """True where atomic_path writes into `path` in place rather than renaming over it: a name of
    one of this process's file descriptors (/dev/stdout, /dev/fd/N), or an existing (through
    symbolic links) device, named pipe or socket (refused when written)."""
    path = Path(path)
    if _own_descriptor(path) is not None:
        return True
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def output_suffix(path: str | os.PathLike, default: str) -> str:
    """The extension that picks an output's format: its own, or `default` for an output written in
    place that has none (/dev/null, /dev/stdout)."""
    path = Path(path)
    return path.suffix or (default if written_in_place(path) else "")


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; on success it becomes `dest`, on an exception (or Ctrl-C)
    it is removed and `dest` is left as it was, so a reader never sees a half-written file.

    A regular file or a new path is replaced in one rename of the temporary file beside it. A
    device or named pipe is never renamed over: the complete temporary file (in the temp folder)
    is copied into it, so a pipe's reader gets exactly the bytes a file would hold. A symbolic link
    stays: what it points to is written instead (a dangling link's target is created). A socket,
    or a loop of links, is a ToonifyError with exit code 2. `suffix` defaults to dest's own suffix
    so writers that choose a format by extension (PIL, PyAV) keep working.
    """
    dest = Path(dest)
    suffix = dest.suffix if suffix is None else suffix
    if written_in_place(dest):
        with _in_place(dest, _own_descriptor(dest), suffix) as tmp:
            yield tmp
        return
    target = _link_target(dest)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(target.parent, target.stem)
        fd, tmp = tempfile.mkstemp(prefix=partial_prefix(target.stem), dir=target.parent, suffix=suffix)
    except OSError as e:
        raise write_error(e, dest) from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~UMASK)
        os.replace(tmp, target)
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        raise write_error(e, dest) from None
    finally:
        tmp.unlink(missing_ok=True)


def _host_id() -> str:
    # Folders may be shared between machines, where our pids say nothing about their processes.
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def partial_prefix(name: str) -> str:
    """The start of the temporary name atomic_path (and atomic_dir) writes `name` under:
    `.{name}.partial-{pid}-{host}-`, then a random part and the suffix. The pid and the host tell
    a rerun which partials a process on this machine left when it was killed (SIGKILL, a crash)."""
    return f".{name}.partial-{os.getpid()}-{_host_id()}-"


def remove_stale_partials(folder: Path, name: str) -> list[Path]:
    """Remove the partial files and folders of `name` in `folder` whose writer is no longer
    running (no process on this machine has the pid in their name); returns what was removed.
    Partials of live processes, this one's included, and of other machines are left alone."""
    pattern = re.compile(rf"^\.{re.escape(name)}\.partial-(\d+)-{_host_id()}-")
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True        # another user's process, or no pid at all: not ours to judge
    return True


def _link_target(dest: Path) -> Path:
    """The path a rename must replace so that a symbolic link at `dest` stays one: the file it
    points to, which need not exist yet."""
    if not dest.is_symlink():
        return dest
    try:
        os.stat(dest)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UsageError("a loop of symbolic links", dest, hint="remove the link or point it at a file") from None
    return Path(os.path.realpath(dest))


def _own_descriptor(dest: Path) -> int | None:
    """N where `dest` names this process's open file descriptor N (/dev/stdout, /dev/fd/N,
    /proc/self/fd/N). Such a name is written through the descriptor, whatever it is open on: a
    fresh open() or a rename would truncate or replace a file the shell opened with `>>`."""
    path = dest.absolute()
    for _ in range(40):     # the kernel's own limit on links followed
        folder = os.path.realpath(path.parent)
        if path.name.isdigit() and re.fullmatch(rf"/proc/{os.getpid()}(/task/\d+)?/fd", folder):
            try:
                os.fstat(int(path.name))
            except OSError:
                return None
            return int(path.name)
        if not path.is_symlink():
            return None
        path = Path(folder) / os.readlink(path)
    return None


@contextlib.contextmanager
def _in_place(dest: Path, descriptor: int | None, suffix: str) -> Iterator[Path]:
    if descriptor is None and stat.S_ISSOCK(os.stat(dest).st_mode):
        raise UsageError("this is a socket: an output cannot be written into it", dest,
                         hint="write to a file, a device or a named pipe")
    # Not beside dest: a device's folder (/dev) is no place for a large temporary file.
    remove_stale_partials(Path(tempfile.gettempdir()), dest.stem)
    fd, tmp = tempfile.mkstemp(prefix=partial_prefix(dest.stem), suffix=suffix)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        try:
            if descriptor is None:
                # No O_CREAT or O_TRUNC: if dest went away meanwhile, nothing is made in its place.
                out = open(os.open(dest, os.O_WRONLY), "wb")
            else:
                for stream in (sys.stdout, sys.stderr):   # what was printed before comes first
                    if stream is not None:
                        stream.flush()
                out = open(descriptor, "wb", closefd=False)
            with open(tmp, "rb") as src, out:
                shutil.copyfileobj(src, out, 1 << 20)
        except BrokenPipeError:
            raise ToonifyError("the pipe was closed before the whole output was written into it", dest,
                               hint="check the program reading the pipe") from None
        except OSError as e:
            raise ToonifyError(f"cannot write into it ({e.strerror or e})", dest) from None
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: str | os.PathLike, hint: str, error: type[ToonifyError] = ToonifyError):
    """The JSON value in a file; a missing, unreadable, damaged or truncated file raises `error`
    naming it, with `hint`."""
    try:
        return json.loads(Path(path).read_bytes())
    except OSError as e:
        raise error(f"cannot read it ({e.strerror or e})", path, hint=hint) from None
    except ValueError as e:          # JSONDecodeError, or bytes that are not UTF-8
        raise error(f"damaged: not valid JSON ({e})", path, hint=hint) from None


def write_bytes_atomic(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def json_text(obj) -> str:
    """JSON indented by two with sorted keys, where a list of plain values (a report's per-frame
    counts) stays on one line instead of one value a line."""
    def dump(value, level: int) -> str:
        pad = "  " * level
        if isinstance(value, dict) and value:
            items = sorted((str(k), v) for k, v in value.items())
            return "{\n" + ",\n".join(f"{pad}  {json.dumps(k)}: {dump(v, level + 1)}" for k, v in items) + f"\n{pad}}}"
        if isinstance(value, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in value):
            return "[\n" + ",\n".join(f"{pad}  {dump(v, level + 1)}" for v in value) + f"\n{pad}]"
        return json.dumps(value)
    return dump(obj, 0) + "\n"


def write_json_atomic(dest: str | os.PathLike, obj) -> None:
    write_bytes_atomic(dest, json_text(obj).encode())


class _RateColumn(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.2f} {self.unit}/s" if task.speed else f"- {self.unit}/s")


def progress(unit: str = "it", transient: bool = False) -> Progress:
    """A progress bar with count, rate and ETA.

        with progress("pairs") as bar:
            task = bar.add_task("pairs", total=n)
            bar.advance(task)
    """
    # Off a terminal (a log file, a pipe) rich cannot erase a transient bar and leaves a blank line
    # in its place: there it is not shown at all.
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    _RateColumn(unit), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                    console=console, transient=transient, disable=transient and not console.is_terminal)
