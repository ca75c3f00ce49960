"""Images at the edges: reading any photo safely, writing atomically, and the one pair of
conversions between the edge convention (HWC uint8 RGB) and the model convention
(NCHW float32 in [-1, 1]).

    rgb, alpha = read_image("photo.jpg")   # [H, W, 3] uint8 RGB upright, [H, W] uint8 or None
    x = hwc_to_nchw(np.stack(images))      # [N, H, W, 3] uint8 -> [N, 3, H, W] float32 in [-1, 1]
    images = nchw_to_hwc(y)                # and back, clipped and rounded
    write_image("photo_toon.png", rgb, alpha)
"""
from __future__ import annotations

import io
import os
import re
import stat
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from runtime.common import WRITE_HINT, ToonifyError, WriteError, atomic_path, output_suffix

# Refuse decompression bombs: a small file can claim billions of pixels. 80 MP is more than any
# camera photo; the caller can raise it.
MAX_PIXELS = 80_000_000
PIXELS_HINT = "downscale it, or raise the limit (--max-megapixels)"
# 16-bit grayscale: Pillow opens 16-bit PNG and TIFF as I;16*, versions before 10 as I.
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
WITH_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")
ALPHA_FORMATS = ("PNG", "WEBP", "TIFF")
# What a folder of images holds: photos, frames, pairs and calibration images alike.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
FORMATS_HINT = "use JPEG, PNG, WebP, BMP or TIFF"


class ImageError(ToonifyError):
    """An image that cannot be read or written: missing, not an image, truncated, too big, unwritable."""


def read_image(path: str | os.PathLike, max_pixels: int | None = MAX_PIXELS) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a photo -> ([H, W, 3] uint8 sRGB, [H, W] uint8 alpha or None), turned upright per EXIF.

    Any mode Pillow opens is converted properly: palette and grayscale to RGB, CMYK and embedded
    ICC profiles to sRGB, 16-bit grayscale scaled (not clipped) to 8 bits; transparency becomes the
    alpha channel. Raises ImageError naming the file when it is missing, not an image, truncated,
    or larger than `max_pixels` (checked from the header, before decoding).
    """
    path = Path(path)
    return _read(path, path, max_pixels)


def decode_image(data: bytes, max_pixels: int | None = MAX_PIXELS, name: str = "upload") -> tuple[np.ndarray, np.ndarray | None]:
    """read_image for bytes in memory (an HTTP upload): the same conversions, limits and errors,
    which name `name` instead of a file; an empty or missing file reads as truncated."""
    if not data:
        raise ImageError("empty upload: not an image", name, hint=FORMATS_HINT)
    return _read(io.BytesIO(data), Path(name), max_pixels)


def encode_image(rgb: np.ndarray, alpha: np.ndarray | None = None, fmt: str = "PNG", quality: int = 95) -> bytes:
    """[H, W, 3] uint8 RGB (+ alpha where `fmt` keeps it) -> the bytes of a PNG, JPEG or WebP file."""
    im = Image.fromarray(np.ascontiguousarray(rgb, np.uint8))
    if alpha is not None and fmt in ALPHA_FORMATS:
        im.putalpha(Image.fromarray(np.ascontiguousarray(alpha, np.uint8)))
    out = io.BytesIO()
    im.save(out, format=fmt, **({"quality": quality} if fmt in ("JPEG", "WEBP") else {}))
    return out.getvalue()


def _read(source, path: Path, max_pixels: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None         # missing or unreadable: Pillow's error below says which
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        # A named pipe or a device: opening it may wait forever for a writer, reading it never end.
        raise ImageError("not a regular file (a named pipe, device or socket): refused", path,
                             hint="copy it into a file first")
    try:
        with warnings.catch_warnings():
            # Our own limit below replaces Pillow's warning (it fires at 89 MP whatever we allow).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                _check_pixels(path, *im.size, max_pixels)
                im.load()
                return _to_rgb(_upright(im))
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError("no such file", path) from None
    except IsADirectoryError:
        raise ImageError("is a folder, not an image", path) from None
    except PermissionError:
        raise ImageError("cannot read it: permission denied", path) from None
    except Image.DecompressionBombError:
        # Pillow refuses past twice its own limit before our check sees the size.
        cap = 2 * Image.MAX_IMAGE_PIXELS
        raise ImageError(f"more than {cap / 1e6:.0f} MP, over the limit of {min(max_pixels or cap, cap) / 1e6:g} MP",
                         path, hint=PIXELS_HINT) from None
    except UnidentifiedImageError:
        raise ImageError("not an image (or in a format Pillow cannot read)", path, hint=_not_image_hint(path)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"truncated or corrupt image ({e})", path) from None


# Files that are videos: `toonify-fast IMAGE` points them to `toonify-fast video`.
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")


def _not_image_hint(path: Path) -> str:
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return f"a video? convert it with: toonify-fast video {path} -o {path.stem}_toon.mp4"
    return FORMATS_HINT


def natural_key(path: Path) -> list:
    """Sort key of a file name with its numbers compared as numbers (frame_2 before frame_10)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def list_images(folder: str | os.PathLike, key: Callable[[Path], object] | None = None) -> tuple[list[Path], list[Path]]:
    """(the image files of `folder`, its other entries), each sorted by `key` (default: the name).

    An image file is a regular file with one of IMAGE_SUFFIXES (any case). Dot files are neither:
    they are atomic_path's unfinished writes of a job still running, or hidden files.
    """
    entries = sorted((p for p in Path(folder).iterdir() if not p.name.startswith(".")), key=key)
    images = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    chosen = set(images)
    return images, [p for p in entries if p not in chosen]


