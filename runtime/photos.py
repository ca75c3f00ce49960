"""Convert photos: find every face, toonify its FFHQ-aligned crop, paste it back (or keep the crops).

    summary = convert_photos(ConvertConfig(inputs=("photo.jpg",)))      # writes photo_toon.png

`toonify-fast IMAGE...` is a thin wrapper around convert_photos; apps holding pixels already call
toonify_photo. A bad file is reported and skipped: the batch goes on.
"""
from __future__ import annotations

import contextlib
import glob
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.markup import escape

from runtime.common import ToonifyError, UsageError, console, note, progress, written_in_place
from runtime.engine import Toonifier, batch_setting, find_model, model_setting, provider_setting, style_setting
from runtime.faces import Face, FaceAligner, align, paste_back
from runtime.images import IMAGE_SUFFIXES, MAX_PIXELS, image_format, list_images, read_image, resize, write_image
from runtime.options import setting

# Our own outputs (photo_toon.png, photo_toon_0.png): skipped when a folder is converted again.
OUTPUT_NAME = re.compile(r"_toon(_\d+)?$")
PROGRESS_FROM = 4     # a bar is noise for a few images


@dataclass(frozen=True)
class ConvertConfig:
    inputs: tuple[str, ...] = setting(
        help="Images, folders (their images, sorted) or glob patterns such as 'shots/*.jpg'.", metavar="IMAGE")
    output: Path | None = setting(
        None, "Output file (one input) or folder. Default: IMAGE_toon.png beside each image.")
    model: Path | None = model_setting()
    provider: str = provider_setting()
    batch_size: int | None = batch_setting()
    max_faces: int | None = setting(None, "Convert at most this many faces per image, largest first (default: all).",
                                    min=1)
    crop: bool = setting(False, "Write the aligned toon faces instead of the whole photo: IMAGE_toon_0.png, _1, ... "
                                "(with -o FILE.png: FILE_0.png, _1, ..., or FILE.png itself for a single face).")
    align: bool = setting(True, "Find and align the faces (--no-align: each image is already an aligned face: "
                                "resize it to the model resolution, convert, resize back).")
    style: str | None = style_setting()
    strength: float | None = setting(None, "How strong the style is: 0 reconstructs the photo, 1 is the full style "
                                           "(default: the model's).", min=0.0, max=1.0)
    max_pixels: int = setting(MAX_PIXELS, "Refuse images with more megapixels than this (decompression bombs).",
                              flags=("--max-megapixels",), cli=float, min=0.001, shown=lambda v: v / 1e6,
                              parse=lambda v: int(v * 1e6))


@dataclass
class ConvertSummary:
    converted: int = 0
    failed: int = 0
    faces: int = 0
    seconds: float = 0.0
    outputs: list[Path] = field(default_factory=list)


def expand_inputs(args: tuple[str, ...] | list[str]) -> list[Path]:
    """Files as given, folders as their images (sorted, our own *_toon outputs skipped), globs as
    their sorted matches; duplicates dropped. A missing path or an empty match is a usage error."""
    found: list[Path] = []
    for arg in args:
        path = Path(arg)
        if not path.exists() and glob.has_magic(arg):
            matches = [Path(m) for m in sorted(_glob(arg))]
            if not matches:
                raise UsageError(f"no file matches {arg!r}")
            found += [m for m in matches if m.is_file()] + [i for m in matches if m.is_dir() for i in _folder_images(m)]
        elif path.is_dir() and path.suffix.lower() in IMAGE_SUFFIXES and not _folder_images(path):
            found.append(path)      # a folder named like an image: one input that fails, not the batch
        elif path.is_dir():
            images = _folder_images(path)
            if not images:
                raise UsageError("no images in this folder", path, hint=f"images end in {', '.join(IMAGE_SUFFIXES)}")
            found += images
        elif path.exists():
            found.append(path)
        else:
            raise UsageError("no such file or folder", path)
    return list(dict.fromkeys(found))


def _glob(pattern: str) -> list[str]:
    """glob.glob(pattern, recursive=True), refusing a loop: `**` follows symbolic links to folders,
    and one that points back up its own folders (two of them: endlessly) repeats the tree below."""
    ancestry: dict[str, frozenset[str]] = {}

    def real_above(folder: str) -> frozenset[str]:
        """The real paths of `folder` and of the folders above it, as the path is written."""
        if folder not in ancestry:
            parent = os.path.dirname(folder)
            above = real_above(parent) if parent != folder else frozenset()
            here = os.path.realpath(folder or ".")
            if here in above:
                raise UsageError(f"{pattern!r} goes round a loop of symbolic links: {folder} is {here} again",
                                 hint="remove the link that points back up, or narrow the pattern")
            ancestry[folder] = above | {here}
        return ancestry[folder]

    matches = []
    for match in glob.iglob(pattern, recursive=True):
        if "**" in pattern:
            real_above(match if os.path.isdir(match) else os.path.dirname(match))
        matches.append(match)
    return matches


