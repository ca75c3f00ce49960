"""The files of a training run: numbered run folders, config.json, log and stats, sample grids,
the RNG state a checkpoint keeps, and the student files that export and eval load.

    model, info = load_student("runs/00003-lite-256/student-ema.pt")   # generator in eval mode, StudentInfo

A run folder (runs/00003-lite-256/) holds config.json, log.txt, stats.jsonl, tensorboard/,
samples/step-000500.png (rows: input | student | teacher), the training state
checkpoints/latest.pt, and apart from it the weights: student-ema.pt (the EMA generator, the one
to export) and student.pt (the raw one), readable with torch.load(weights_only=True).
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from distill.weights import state_dict_difference
from distill.translator import StudentConfig, build_generator
from runtime.common import (ToonifyError, UsageError, atomic_path, console, from_jsonable, partial_prefix, read_json,
                            remove_stale_partials, write_bytes_atomic, write_error, write_json_atomic)
from runtime.images import image_grid, nchw_to_hwc, write_image
from runtime.options import setting

STUDENT_FORMAT = "toonify-fast-student"
TEMP_NAME = "toonify-mp"
# A Unix socket's path has at most 107 bytes; multiprocessing puts its sockets at
# TMP/pymp-XXXXXXXX/listener-XXXXXXXX (with the random part of our folder's name, about 50 bytes).
SOCKET_PATH_MAX, SOCKET_TAIL = 107, 50


class RunFolderError(ToonifyError):
    pass


class StudentFileError(ToonifyError):
    pass


@dataclass(frozen=True)
class StudentInfo:
    """What a student file says about its generator: written by train (save_student), read by
    export, eval and the demo. Export turns it into the model's runtime.engine.ModelInfo."""
    config: StudentConfig              # the architecture
    preset: str                        # its translator.PRESETS name, or "custom"
    resolution: int                    # the training resolution: face crops are resolution x resolution
    run: str = ""                      # the run folder's name
    step: int = 0                      # training steps behind these weights
    ema: bool = False                  # the moving average of the weights (the one to export)
    teacher_base_sha256: str = ""      # the teachers the pairs came from (pairs.json)
    teacher_blended_sha256: str = ""
    styles: tuple[str, ...] = ()       # a conditioned student's style names, in index order (config.styles of them)
    default_strength: float = 1.0      # the strength apps use when none is asked for

    @property
    def size_multiple(self) -> int:
        """Input H and W must be multiples of this."""
        return self.config.size_multiple

    def to_dict(self) -> dict:
        """The `meta` entry of a student file (size_multiple is written for readers of the raw file)."""
        data = asdict(self)
        return {"student_config": data.pop("config"), **data, "size_multiple": self.size_multiple}

    @classmethod
    def from_dict(cls, data: dict) -> StudentInfo:
        names = {"preset", "resolution", "run", "step", "ema", "teacher_base_sha256", "teacher_blended_sha256",
                 "default_strength"}
        return cls(config=StudentConfig(**data["student_config"]), styles=tuple(data.get("styles", ())),
                   **{k: v for k, v in data.items() if k in names})


def rng_state() -> dict:
    """This process's torch, Python, numpy and CUDA RNG states, as torch.load(weights_only=True) reads them."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": (kind, key.tolist(), pos, has_gauss, gauss),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() returned."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, key, *rest = state["numpy"]
    np.random.set_state((kind, np.array(key, np.uint32), *rest))
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def read_run_config(run_dir: str | os.PathLike) -> dict:
    """A run folder's config.json: {"config": the run's config as jsonable(), "world_size", ...}."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise RunFolderError("no config.json: not a training run folder", run_dir,
                             hint="pass a folder made by `distill train`, e.g. runs/00003-lite-256")
    hint = "config.json is damaged (edited, or cut short by a full disk): restore it, or start a new run"
    record = read_json(path, hint, RunFolderError)
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise RunFolderError("damaged: it holds no training settings (no \"config\" object)", path, hint=hint)
    return record


def load_training_state(run_dir: Path, device: torch.device) -> dict:
    """checkpoints/latest.pt of a run (weights only); a truncated or damaged file is a RunFolderError."""
    path = run_dir / "checkpoints" / "latest.pt"
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises zip, unpickling and runtime errors: the file and reason are what matter
        raise RunFolderError(f"damaged or truncated: cannot read it ({(str(e).strip().splitlines() or [type(e).__name__])[0]})", path,
                         hint="a killed run cannot cause this (checkpoints are written atomically): restore the "
                              "file from a backup, or start the run again") from None
    keys = {"step", "samples_seen", "world_size", "G", "G_ema", "opt_G", "D", "opt_D", "scaler", "rng"}
    if not isinstance(state, dict) or not keys <= set(state):
        raise RunFolderError("not a training state of `distill train`", path, hint="start the run again")
    return state


