"""The files of a training run: numbered run folders, config.json, log and stats, sample grids,
the RNG state a checkpoint keeps, and the student files that export and eval load.

    model, meta = load_student("runs/00003-lite-256/student-ema.pt")   # generator in eval mode, metadata

A run folder (runs/00003-lite-256/) holds config.json, log.txt, stats.jsonl, tensorboard/,
samples/step-000500.png (rows: input | student | teacher), the training state
checkpoints/latest.pt, and apart from it the weights: student-ema.pt (the EMA generator, the one
to export) and student.pt (the raw one), readable with torch.load(weights_only=True).
"""
from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from distill.translator import StudentConfig, build_generator
from runtime.common import ToonifyError, atomic_path, console, write_json_atomic
from runtime.images import nchw_to_hwc

STUDENT_FORMAT = "toonify-fast-student"


class RunFolderError(ToonifyError):
    pass


class StudentFileError(ToonifyError):
    pass


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
    """A run folder's config.json: {"config": TrainConfig.to_json(), "student", "world_size", ...}."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise RunFolderError("no config.json: not a training run folder", run_dir,
                             hint="pass a folder made by `distill train`, e.g. runs/00003-lite-256")
    return json.loads(path.read_text())


def save_student(G: nn.Module, path: Path, meta: dict) -> None:
    """Weights only + metadata, readable with torch.load(weights_only=True), written atomically."""
    state = {k: v.detach().cpu() for k, v in G.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"format": STUDENT_FORMAT, "version": 1, "state_dict": state, "meta": meta}, tmp)


def load_student(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """A student file from `distill train` -> (generator in eval mode on CPU, metadata).

    The generator maps [N, 3, H, W] in [-1, 1] to the same (H, W multiples of meta['size_multiple']).
    Metadata: student_config, preset, resolution, size_multiple, step, ema, teacher_base_sha256,
    teacher_blended_sha256. Tensors are checked key by key against the architecture.
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
    meta = data["meta"]
    model = build_generator(StudentConfig(**meta["student_config"]))
    expected, got = model.state_dict(), data["state_dict"]
    for key, want in expected.items():
        if key not in got or got[key].shape != want.shape:
            found = "missing" if key not in got else f"shape {list(got[key].shape)}"
            raise StudentFileError(f"tensor {key}: {found}, the architecture needs {list(want.shape)}", path, hint)
    extra = sorted(set(got) - set(expected))
    if extra:
        raise StudentFileError(f"unexpected tensors for this architecture: {', '.join(extra[:5])}", path, hint)
    model.load_state_dict(got)
    return model.eval(), meta


class RunFolder:
    """The files of one run, all written by rank 0: a numbered folder with config.json, log.txt,
    stats.jsonl, tensorboard/, samples/, checkpoints/latest.pt and the student files."""

    def __init__(self, path: Path):
        from torch.utils.tensorboard import SummaryWriter
        self.path = path
        self.tb = SummaryWriter(str(path / "tensorboard"))

    @classmethod
    def create(cls, out: Path, name: str) -> RunFolder:
        """The next free out/NNNNN-name folder (numbers count up from the highest in out)."""
        out.mkdir(parents=True, exist_ok=True)
        number = max((int(p.name[:5]) for p in out.iterdir() if p.name[:5].isdigit()), default=-1) + 1
        while True:   # another run may take the number between our look and our mkdir
            path = out / f"{number:05d}-{name}"
            try:
                path.mkdir()
                return cls(path)
            except FileExistsError:
                number += 1

    def write_config(self, record: dict) -> None:
        """config.json, read back by read_run_config."""
        write_json_atomic(self.path / "config.json", record)

    def log(self, text: str) -> None:
        console.print(text)
        with open(self.path / "log.txt", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def stats(self, record: dict) -> None:
        with open(self.path / "stats.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "step":
                self.tb.add_scalar(key, value, record["step"])
        self.tb.flush()

    @torch.no_grad()
    def samples(self, step: int, G: nn.Module, real: torch.Tensor, toon: torch.Tensor) -> None:
        """samples/step-NNNNNN.png: rows input | student | teacher, one column per pair."""
        rows = [nchw_to_hwc(x.float().cpu().numpy()) for x in (real, G(real), toon)]
        grid = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
        with atomic_path(self.path / "samples" / f"step-{step:06d}.png") as tmp:
            Image.fromarray(grid).save(tmp, format="PNG")

    def save(self, state: dict, G: nn.Module, G_ema: nn.Module, meta: dict) -> None:
        """The training state, then the weights export loads (each file atomically)."""
        with atomic_path(self.path / "checkpoints" / "latest.pt") as tmp:
            torch.save(state, tmp)
        save_student(G, self.path / "student.pt", {**meta, "step": state["step"], "ema": False})
        save_student(G_ema, self.path / "student-ema.pt", {**meta, "step": state["step"], "ema": True})
