"""A fine-tuning set from your own images: every face found, FFHQ-aligned at the generator's resolution.

    summary = align_folder(AlignConfig(images=(Path("toons/a.png"),), output=Path("aligned"), res=1024))

Faces are found and cropped by the runtime's aligner (dlib's detector and 68 landmarks, the FFHQ
quad), exactly as photos are cropped for the exported model, and written as OUT/STEM_I.png
(I = 0 for the largest face). With `align=False` each image is taken as an already aligned face:
it must be square, and is only resized (Lanczos). Exact duplicates (the same pixels) are skipped;
`mirror` also writes each crop flipped left-right as STEM_I_mirror.png. OUT/align.json lists what
was written and what was skipped, and why.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.markup import escape

from runtime.common import ToonifyError, UsageError, console, progress, write_json_atomic
from runtime.faces import FaceAligner
from runtime.images import MAX_PIXELS, read_image, write_image
from runtime.options import setting
from runtime.photos import expand_inputs, face_crops

REPORT_NAME = "align.json"
NO_FACE = ("no face found: the photo face detector (dlib) often misses cartoon and painted faces; crop those "
           "square around the face, FFHQ-like, and pass them with --no-align")
DUPLICATE = "duplicate of {}: the same pixels"


@dataclass(frozen=True)
class AlignConfig:
    images: tuple[Path, ...] = setting(
        help="Images, folders or glob patterns: every face found is written.", metavar="IMAGE", cli=list[str],
        parse=lambda args: tuple(expand_inputs(args)))
    output: Path = setting(help="Folder for STEM_I.png, STEM_I_mirror.png and align.json (made if missing).")
    res: int = setting(help="Side of the written images: the generator's img_resolution (1024 for FFHQ).")
    align: bool = setting(True, "Find and align the faces (--no-align: each image is already an aligned, square face: "
                                "only resize it; cartoon faces often defeat the photo face detector).")
    mirror: bool = setting(False, "Also write each crop flipped left-right.")
    max_faces: int | None = setting(None, "At most this many faces per image, largest first (default: every face).")
    max_pixels: int = setting(MAX_PIXELS, cli=False)   # larger images are refused from their header


@dataclass
class AlignSummary:
    """What align_folder wrote (paths in `out`, mirrors included) and each input it skipped, with why."""
    written: list[Path] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)   # {"image": source path, "reason": text}
    duplicates: int = 0

    @property
    def failed(self) -> int:
        """Inputs skipped for a reason other than being a duplicate (unreadable, no face, not square)."""
        return len(self.skipped) - self.duplicates

    def to_dict(self) -> dict:
        return {"written": [p.name for p in self.written], "skipped": self.skipped}


def _check(cfg: AlignConfig) -> None:
    if cfg.res < 4:
        raise UsageError(f"--res must be at least 4, got {cfg.res}")
    if cfg.max_faces is not None and cfg.max_faces < 1:
        raise UsageError(f"--max-faces must be at least 1, got {cfg.max_faces}")
    if not cfg.images:
        raise UsageError("no input images", hint="toonify-fast distill align IMAGE... -o OUT --res R")
    out = cfg.output.resolve()
    inside = [p for p in cfg.images if p.resolve().parent == out]
    if inside:
        raise UsageError(f"{inside[0]} is in the output folder, where it could be overwritten", cfg.output,
                           hint="write the aligned set to a new folder")


def _opaque(rgb: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """Transparent parts over white: a cut-out character's hidden pixels are often black or junk."""
    if alpha is None:
        return rgb
    a = alpha[..., None].astype(np.float32) / 255
    return np.rint(rgb * a + 255 * (1 - a)).astype(np.uint8)


def _stems(images: tuple[Path, ...]) -> list[str]:
    """One output stem per input: its own, with -2, -3, ... where two inputs share one (a/x.jpg, b/x.png)."""
    used: set[str] = set()
    stems = []
    for path in images:
        stem, k = path.stem, 1
        while stem in used:
            k += 1
            stem = f"{path.stem}-{k}"
        used.add(stem)
        stems.append(stem)
    return stems


def _crops(aligner: FaceAligner | None, cfg: AlignConfig, path: Path) -> tuple[str, list[np.ndarray]]:
    """(hash of the decoded pixels, the [res, res, 3] uint8 crops); ToonifyError saying why there are none."""
    rgb = _opaque(*read_image(path, cfg.max_pixels))
    digest = hashlib.sha256(np.ascontiguousarray(rgb).tobytes() + str(rgb.shape).encode()).hexdigest()
    if aligner is None and rgb.shape[0] != rgb.shape[1]:
        raise ToonifyError(f"not square ({rgb.shape[1]}x{rgb.shape[0]}): --no-align takes already aligned, square "
                           "faces; crop it square first", path)
    _, crops = face_crops(aligner, rgb, cfg.res, cfg.max_faces)
    return digest, crops


def _align_one(cfg: AlignConfig, aligner: FaceAligner | None, path: Path, stem: str, summary: AlignSummary,
               seen: dict[str, str]) -> None:
    """Write the crops of one input into cfg.output, or record in `summary` why it has none."""
    try:
        digest, crops = _crops(aligner, cfg, path)
        if digest in seen:
            summary.duplicates += 1
            raise ToonifyError(DUPLICATE.format(seen[digest]), path)
        seen[digest] = str(path)
        if not crops:
            raise ToonifyError(NO_FACE, path)
    except ToonifyError as e:
        summary.skipped.append({"image": str(path), "reason": e.reason})
        console.print(f"[yellow]skipped[/yellow] {escape(str(path))}: {escape(e.reason)}", soft_wrap=True)
        return
    names = [stem] if aligner is None else [f"{stem}_{i}" for i in range(len(crops))]
    for name, crop in zip(names, crops):
        summary.written.append(write_image(cfg.output / f"{name}.png", crop))
        if cfg.mirror:
            summary.written.append(write_image(cfg.output / f"{name}_mirror.png", np.ascontiguousarray(crop[:, ::-1])))


def align_folder(cfg: AlignConfig) -> AlignSummary:
    """Align every input of `cfg` into cfg.output; an input without a usable face is listed and skipped,
    never fatal. Raises ToonifyError (exit code 2) for bad usage. Writes OUT/align.json last."""
    _check(cfg)
    aligner = FaceAligner() if cfg.align else None
    summary, seen = AlignSummary(), {}
    with progress("images", transient=True) as bar:
        task = bar.add_task("align", total=len(cfg.images))
        for path, stem in zip(cfg.images, _stems(cfg.images)):
            _align_one(cfg, aligner, path, stem, summary, seen)
            bar.advance(task)
    write_json_atomic(cfg.output / REPORT_NAME, {"res": cfg.res, "align": cfg.align, "mirror": cfg.mirror,
                                               **summary.to_dict()})
    n = len(cfg.images)
    console.print(f"{len(summary.written)} images of {cfg.res}x{cfg.res} from {n} input{'s' * (n != 1)} in "
                  f"{escape(str(cfg.output))}; {len(summary.skipped)} skipped (see {REPORT_NAME})", soft_wrap=True)
    return summary
