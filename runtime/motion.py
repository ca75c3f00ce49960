"""The face's own motion, measured from its pixels: phase correlation of the face region between
consecutive frames, refined by Lucas-Kanade least squares. Smoothing uses it to tell the face
moving from its landmarks wobbling, and the video report uses it to measure how much the face
slides within its crop.

    probe = FaceMotion()
    shift = probe(track_id, rgb_frame, params)    # [dx, dy] frame pixels since the track's last frame, or None

dlib's landmarks wobble from frame to frame by a fraction of what a dancing face moves.
Averaging the landmarks over time (a plain Gaussian) cannot remove the first without lagging
behind the second. Phase correlation finds the face's translation regardless of the landmarks;
refined, far more precisely than the landmarks place the face (tests/runtime/test_motion.py and
bench/video.py measure both against a face moving along a known path, runtime.stability).
Smoothing follows it exactly and averages only what it does not explain
(runtime.tracking.GaussianWindow, OneEuroSmoother), so the crop's own jitter is the
measurement's. The tracker moves dlib's landmark box by it before placing the landmarks
(runtime.tracking.FaceTracker), and CropSlip, the report's measure of how far the face slides
within its crop, uses it too.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

PATCH = 64              # the face region is resampled to PATCH x PATCH pixels before correlating
MIN_PEAK = 0.08         # a correlation peak below this (of a perfect match's 1.0) is no measurement
MAX_SHIFT = 0.25        # nor is a shift beyond this fraction of the patch,
MAX_DISAGREE = 0.05     # nor one this far (as a fraction of the crop side) from the landmarks' own shift


def grey(rgb: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 RGB -> [H, W] float32 luma (ITU-R 601, as PIL's "L")."""
    return rgb @ np.array([0.299, 0.587, 0.114], np.float32)


def _hann(n: int) -> np.ndarray:
    w = np.hanning(n + 2)[1:-1].astype(np.float32)
    return np.outer(w, w)


WINDOW = _hann(PATCH)


def _window(n: int) -> np.ndarray:
    """The [n, n] Hann window patches are weighted by (PATCH's computed once)."""
    return WINDOW if n == PATCH else _hann(n)


def _subpixel(values: np.ndarray, k: int) -> float:
    """Offset of a peak at index k (circular) by a parabola through it and its two neighbours."""
    left, centre, right = values[k - 1], values[k], values[(k + 1) % len(values)]
    curvature = left - 2 * centre + right
    return float(0.5 * (left - right) / curvature) if curvature < 0 else 0.0


def phase_shift(before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, float]:
    """Translation of `after` against `before` ([N, N] float32 each, the same N): ([dx, dy] in
    pixels, so that after(p) ~ before(p - shift)) and the correlation peak's height, 1.0 for a
    perfect circular shift, near 0 for unrelated patches."""
    n = before.shape[0]
    spectra = [np.fft.rfft2((p - p.mean()) * _window(n)) for p in (before, after)]
    cross = spectra[1] * np.conj(spectra[0])
    surface = np.fft.irfft2(cross / (np.abs(cross) + 1e-9), s=(n, n))
    y, x = np.unravel_index(int(np.argmax(surface)), surface.shape)
    shift = np.array([x + _subpixel(surface[y], x), y + _subpixel(surface[:, x], y)])
    return (shift + n / 2) % n - n / 2, float(surface[y, x])


def face_patch(rgb: np.ndarray, params: np.ndarray) -> tuple[np.ndarray, float]:
    """The face at crop params [cx, cy, log half-side, angle] (runtime.tracking.quad_params) in an
    [H, W, 3] uint8 frame: the axis-aligned square of side half the crop's (eyebrows to chin)
    around its centre, grey, resampled (antialiased) to [PATCH, PATCH] float32; and frame pixels
    per patch pixel. Parts outside the frame repeat its edge, so a border does not correlate."""
    h, w = rgb.shape[:2]
    side = math.exp(params[2])
    x0, y0 = params[0] + 0.5 - side / 2, params[1] + 0.5 - side / 2     # pixel i spans [i, i + 1)
    ix0, iy0 = math.floor(x0), math.floor(y0)
    ix1, iy1 = math.ceil(x0 + side), math.ceil(y0 + side)
    rows, cols = np.clip(np.arange(iy0, iy1), 0, h - 1), np.clip(np.arange(ix0, ix1), 0, w - 1)
    region = grey(rgb[rows[:, None], cols])
    box = (x0 - ix0, y0 - iy0, x0 - ix0 + side, y0 - iy0 + side)
    patch = Image.fromarray(region, mode="F").resize((PATCH, PATCH), Image.Resampling.BILINEAR, box=box)
    return np.asarray(patch, np.float32), side / PATCH


