"""Plumbing every stage shares: user-facing errors, notes, atomic writes, JSON, the console and
progress bars.

    with atomic_path(out) as tmp:   # write tmp; it becomes `out` only if the block succeeds
        image.save(tmp)

Nothing here imports torch: the runtime and the distillation code both use it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
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


def note(text: str, kind: str = "note") -> None:
    """One line on stderr: 'note: ...' (kind 'note'), 'warning: ...' or 'error: ...'; `text` is plain
    (file names may hold rich markup such as [/x], so nothing in it is interpreted)."""
    colour = {"note": "yellow", "warning": "yellow", "error": "red"}[kind]
    console.print(f"[{colour}]{kind}:[/{colour}] {escape(text)}", soft_wrap=True)


def jsonable(value):
    """Configs and results as JSON values: dataclasses as dicts, paths as strings, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value) if isinstance(value, os.PathLike) else value


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it replaces `dest` in one rename.

    On an exception (or Ctrl-C) the temporary file is removed and `dest` is left as it was,
    so a reader never sees a half-written file. `suffix` defaults to dest's own suffix so
    writers that choose a format by extension (PIL, PyAV) keep working.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.stem}.partial-", dir=dest.parent,
                               suffix=dest.suffix if suffix is None else suffix)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~UMASK)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(dest: str | os.PathLike, obj) -> None:
    write_bytes_atomic(dest, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


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
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    _RateColumn(unit), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                    console=console, transient=transient)