def _check_pixels(path: Path, width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels and width * height > max_pixels:
        raise ImageError(f"{width}x{height} is {width * height / 1e6:.0f} MP, over the limit of "
                         f"{max_pixels / 1e6:g} MP", path, hint=PIXELS_HINT)


def _upright(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except (ValueError, KeyError, TypeError, OSError):
        return im    # an unreadable orientation tag: keep the pixels as stored rather than fail


def _to_rgb(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    if im.mode in SIXTEEN_BIT:
        # Pillow's convert("L") clips 16-bit values at 255 (a white image); scale 0..65535 instead.
        gray = np.clip(np.rint(np.asarray(im, np.float32) / 257), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2)), None
    if im.mode == "P" or (im.mode in ("L", "RGB") and "transparency" in im.info):
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    alpha = None
    if im.mode in WITH_ALPHA:
        im = im.convert("RGBA")
        alpha = np.asarray(im.getchannel("A"))
    im = _to_srgb(im)
    return np.ascontiguousarray(np.asarray(im.convert("RGB"))), alpha


def _to_srgb(im: Image.Image) -> Image.Image:
    """Apply an embedded ICC profile (CMYK prints, wide-gamut phones); without one, Pillow's conversion."""
    icc = im.info.get("icc_profile")
    if not icc or im.mode not in ("RGB", "RGBA", "CMYK"):
        return im
    try:
        return ImageCms.profileToProfile(im, ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                         ImageCms.createProfile("sRGB"),
                                         outputMode="RGBA" if im.mode == "RGBA" else "RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return im    # a broken profile: the plain conversion is still a good picture


def image_format(path: str | os.PathLike) -> str | None:
    """The Pillow format write_image writes `path` in (from its extension; PNG for a device or pipe
    without one), or None where there is none."""
    fmt = Image.registered_extensions().get(output_suffix(Path(path), ".png").lower())
    return fmt if fmt in Image.SAVE else None


def write_image(path: str | os.PathLike, rgb: np.ndarray, alpha: np.ndarray | None = None, quality: int = 95) -> Path:
    """Write [H, W, 3] uint8 RGB (+ [H, W] uint8 alpha where the format keeps it) atomically.

    The format follows the extension (.png, .jpg, .webp, .bmp, ...); JPEG and BMP drop the alpha.
    A device or pipe without an extension (/dev/stdout) gets PNG, written into it in place.
    Raises ImageError naming the file for an unknown extension or an unwritable place.
    """
    path = Path(path)
    fmt = image_format(path)
    if fmt is None:
        raise ImageError(f"unknown image format {path.suffix or '(no extension)'!r}", path,
                         hint="use .png, .jpg, .webp, .bmp or .tif")
    im = Image.fromarray(np.ascontiguousarray(rgb, np.uint8))
    if alpha is not None and fmt in ALPHA_FORMATS:
        im.putalpha(Image.fromarray(np.ascontiguousarray(alpha, np.uint8)))
    options = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    try:
        with atomic_path(path) as tmp:
            im.save(tmp, format=fmt, **options)
    except OSError as e:
        raise ImageError(f"cannot write it ({e.strerror or e})", path, hint=WRITE_HINT) from None
    except WriteError as e:
        raise ImageError(e.reason, path, hint=e.hint) from None
    return path


def resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """[H, W, C] uint8 -> [height, width, C] uint8, Lanczos (antialiased when shrinking)."""
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.LANCZOS))


LABEL_PAD = 4          # pixels of white around a label's text


def _label_font():
    """PIL's default font and a function text -> (width, height) in it."""
    from PIL import ImageDraw, ImageFont
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def size(text: str) -> tuple[int, int]:
        _, _, right, bottom = measure.textbbox((0, 0), text, font=font)
        return right, bottom
    return font, size


def grid_margins(row_labels: list[str] | None = None, col_labels: list[str] | None = None) -> tuple[int, int]:
    """(left, top): where image_grid puts its first image with these labels (0, 0 without any)."""
    _, size = _label_font()
    left = max(size(t)[0] for t in row_labels) + 2 * LABEL_PAD if row_labels else 0
    top = max(size(t)[1] for t in col_labels) + 2 * LABEL_PAD if col_labels else 0
    return left, top


def image_grid(rows: list[list[np.ndarray]], tile: int | None = None, row_labels: list[str] | None = None,
               col_labels: list[str] | None = None) -> np.ndarray:
    """Rows of [H, W, 3] uint8 images (all the same size, or resized to tile x tile first) ->
    one [len(rows) * H, cols * W, 3] uint8 grid: sample grids, training samples, contact sheets.

    With `row_labels` (one per row) a white column on the left names each row; with `col_labels`
    (one per column) a white band on top names each column; black text in PIL's default font.
    Without labels the grid is the images alone, edge to edge.
    """
    if tile is not None:
        rows = [[resize(image, tile, tile) for image in row] for row in rows]
    grid = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    if not row_labels and not col_labels:
        return grid
    for labels, count, what in ((row_labels, len(rows), "rows"), (col_labels, len(rows[0]), "columns")):
        if labels and len(labels) != count:
            raise ValueError(f"{len(labels)} labels for {count} {what}")
    from PIL import ImageDraw
    font, size = _label_font()
    tile_h, tile_w = rows[0][0].shape[:2]
    left, top = grid_margins(row_labels, col_labels)
    sheet = Image.new("RGB", (left + grid.shape[1], top + grid.shape[0]), "white")
    sheet.paste(Image.fromarray(grid), (left, top))
    draw = ImageDraw.Draw(sheet)
    for i, text in enumerate(row_labels or ()):
        draw.text((LABEL_PAD, top + i * tile_h + (tile_h - size(text)[1]) // 2), text, fill="black", font=font)
    for j, text in enumerate(col_labels or ()):
        draw.text((left + j * tile_w + max((tile_w - size(text)[0]) // 2, 0), LABEL_PAD), text, fill="black", font=font)
    return np.asarray(sheet)


def hwc_to_nchw(images: np.ndarray) -> np.ndarray:
    """[N, H, W, 3] (or [H, W, 3]) uint8 RGB -> [N, 3, H, W] float32 in [-1, 1]: x = u8 / 127.5 - 1."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected [N, H, W, 3] uint8 RGB, got {images.shape} {images.dtype}")
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(127.5) - np.float32(1)


def nchw_to_hwc(x: np.ndarray) -> np.ndarray:
    """[N, 3, H, W] float in [-1, 1] -> [N, H, W, 3] uint8 RGB (values outside [-1, 1] are clipped)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected [N, 3, H, W], got {x.shape}")
    # In place on one temporary: the chained expression would allocate four (bench/runtime.py times the whole run).
    t = x + np.float32(1)
    t *= np.float32(127.5)
    np.clip(t, 0, 255, out=t)
    np.rint(t, out=t)
    return np.ascontiguousarray(t.astype(np.uint8).transpose(0, 2, 3, 1))