def _folder_images(folder: Path) -> list[Path]:
    return [p for p in list_images(folder)[0] if not OUTPUT_NAME.search(p.stem)]


def plan_outputs(inputs: list[Path], output: Path | None) -> list[Path]:
    """The output path of each input: beside it as STEM_toon.png, in the folder `output`, or `output`
    itself (one input: a name with an extension, or a device or pipe such as /dev/stdout). Refuses,
    as usage errors, to overwrite an input, to write two inputs to one file, an extension no image
    format has (-o out.xyz), and a bare extension (-o .png: a hidden name, neither file nor folder)."""
    if output is not None and not output.is_dir() and output.name.lower() in IMAGE_SUFFIXES:
        raise UsageError(f"-o {output.name} is a hidden name with no extension, not a {output.name} file", output,
                         hint=f"name the file (-o photo{output.name}) or give a folder")
    if output is not None and not output.is_dir() and (output.suffix or written_in_place(output)):
        if image_format(output) is None:
            raise UsageError(f"unknown image format {output.suffix!r}", output,
                             hint="use .png, .jpg, .webp or .bmp, or give a folder (a name without an extension)")
        if len(inputs) > 1:
            raise UsageError(f"-o names one file but there are {len(inputs)} inputs", output,
                             hint="give a folder to -o (it is created if missing)")
        dests = [output]
    else:
        dests = [(output or p.parent) / f"{p.stem}_toon.png" for p in inputs]
    resolved = [d.resolve() for d in dests]
    sources = {p.resolve(): p for p in inputs}
    for dest, r in zip(dests, resolved):
        if r in sources:
            raise UsageError(f"the output would overwrite the input {sources[r]}", dest, hint="choose another -o")
        if resolved.count(r) > 1:
            clash = [str(p) for p, d in zip(inputs, resolved) if d == r]
            raise UsageError(f"{' and '.join(clash)} would both be written here", dest,
                             hint="convert them separately or rename one")
    return dests


def crop_names(dest: Path, faces: int, output: Path | None = None) -> list[Path]:
    """Where --crop writes the faces of one photo whose output is `dest`: DEST_0.png, DEST_1.png, ...
    one per face, except that a file named by -o (`output` is `dest`) holding one face is that file."""
    if faces == 1 and output is not None and dest == output:
        return [dest]
    return [dest.with_name(f"{dest.stem}_{i}{dest.suffix}") for i in range(faces)]


def face_crops(aligner: FaceAligner | None, rgb: np.ndarray, resolution: int,
               max_faces: int | None = None) -> tuple[list[Face] | None, list[np.ndarray]]:
    """The faces of an [H, W, 3] uint8 photo (largest first) and their aligned [R, R, 3] crops.

    With no aligner the whole photo is the face: faces is None and the one crop is the photo
    resized to the model resolution.
    """
    if aligner is None:
        return None, [resize(rgb, resolution, resolution)]
    faces = aligner.detect(rgb, max_faces)
    return faces, [align(rgb, f.quad, resolution) for f in faces]


def compose(rgb: np.ndarray, faces: list[Face] | None, toons: list[np.ndarray]) -> np.ndarray:
    """Put the toon crops back into the [H, W, 3|4] photo (faces None: the one toon resized back)."""
    if faces is None:
        return resize(toons[0], rgb.shape[1], rgb.shape[0])
    for face, toon in zip(faces, toons):
        rgb = paste_back(rgb, toon, face.quad)
    return rgb


def toonify_photo(toonifier: Toonifier, aligner: FaceAligner | None, rgb: np.ndarray,
                  max_faces: int | None = None, style: str | None = None,
                  strength: float | None = None) -> tuple[np.ndarray, list[Face] | None]:
    """Toonify every face of an [H, W, 3] uint8 RGB photo -> (new photo, the faces found);
    style and strength as Toonifier.run takes them."""
    faces, crops = face_crops(aligner, rgb, toonifier.resolution, max_faces)
    return compose(rgb, faces, list(toonifier.run(crops, style=style, strength=strength))), faces