@contextlib.contextmanager
def private_temp_folder() -> Iterator[Path]:
    """A temporary folder of this process for the files of torch multiprocessing (the DataLoader
    workers' pymp-* folders and sockets), removed at the end. A killed run leaves its folder, and
    the next run removes it (runtime.common.remove_stale_partials: its pid is in the name)."""
    base = Path(tempfile.gettempdir())
    remove_stale_partials(base, TEMP_NAME)
    if len(str(base)) + len(partial_prefix(TEMP_NAME)) + SOCKET_TAIL > SOCKET_PATH_MAX:
        yield base            # its sockets would not fit below a longer folder: keep multiprocessing's own
        return
    folder = tempfile.mkdtemp(prefix=partial_prefix(TEMP_NAME), dir=base)
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    # Workers read TMPDIR (spawn) or inherit tempfile's cached folder (fork).
    os.environ["TMPDIR"], tempfile.tempdir = folder, folder
    try:
        yield Path(folder)
    finally:
        if saved[0] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[0]
        tempfile.tempdir = saved[1]
        shutil.rmtree(folder, ignore_errors=True)


def runs_setting():
    """The `output` setting of every command that makes run folders (train, finetune)."""
    return setting(Path("runs"), "Where numbered run folders are made.")


def run_config(cls, run_dir: str | os.PathLike, legacy: dict[str, str] | None = None):
    """The config (a `cls`: TrainConfig, FinetuneConfig) a run folder was started with; `legacy`
    maps old field names of earlier versions' config.json to today's."""
    data = read_run_config(run_dir)["config"]
    data = {**{new: data[old] for old, new in (legacy or {}).items() if old in data}, **data}
    try:
        return from_jsonable(cls, data)
    except (KeyError, TypeError, ValueError) as e:     # settings that are not a `cls`'s
        kind = cls.__name__.removesuffix("Config").lower()
        raise RunFolderError(f"damaged: its settings are not a {kind} run's ({type(e).__name__}: {e})",
                             Path(run_dir) / "config.json", hint="restore config.json, or start a new run") from None


def check_resumable(cfg, run_dir: str | os.PathLike, resumable: frozenset[str]) -> None:
    """Refuse (RunFolderError) to resume `run_dir` with settings other than its own, but for the
    `resumable` ones, or a run that stopped before its first checkpoint."""
    run_dir = Path(run_dir)
    saved = run_config(type(cfg), run_dir)
    # A resumed run stays in its own folder, wherever new runs would be made.
    changed = [f.name for f in fields(cfg)
               if f.name not in resumable | {"output"} and getattr(cfg, f.name) != getattr(saved, f.name)]
    if changed:
        raise RunFolderError(f"the run was started with other settings: {', '.join(changed)}", run_dir,
                             hint="resume with the run's own settings (the CLI reads them from config.json)")
    if not (run_dir / "checkpoints" / "latest.pt").is_file():
        raise RunFolderError("no checkpoints/latest.pt to resume from", run_dir,
                             hint="the run stopped before its first checkpoint: start it again")


def resumed_config(cfg, run_dir: str | os.PathLike, given: set[str], resumable: frozenset[str]):
    """For `--resume RUN`: the run's own config, with the resumable settings given on the command
    line; any other setting given is a UsageError (a new run is the way to change it)."""
    refused = sorted(given - resumable)
    if refused:
        raise UsageError(f"--resume continues a run with its own settings; leave out "
                         f"{', '.join('--' + name.replace('_', '-') for name in refused)}", run_dir,
                         hint="start a new run to change them")
    return replace(run_config(type(cfg), run_dir), **{name: getattr(cfg, name) for name in given & resumable})


def save_student(G: nn.Module, path: Path, info: StudentInfo) -> None:
    """Weights only + StudentInfo, readable with torch.load(weights_only=True), written atomically."""
    state = {k: v.detach().cpu() for k, v in G.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"format": STUDENT_FORMAT, "version": 1, "state_dict": state, "meta": info.to_dict()}, tmp)


