"""Faces in photos: dlib detection and 68-point landmarks, the FFHQ crop, and pasting a converted
crop back into the photo.

    aligner = FaceAligner()
    for face in aligner.detect(photo):                     # largest first
        crop = align(photo, face.quad, 256)                # [256, 256, 3] uint8, FFHQ-aligned
        photo = paste_back(photo, toonify(crop), face.quad)

Coordinates are (x, y) in image pixels with pixel centres on integers (dlib's convention).
The dlib models come from the face_recognition_models package: nothing is downloaded.
"""
from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from runtime.common import ToonifyError

# Detection runs on a copy whose longer side is at most this: dlib's HOG cost grows with the pixel
# count, and with one upsample it still finds faces down to about 40 px in the copy. Video
# detects on every few frames and must keep pace with them, so it takes a smaller copy (the
# tracker's landmarks are still placed at full resolution).
DETECT_SIDE = 1024
VIDEO_DETECT_SIDE = 640
DEFAULT_FEATHER = 0.1


@dataclass(frozen=True)
class Face:
    box: tuple[int, int, int, int]     # (left, top, right, bottom) in image pixels, clipped to the image
    landmarks: np.ndarray              # [68, 2] float32 (x, y), dlib's 68-point layout
    quad: np.ndarray                   # [4, 2] float32 FFHQ crop corners: top-left, bottom-left, bottom-right, top-right


def _model_file(name: str) -> Path:
    # face_recognition_models' __init__ imports pkg_resources (missing in new setuptools): find
    # the package's folder without importing it.
    spec = importlib.util.find_spec("face_recognition_models")
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = Path(folders[0]) / "models" / name if folders else None
    if path is None or not path.is_file():
        raise ToonifyError(f"dlib model {name} not found (the face_recognition_models package is missing)",
                           hint="pip install face_recognition_models")
    return path


@functools.lru_cache(maxsize=None)
def _dlib_models():
    """dlib's HOG frontal face detector and the 68-point shape predictor, loaded once per process."""
    try:
        import dlib
    except ImportError:
        raise ToonifyError("face detection needs dlib, which is not installed",
                           hint="pip install dlib-bin  (or use --no-align on images that are already aligned faces)") from None
    return dlib, dlib.get_frontal_face_detector(), dlib.shape_predictor(str(_model_file("shape_predictor_68_face_landmarks.dat")))


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
        raise ValueError(f"expected an [H, W, 3|4] uint8 image, got {image.shape} {image.dtype}")
    return np.ascontiguousarray(image[..., :3])


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """[68, 2] dlib landmarks -> [4, 2] float32 FFHQ crop quad (top-left, bottom-left, bottom-right, top-right).

    The FFHQ rule: an oriented square centred at eye_avg + 0.1 * eye_to_mouth, its x axis between
    the eye line and the perpendicular of eye_to_mouth, half-side max(|eye_to_eye| * 2.0,
    |eye_to_mouth| * 1.8) (so the side is twice that).
    """
    lm = np.asarray(landmarks, np.float64)
    eye_left, eye_right = lm[36:42].mean(0), lm[42:48].mean(0)
    eye_avg, eye_to_eye = (eye_left + eye_right) / 2, eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) / 2
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8) / np.hypot(*x)
    y = np.array([-x[1], x[0]])
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y]).astype(np.float32)


def crop_transform(quad: np.ndarray, size: int) -> np.ndarray:
    """The [2, 3] float64 affine map from a size x size crop of `quad` to the image: crop point p
    lies at A[:, :2] @ p + A[:, 2], both in continuous coordinates (pixel i spans [i, i+1)), so the
    crop's corners (0, 0), (0, size), (size, size), (size, 0) land on quad + 0.5.

    The one definition of the crop: align samples through it and the browser's align.js
    reproduces it (tests/runtime/alignment_vectors.json).
    """
    q = np.asarray(quad, np.float64) + 0.5                  # pixel centres on integers -> continuous
    tl, bl, tr = q[0], q[1], q[3]
    return np.stack([(tr - tl) / size, (bl - tl) / size, tl], axis=1)