@dataclass
class _Job:
    source: Path
    dest: Path
    rgb: np.ndarray | None = None
    alpha: np.ndarray | None = None
    faces: list[Face] | None = None
    crops: list[np.ndarray] = field(default_factory=list)


class _Converter:
    """Reads and aligns photos one by one, and runs the model on the faces of several photos at once."""

    def __init__(self, cfg: ConvertConfig, toonifier: Toonifier, summary: ConvertSummary, sources: set[Path]):
        self.cfg, self.toonifier, self.summary, self.sources = cfg, toonifier, summary, sources
        aligned = cfg.align and toonifier.info.alignment == "ffhq"
        self.aligner = FaceAligner() if aligned else None
        self.pending: list[_Job] = []

    def add(self, job: _Job) -> None:
        try:
            job.rgb, job.alpha = read_image(job.source, self.cfg.max_pixels)
            job.faces, job.crops = face_crops(self.aligner, job.rgb, self.toonifier.resolution, self.cfg.max_faces)
            if not job.crops:
                raise ToonifyError("no face found", job.source,
                                   hint="if the image is already an aligned face, use --no-align")
        except ToonifyError as e:
            return self.fail(e)
        self.pending.append(job)
        if sum(len(j.crops) for j in self.pending) >= self.toonifier.batch_size:
            self.flush()

    def flush(self) -> None:
        jobs, self.pending = self.pending, []
        if not jobs:
            return
        try:
            toons = iter(self.toonifier.run([c for j in jobs for c in j.crops], style=self.cfg.style,
                                            strength=self.cfg.strength))
        except ToonifyError as e:
            for job in jobs:
                self.fail(ToonifyError(e.reason, job.source, e.hint))
            return
        for job in jobs:
            try:
                self.finish(job, [next(toons) for _ in job.crops])
            except ToonifyError as e:
                self.fail(e)

    def finish(self, job: _Job, toons: list[np.ndarray]) -> None:
        if self.cfg.crop:
            written = [self.write(dest, t, None) for dest, t in zip(crop_names(job.dest, len(toons), self.cfg.output),
                                                                    toons)]
        else:
            written = [self.write(job.dest, compose(job.rgb, job.faces, toons), job.alpha)]
        self.summary.converted += 1
        self.summary.faces += len(toons)
        self.summary.outputs += written
        faces = "whole image" if job.faces is None else f"{len(toons)} face{'s' * (len(toons) != 1)}"
        console.print(f"{escape(str(job.source))} -> {escape(', '.join(map(str, written)))} ({faces})", soft_wrap=True)

    def write(self, dest: Path, rgb: np.ndarray, alpha: np.ndarray | None) -> Path:
        if dest.resolve() in self.sources:
            raise ToonifyError("refusing to overwrite an input", dest, hint="choose another -o")
        return write_image(dest, rgb, alpha)

    def fail(self, error: ToonifyError) -> None:
        self.summary.failed += 1
        note(str(error), "error")


def convert_photos(cfg: ConvertConfig) -> ConvertSummary:
    """Convert every input of `cfg`; per-file problems are printed and counted, not raised.

    Raises ToonifyError (exit code 2) for bad usage: no inputs, a missing path, an unknown
    provider, no model, outputs that would overwrite an input.
    """
    start = time.perf_counter()
    inputs = expand_inputs(cfg.inputs)
    if not inputs:
        raise UsageError("no input images", hint="toonify-fast IMAGE... (files, folders or globs)")
    dests = plan_outputs(inputs, cfg.output)
    if cfg.crop and cfg.output is not None and written_in_place(cfg.output):
        raise UsageError("--crop writes a file per face (NAME_0.png, NAME_1.png, ...) beside -o; a device or pipe "
                         "is one file", cfg.output, hint="give -o a folder")
    toonifier = Toonifier(find_model(cfg.model), cfg.provider, batch_size=cfg.batch_size)
    toonifier.check_condition(cfg.style, cfg.strength)
    summary = ConvertSummary()
    converter = _Converter(cfg, toonifier, summary, {p.resolve() for p in inputs})
    bar = progress("images", transient=True) if len(inputs) >= PROGRESS_FROM else None
    with bar or contextlib.nullcontext():
        task = bar.add_task("toonify", total=len(inputs)) if bar else None
        for source, dest in zip(inputs, dests):
            converter.add(_Job(source, dest))
            if bar:
                bar.update(task, completed=summary.converted + summary.failed)
        converter.flush()
    summary.seconds = time.perf_counter() - start
    return summary
