"""The paired data set the student trains on: (real, toon) images from a pair folder, with the
same geometric augmentation on both and photometric degradation on the real photo only.

    ds = PairedDataset("pairs/", res=256)           # ds[i] -> (real, toon), each [3, 256, 256] in [-1, 1]

A pair set with styles (`distill pairs --style ...`) also gives each item its condition:
ds[i] -> (real, toon, style int64 [], strength float32 []), with `ds.styles` the style names in
index order (read from pairs.json and manifest.jsonl); a plain set keeps `ds.styles == ()`.

A pair folder holds real/STEM.png and toon/STEM.png (or any runtime.images.IMAGE_SUFFIXES); the same stem is
the same pair (distill/pairs.py writes them; manifest.jsonl is not needed). Unreadable or
unmatched files are reported and skipped. Item i of epoch e depends only on (seed, e, i), so
workers, resuming and DDP sharding never change what the student sees.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image

from runtime.common import ToonifyError, console, note, progress
from runtime.images import ImageError, hwc_to_nchw, list_images, read_image

_SHOWN = 10  # problems listed by name before the rest are only counted


class PairFolderError(ToonifyError):
    pass


def _images(folder: Path) -> dict[str, list[Path]]:
    """stem -> image files with that stem (more than one is ambiguous: 000001.png and 000001.jpg)."""
    by_stem: dict[str, list[Path]] = {}
    for path in list_images(folder)[0]:     # not atomic_path's unfinished writes of a running pairs job
        by_stem.setdefault(path.stem, []).append(path)
    return by_stem


def _unreadable(path: Path) -> str | None:
    """Why PIL cannot read the file, or None; much cheaper than decoding every pair.

    PNG and most formats: verify() checks structure and checksums without decoding. JPEG has no
    checksums, so it is decoded at 1/8 scale (DCT scaling), which still reads the whole stream.
    """
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
            else:
                image.verify()
    except Exception as e:  # PIL raises many types for broken files; the name and reason are what matter
        return f"{type(e).__name__}: {str(e).replace(str(path), path.name)}"
    return None


def _warn(problems: list[str], what: str) -> None:
    if not problems:
        return
    note(f"{len(problems)} {what}, skipped:", "warning")
    for line in problems[:_SHOWN]:
        console.print(f"  {line}", markup=False)
    if len(problems) > _SHOWN:
        console.print(f"  ... and {len(problems) - _SHOWN} more", markup=False)


def scan_pairs(root: str | os.PathLike) -> tuple[list[tuple[Path, Path]], list[Path], list[Path]]:
    """(real, toon) paths sorted by stem, plus the unmatched and the unreadable files (warned about).

    Raises PairFolderError when the folder, real/ or toon/ is missing, or no pair is usable.
    """
    root = Path(root)
    hint = ("a pair folder holds real/STEM.png and toon/STEM.png with the same STEM; "
            "write one with `toonify-fast distill pairs ... -o FOLDER`")
    if not root.is_dir():
        raise PairFolderError("pair folder not found", root, hint)
    missing = [name for name in ("real", "toon") if not (root / name).is_dir()]
    if missing:
        found = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
        raise PairFolderError(f"no {' or '.join(m + '/' for m in missing)} folder in it (found: "
                              f"{', '.join(found[:_SHOWN]) or 'nothing'}{', ...' if len(found) > _SHOWN else ''})",
                              root, hint)
    sides = {"real": _images(root / "real"), "toon": _images(root / "toon")}
    common = sorted(stem for stem, paths in sides["real"].items() if len(paths) == 1
                    and len(sides["toon"].get(stem, ())) == 1)
    problems: list[tuple[Path, str]] = []
    for side, other in (("real", "toon"), ("toon", "real")):
        for stem, paths in sides[side].items():
            if len(paths) > 1:
                problems += [(p, f"another {side} image has the same stem") for p in paths]
            elif stem not in sides[other]:
                problems.append((paths[0], f"no {other} image with this stem"))
            elif len(sides[other][stem]) > 1:
                problems.append((paths[0], f"several {other} images have this stem"))
    problems.sort()
    unmatched = [p for p, _ in problems]
    _warn([f"{p.relative_to(root)}: {why}" for p, why in problems], "unmatched image(s)")

    pairs, unreadable = [], []
    with progress("pairs", transient=True) as bar:
        task = bar.add_task(f"checking {root.name}", total=len(common))
        for stem in common:
            pair = (sides["real"][stem][0], sides["toon"][stem][0])
            bad = [(p, why) for p in pair if (why := _unreadable(p))]
            unreadable += bad
            if not bad:
                pairs.append(pair)
            bar.advance(task)
    _warn([f"{p.relative_to(root)}: cannot read ({why}); its pair is dropped" for p, why in unreadable],
          "unreadable image(s)")
    if not pairs:
        count = {side: sum(map(len, images.values())) for side, images in sides.items()}
        raise PairFolderError(f"no usable pair: real/ has {count['real']} image(s), toon/ has {count['toon']}, "
                              f"{len(common)} stem(s) in common, "
                              f"{len(unreadable)} unreadable file(s)", root, hint)
    return pairs, unmatched, [p for p, _ in unreadable]


def _fit(res: int) -> A.Compose:
    """Any size -> [res, res]: shorter side to res (INTER_AREA when shrinking: anti-aliased,
    since StyleGAN pairs are often 1024 px for a 256 px student), then the centre square."""
    return A.Compose([A.SmallestMaxSize(max_size=res, interpolation=cv2.INTER_LINEAR, area_for_downscale="image"),
                      A.CenterCrop(res, res)])


def _geometric() -> A.Compose:
    """Flip and a small zoom/shift/rotation (a random crop of the fitted square), one draw for both images."""
    return A.Compose([
        A.HorizontalFlip(p=0.5),
        # Small: the student is served on aligned FFHQ-style crops, so only alignment jitter is realistic.
        A.Affine(scale=(0.95, 1.08), translate_percent=(-0.03, 0.03), rotate=(-6, 6),
                 border_mode=cv2.BORDER_REFLECT_101, p=0.7),
    ], additional_targets={"toon": "image"})


def _photometric() -> A.Compose:
    """Degradations of real photos (webcams, phones, messengers) the teacher's clean renders lack."""
    return A.Compose([
        A.ColorJitter(brightness=(0.8, 1.2), contrast=(0.8, 1.2), saturation=(0.85, 1.15), hue=(-0.02, 0.02), p=0.8),
        A.OneOf([A.GaussianBlur(sigma_limit=(0.3, 1.5)),
                 A.Downscale(scale_range=(0.35, 0.75),
                             interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR})], p=0.4),
        A.GaussNoise(std_range=(0.01, 0.05), p=0.3),
        A.ImageCompression(quality_range=(40, 95), p=0.5),
    ])