def load_student(path: str | os.PathLike) -> tuple[nn.Module, StudentInfo]:
    """A student file from `distill train` -> (generator in eval mode on CPU, its StudentInfo).

    The generator maps [N, 3, H, W] in [-1, 1] to the same (H, W multiples of info.size_multiple).
    Tensors are checked key by key against the architecture.
    """
    path, hint = Path(path), "pass student-ema.pt (or student.pt) from a run folder made by `distill train`"
    if not path.is_file():
        raise StudentFileError("no such file", path, hint)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, zip errors... the reason is what matters
        raise StudentFileError(f"cannot read it as a weights-only torch file ({str(e).splitlines()[0]})", path,
                               hint) from None
    if not isinstance(data, dict) or data.get("format") != STUDENT_FORMAT:
        what = "training state (latest.pt), not student weights" if isinstance(data, dict) and "opt_G" in data \
            else "not a toonify-fast student file"
        raise StudentFileError(what, path, hint)
    info = StudentInfo.from_dict(data["meta"])
    model = build_generator(info.config)
    why = state_dict_difference(model.state_dict(), data["state_dict"], ("the architecture", "the file"))
    if why is not None:
        raise StudentFileError(f"tensor {why}", path, hint)
    model.load_state_dict(data["state_dict"])
    return model.eval(), info


class RunFolder:
    """The files of one run, all written by rank 0: a numbered folder with config.json, log.txt,
    stats.jsonl, tensorboard/, samples/, checkpoints/latest.pt and the student files."""

    def __init__(self, path: Path, resumed_at: int | None = None):
        """`resumed_at`: the step of the checkpoint a resumed run goes on from; what the logs hold
        of later steps (written before a kill) is cut, so no step is logged twice."""
        from torch.utils.tensorboard import SummaryWriter
        self.path = path
        if resumed_at is not None:
            self.rewind(resumed_at)
        # purge_step: TensorBoard drops the events of the killed session's later steps.
        self.tb = SummaryWriter(str(path / "tensorboard"), purge_step=resumed_at)

    @classmethod
    def create(cls, out: Path, name: str) -> RunFolder:
        """The next free out/NNNNN-name folder (numbers count up from the highest in out)."""
        try:
            out.mkdir(parents=True, exist_ok=True)
            number = max((int(p.name[:5]) for p in out.iterdir() if p.name[:5].isdigit()), default=-1) + 1
            while True:   # another run may take the number between our look and our mkdir
                path = out / f"{number:05d}-{name}"
                try:
                    path.mkdir()
                    return cls(path)
                except FileExistsError:
                    number += 1
        except OSError as e:
            raise write_error(e, out) from None

    def rewind(self, step: int) -> None:
        """Cut stats.jsonl back to the lines of steps up to `step` (a line cut short by the kill goes too)."""
        path = self.path / "stats.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                kept.append(line + "\n")
        write_bytes_atomic(path, "".join(kept).encode())

    def _append(self, name: str, text: str) -> None:
        try:
            with open(self.path / name, "a") as f:
                f.write(text)
        except OSError as e:
            raise write_error(e, self.path / name) from None

    def write_config(self, record: dict) -> None:
        """config.json, read back by read_run_config."""
        write_json_atomic(self.path / "config.json", record)

    def log(self, text: str) -> None:
        console.print(text, markup=False)      # run folder names may hold [/x]
        self._append("log.txt", f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def stats(self, record: dict) -> None:
        self._append("stats.jsonl", json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "step":
                self.tb.add_scalar(key, value, record["step"])
        self.tb.flush()

    @torch.no_grad()
    def samples(self, step: int, G: nn.Module, real: torch.Tensor, toon: torch.Tensor, *condition: torch.Tensor) -> None:
        """samples/step-NNNNNN.png: rows input | student | teacher, one column per pair (`condition`:
        a conditioned student's style and strength per pair)."""
        grid = image_grid([list(nchw_to_hwc(x.float().cpu().numpy())) for x in (real, G(real, *condition), toon)])
        write_image(self.path / "samples" / f"step-{step:06d}.png", grid)

    def save(self, state: dict, G: nn.Module, G_ema: nn.Module, info: StudentInfo) -> None:
        """The training state, then the weights export loads (each file atomically)."""
        with atomic_path(self.path / "checkpoints" / "latest.pt") as tmp:
            torch.save(state, tmp)
        save_student(G, self.path / "student.pt", replace(info, step=state["step"], ema=False))
        save_student(G_ema, self.path / "student-ema.pt", replace(info, step=state["step"], ema=True))