def refine(before: np.ndarray, rgb: np.ndarray, at: np.ndarray, shift: np.ndarray, steps: int = 3) -> np.ndarray:
    """Lucas-Kanade refinement of a face's translation: `before` is face_patch(previous frame, at),
    `shift` a first estimate ([dx, dy] frame pixels, from phase_shift); returns the shift that best
    matches the face region of `rgb` (the next frame) to `before`, by least squares on the
    brightness gradient (Hann-weighted, brightness offset removed). Phase correlation weighs every
    frequency alike, the noisy high ones too; this weighs each pixel by its gradient, which cuts the
    error of a step many times on a face in sensor noise (runtime.stability, tests/runtime/test_motion.py)."""
    gy, gx = np.gradient(before)
    weights = _window(before.shape[0])
    g = np.stack([gx, gy])
    normal = np.einsum("ihw,jhw,hw->ij", g, g, weights)
    if np.linalg.cond(normal) > 1e6:              # a flat patch: nothing to refine on
        return shift
    total = np.asarray(shift, np.float64).copy()
    for _ in range(steps):
        moved = np.array(at, np.float64)
        moved[:2] += total
        after, scale = face_patch(rgb, moved)
        # after(p) = before(p + (total - true) / scale) ~ before(p) + g . (total - true) / scale
        diff = after - before
        diff -= (weights * diff).sum() / weights.sum()
        step = np.linalg.solve(normal, np.einsum("ihw,hw,hw->i", g, diff, weights))
        total -= step * scale
        if np.abs(step).max() <= 0.01:             # settled: a further step would move it < 0.01 patch px
            break
    # Still moving by the last step, or far from the first estimate: the linearisation did not
    # hold (the first estimate was off by pixels); keep that estimate.
    settled = np.abs(step).max() <= 0.05 and np.abs(total - shift).max() <= 2 * scale
    return total if settled else np.asarray(shift, np.float64)


class FaceMotion:
    """Per track, the face's translation since the track's previous frame, in frame pixels. The
    face region is the one of the previous frame's crop, cut from both frames (so the face's own
    motion, not the crop's, is what moves inside it). None for a track's first frame and where the
    measurement is unreliable (occlusion, a turn, motion blur), where the landmarks' own shift
    stands in. `counts` says how often each happened; `per_frame()` how far the face moved on
    average, as a fraction of the crop side per frame (what a crop that follows it must move)."""

    def __init__(self):
        self.previous: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.counts = {"measured": 0, "from_landmarks": 0}
        self.moved = 0.0

    def pixels(self, track_id: int, rgb: np.ndarray) -> np.ndarray | None:
        """The face's translation since the track's previous frame from the pixels alone ([dx, dy]
        frame pixels; rgb: [H, W, 3] uint8): None for a track's first frame or no clear match.
        Needs no landmarks, so the tracker can move its landmark box by it first (FaceTracker)."""
        last = self.previous.get(track_id)
        if last is None:
            return None
        before, at = last
        after, scale = face_patch(rgb, at)
        offset, peak = phase_shift(before, after)
        if peak < MIN_PEAK or np.abs(offset).max() > MAX_SHIFT * PATCH:
            return None
        return refine(before, rgb, at, offset * scale)

    def __call__(self, track_id: int, rgb: np.ndarray, params: np.ndarray) -> np.ndarray | None:
        """rgb: [H, W, 3] uint8 frame; params: this frame's raw crop params of the track."""
        return self.settle(track_id, rgb, params, self.pixels(track_id, rgb))

    def settle(self, track_id: int, rgb: np.ndarray, params: np.ndarray, pixels: np.ndarray | None) -> np.ndarray | None:
        """The shift for this frame, given pixels(track_id, rgb) measured on it: the pixels' where
        they agree with the landmarks, else the landmarks'. Then `rgb` and `params` become the
        track's previous frame."""
        last = self.previous.get(track_id)
        shift = None
        if last is not None:
            at = last[1]
            landmarks = np.asarray(params[:2], np.float64) - at[:2]
            # dlib's landmarks wobble by far less than this: more disagreement means the
            # pixels matched something else (background, a hand), or the landmarks jumped faces.
            reliable = pixels is not None and np.hypot(*(pixels - landmarks)) <= MAX_DISAGREE * 2 * math.exp(at[2])
            shift = pixels if reliable else landmarks
            self.counts["measured" if reliable else "from_landmarks"] += 1
            self.moved += float(np.hypot(*shift)) / (2 * math.exp(at[2]))
        self.previous[track_id] = face_patch(rgb, params)[0], np.asarray(params, np.float64)
        return shift

    def forget(self, keep: set[int]) -> None:
        """Drop the tracks not in `keep` (they ended)."""
        self.previous = {k: v for k, v in self.previous.items() if k in keep}

    def per_frame(self) -> float | None:
        steps = sum(self.counts.values())
        return self.moved / steps if steps else None


class CropSlip:
    """How far the face moves within its crop from one frame to the next, relative to the crop
    side, measured from the pixels each frame's own crop holds (phase correlation, refined): what
    a steady crop keeps small.
    (The crop's own frame-to-frame change, runtime.tracking.CropMotion, also counts the face's
    real motion, which a crop must follow.) Mean over all faces and consecutive frames."""

    def __init__(self):
        self.previous: dict[int, np.ndarray] = {}
        self.total, self.count = 0.0, 0

    def add(self, track_id: int, rgb: np.ndarray, params: np.ndarray) -> None:
        """rgb: [H, W, 3] uint8 frame; params: the crop used for the track on it."""
        patch, scale = face_patch(rgb, params)
        last = self.previous.get(track_id)
        if last is not None:
            shift = refine(last, rgb, params, phase_shift(last, patch)[0] * scale)
            self.total += float(np.hypot(*shift)) / (2 * math.exp(params[2]))
            self.count += 1
        self.previous[track_id] = patch

    def forget(self, keep: set[int]) -> None:
        self.previous = {k: v for k, v in self.previous.items() if k in keep}

    def summary(self) -> float | None:
        return self.total / self.count if self.count else None