def _warp(src: Image.Image, out_size: tuple[int, int], to_src: np.ndarray,
          resample: Image.Resampling = Image.Resampling.BILINEAR) -> Image.Image:
    """Affine warp of `src`: output point p (continuous coordinates, pixel i spans [i, i+1))
    samples src at to_src[:, :2] @ p + to_src[:, 2]; output points outside src are 0.

    Bilinear by default, as FFHQ's own alignment: a third of bicubic's cost on a 256 px crop. An
    interpolating warp that shrinks aliases, so when it would, the source is first resized
    (Lanczos, antialiased) by the warp's scale and the warp left to rotate and shift at about 1:1.
    """
    scale = np.sqrt(abs(np.linalg.det(to_src[:, :2])))     # source pixels per output pixel
    if scale > 1:
        w, h = src.size
        src = src.resize((max(1, round(w / scale)), max(1, round(h / scale))), Image.Resampling.LANCZOS,
                         reducing_gap=3.0)
        to_src = np.diag([src.width / w, src.height / h]) @ to_src
    return src.transform(out_size, Image.Transform.AFFINE, tuple(to_src.ravel()), resample=resample)


@functools.lru_cache(maxsize=16)
def _feather_mask(size: int, feather: float) -> Image.Image:
    """[size, size] blend mask ("L", 255 = the toon) in crop space: 255 inside, falling smoothly to
    0 over the outer `feather` fraction of the side (0: 255 everywhere; the warp's zero fill makes
    the hard edge). It depends on the crop size and feather only, so video computes it once."""
    u = (np.arange(size) + 0.5) / size                      # pixel centres, in units of the side
    edge = np.minimum(u, 1 - u)
    edge = np.minimum(edge[:, None], edge[None, :])
    if feather > 0:
        ramp = np.clip(edge / feather, 0, 1)
        mask = ramp * ramp * (3 - 2 * ramp)                 # smoothstep: no visible kink at the edge
    else:
        mask = np.ones_like(edge)
    return Image.fromarray(np.rint(mask * 255).astype(np.uint8))


def align(image: np.ndarray, quad: np.ndarray, size: int) -> np.ndarray:
    """Warp the quad of an [H, W, 3|4] uint8 image to a [size, size, 3] uint8 RGB crop.

    Antialiased (see _warp); parts of the quad outside the photo are mirrored in, as FFHQ pads
    them, so the model never sees a black border.
    """
    rgb = _rgb(image)
    q = np.asarray(quad, np.float64) + 0.5                  # continuous coordinates
    margin = 4 + int(np.hypot(*(q[3] - q[0])) / size) * 4   # room for the resampling kernels
    x0, y0 = np.floor(q.min(0)).astype(int) - margin
    x1, y1 = np.ceil(q.max(0)).astype(int) + margin
    h, w = rgb.shape[:2]
    if x0 >= w or y0 >= h or x1 <= 0 or y1 <= 0:
        raise ValueError(f"quad {np.asarray(quad).tolist()} lies outside the {w}x{h} image")
    region = rgb[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)]
    region = np.pad(region, ((max(-y0, 0), max(y1 - h, 0)), (max(-x0, 0), max(x1 - w, 0)), (0, 0)), mode="reflect")
    to_src = crop_transform(quad, size)
    to_src[:, 2] -= (x0, y0)                                # into the padded region's coordinates
    return np.asarray(_warp(Image.fromarray(region), (size, size), to_src))