def _read(path: Path) -> np.ndarray:
    try:
        return read_image(path)[0]
    except ImageError as e:  # passed the scan's check yet fails to decode
        raise PairFolderError(e.reason, path,
                              hint="delete this pair (real/ and toon/ files with this stem) and restart") from None


def read_conditions(root: str | os.PathLike) -> tuple[tuple[str, ...], dict[str, tuple[int, float]]]:
    """(style names in index order, stem -> (style index, strength)) of a pair set with styles, from
    its pairs.json (in the folder, or its parent for val/) and manifest.jsonl; ((), {}) for a plain set."""
    root = Path(root)
    meta = next((p for p in (root / "pairs.json", root.parent / "pairs.json") if p.is_file()), None)
    styles = json.loads(meta.read_text()).get("styles") if meta is not None else None
    if not styles:
        return (), {}
    manifest = root / "manifest.jsonl"
    if not manifest.is_file():
        raise PairFolderError("a pair set with styles needs its manifest.jsonl (each pair's style and strength)",
                              root, hint="complete the set with `toonify-fast distill pairs` and the same settings")
    entries = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    return (tuple(s["name"] for s in styles),
            {Path(e["real"]).stem: (int(e["style_index"]), float(e["strength"])) for e in entries})


class PairedDataset(torch.utils.data.Dataset):
    """(real, toon) pairs of a pair folder as [3, res, res] float32 tensors in [-1, 1].

    Every image is first fitted to res x res (anti-aliased resize of the shorter side, centre
    crop). augment=True then adds a flip and a small zoom/shift/rotation, identical on both
    images, and with photometric=True colour jitter, blur or down-and-up scaling, noise and
    JPEG on the real image only. augment=False stops after the fit, for evaluation.
    Attributes: `pairs`, `unmatched` and `unreadable` (paths), `skipped` (count of those files).
    """

    def __init__(self, root: str | os.PathLike, res: int, augment: bool = True, photometric: bool = True,
                 seed: int = 0):
        self.root, self.res, self.augment, self.seed, self.epoch = Path(root), res, augment, seed, 0
        self.pairs, self.unmatched, self.unreadable = scan_pairs(root)
        self.skipped = len(self.unmatched) + len(self.unreadable)
        self.styles, conditions = read_conditions(root)
        missing = [real for real, _ in self.pairs if self.styles and real.stem not in conditions]
        if missing:
            raise PairFolderError(f"{len(missing)} pair(s) are not in manifest.jsonl, so their style is unknown",
                                  missing[0], hint="remove them, or remake the set with `toonify-fast distill pairs`")
        self.conditions = [conditions[real.stem] for real, _ in self.pairs] if self.styles else []
        self.fit = _fit(res)
        self.geometric = _geometric() if augment else None
        self.photometric = _photometric() if augment and photometric else None

    def set_epoch(self, epoch: int) -> None:
        """Draw another augmentation of every item (call it before each epoch, in every process)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        real, toon = (self.fit(image=_read(path))["image"] for path in self.pairs[index])
        # Separate streams, so switching photometric off leaves the geometry of every item unchanged.
        geometric_seed, photometric_seed = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(2)
        if self.geometric is not None:
            self.geometric.set_random_seed(int(geometric_seed))
            out = self.geometric(image=real, toon=toon)
            real, toon = out["image"], out["toon"]
        if self.photometric is not None:
            self.photometric.set_random_seed(int(photometric_seed))
            real = self.photometric(image=real)["image"]
        images = torch.from_numpy(hwc_to_nchw(real)[0]), torch.from_numpy(hwc_to_nchw(toon)[0])
        if not self.styles:
            return images
        style, strength = self.conditions[index]
        return *images, torch.tensor(style), torch.tensor(strength, dtype=torch.float32)