def paste_back(image: np.ndarray, toon_crop: np.ndarray, quad: np.ndarray,
               feather: float = DEFAULT_FEATHER) -> np.ndarray:
    """Warp a [S, S, 3] uint8 crop (as made by `align` from `quad`) back into an [H, W, 3|4] uint8 image.

    The crop is blended with a mask that is 1 inside and falls smoothly to 0 over the outer
    `feather` fraction of the crop's side (0: a hard edge). An alpha channel is left untouched.
    Returns a new array; pixels outside the quad are unchanged.
    """
    image = np.asarray(image)
    _rgb(image)
    toon = np.asarray(toon_crop)
    if toon.ndim != 3 or toon.shape[2] != 3 or toon.shape[0] != toon.shape[1] or toon.dtype != np.uint8:
        raise ValueError(f"expected a square [S, S, 3] uint8 crop, got {toon.shape} {toon.dtype}")
    out = image.copy()
    h, w = image.shape[:2]
    size = toon.shape[0]
    q = np.asarray(quad, np.float64) + 0.5
    x0, y0 = np.clip(np.floor(q.min(0)).astype(int), 0, (w, h))
    x1, y1 = np.clip(np.ceil(q.max(0)).astype(int), 0, (w, h))
    if x1 <= x0 or y1 <= y0:
        return out
    tl, bl, tr = q[0], q[1], q[3]
    to_crop = np.linalg.inv(np.stack([(tr - tl) / size, (bl - tl) / size], axis=1))  # offset from tl -> crop
    warp = np.concatenate([to_crop, (to_crop @ ((x0, y0) - tl))[:, None]], axis=1)
    box = (x1 - x0, y1 - y0)
    # The mask is smooth, so sampled directly (no antialiasing shrink) it does not alias.
    mask = _feather_mask(size, float(feather)).transform(box, Image.Transform.AFFINE, tuple(warp.ravel()),
                                                         resample=Image.Resampling.BILINEAR)
    region = Image.fromarray(out[y0:y1, x0:x1, :3])
    # Bicubic: at about 1:1 bilinear visibly softens the toon (what the user sees), for little time.
    region.paste(_warp(Image.fromarray(toon), box, warp, Image.Resampling.BICUBIC), mask=mask)  # blends in C
    out[y0:y1, x0:x1, :3] = np.asarray(region)
    return out


class FaceAligner:
    """Finds faces with dlib (HOG detector on the grey image, one upsample) and their 68 landmarks.

    detect_scale: the factor the image is resized by before detection (1.0: full size; None: so
    that the longer side is at most DETECT_SIDE). Landmarks are always found at full resolution.
    """

    @classmethod
    def for_frames(cls, shape: tuple[int, ...], upsample: int = 1) -> "FaceAligner":
        """An aligner for video frames of `shape` ([H, W, ...]): detection on a copy at most VIDEO_DETECT_SIDE."""
        return cls(min(1.0, VIDEO_DETECT_SIDE / max(shape[:2])), upsample)

    def __init__(self, detect_scale: float | None = None, upsample: int = 1):
        if detect_scale is not None and not 0 < detect_scale <= 1:
            raise ValueError(f"detect_scale must be in (0, 1], got {detect_scale}")
        self.detect_scale, self.upsample = detect_scale, upsample
        self._dlib, self._detector, self._predictor = _dlib_models()

    def detect(self, image: np.ndarray, max_faces: int | None = None) -> list[Face]:
        """Faces in an [H, W, 3|4] uint8 RGB(A) image, largest first (at most `max_faces`)."""
        rgb = _rgb(image)
        h, w = rgb.shape[:2]
        scale = self.detect_scale or min(1.0, DETECT_SIDE / max(h, w))
        # On grey dlib's HOG computes one gradient a pixel instead of three (and keeping the
        # strongest): cheaper, and the conversion costs far less than it saves.
        grey = Image.fromarray(rgb).convert("L")
        if scale < 1:
            grey = grey.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
        boxes = []
        for r in self._detector(np.asarray(grey), self.upsample):
            left, top = max(0, round(r.left() / scale)), max(0, round(r.top() / scale))
            right, bottom = min(w - 1, round(r.right() / scale)), min(h - 1, round(r.bottom() / scale))
            boxes.append((left, top, right, bottom))
        boxes.sort(key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)
        faces = []
        for box in boxes[:max_faces]:
            lm = self.landmarks(rgb, box)
            faces.append(Face(box=box, landmarks=lm, quad=ffhq_quad(lm)))
        return faces

    def landmarks(self, image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """dlib's 68 landmarks [68, 2] float32 (x, y) of the face in `box` (left, top, right, bottom)."""
        shape = self._predictor(_rgb(image), self._dlib.rectangle(*(int(v) for v in box)))
        return np.array([(p.x, p.y) for p in shape.parts()], np.float32)
