"""Faces over time: a tracker that follows each face from frame to frame cheaply, the crop
reduced to four numbers, Gaussian (offline) and One Euro (live) smoothing, and crop-motion metrics.

    tracker, smoother = FaceTracker(every=5), GaussianWindow(sigma=3.0)
    for track_id, quad in tracker(frame):
        p = quad_params(quad)
        smoother.add(track_id, index, p, tracker.shifts[track_id])   # the face's motion guides (runtime.motion)
    quad = params_quad(smoother.smoothed(track_id, index))    # once `lookahead` more frames were added

Video needs a steady crop: dlib's landmarks wobble by a few pixels from frame to frame, which
on a 256 px toon face is visible shimmer. Smoothing works on (centre, log scale, angle), where
averaging is meaningful, not on quad corners, and on each track (one face) separately; given the
face's measured motion, it averages only what that motion does not explain.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from runtime.faces import Face, FaceAligner, ffhq_quad
from runtime.motion import FaceMotion

CUT_CHANGE = 20.0        # mean change (0-255) of a 64 px wide thumbnail that marks a scene cut
IDLE_EVERY = 5           # frames between detections while no face is followed (and no cut)
FINE_EVERY = 30          # frames between fine (upsampled) detections at the least: 1 s at 30 fps
SAME_FACE = 0.3          # boxes overlapping by more than this (intersection over union) are one face


def quad_params(quad: np.ndarray) -> np.ndarray:
    """FFHQ quad [4, 2] (TL, BL, BR, TR) -> [cx, cy, log half-side, angle]: what smoothing acts on."""
    q = np.asarray(quad, np.float64)
    x = (q[2] + q[3] - q[0] - q[1]) / 4
    return np.array([*q.mean(0), math.log(math.hypot(*x)), math.atan2(x[1], x[0])])


def params_quad(p: np.ndarray) -> np.ndarray:
    """The inverse of quad_params: [4] -> [4, 2] float32 quad."""
    c, s = np.asarray(p[:2], np.float64), math.exp(p[2])
    x = s * np.array([math.cos(p[3]), math.sin(p[3])])
    y = np.array([-x[1], x[0]])
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y]).astype(np.float32)


class GaussianWindow:
    """Offline smoothing in bounded memory: a track's params at frame t are the Gaussian-weighted
    mean (sigma in frames) over its frames t - 3 sigma .. t + 3 sigma, the weights renormalised
    where the track starts or ends (so the crop is not pulled toward zero there). A value is final
    once `lookahead` later frames have been added, or the input has ended.

    Guided (each `add` given the face's measured shift since the track's previous frame,
    runtime.motion.FaceMotion): the centre follows the summed shifts exactly, and only what they
    leave unexplained (landmark wobble, slow drift) is averaged, so a moving face is not lagged."""

    def __init__(self, sigma: float):
        self.sigma, self.lookahead = sigma, (int(math.ceil(3 * sigma)) if sigma > 0 else 0)
        self.tracks: dict[int, deque] = {}

    def add(self, track_id: int, index: int, params: np.ndarray, shift: np.ndarray | None = None) -> None:
        rows = self.tracks.setdefault(track_id, deque(maxlen=2 * self.lookahead + 1))
        guide = _guide(rows[-1][2] if rows else None, shift)
        rows.append((index, unwrap(params, rows[-1][1] + rows[-1][2] if rows else None) - guide, guide))

    def smoothed(self, track_id: int, index: int) -> np.ndarray:
        rows = [(i, r, g) for i, r, g in self.tracks[track_id] if abs(i - index) <= self.lookahead]
        guide = next(g for i, _, g in rows if i == index)
        if self.sigma <= 0:
            return rows[0][1] + rows[0][2]
        w = np.exp(-0.5 * ((np.array([i for i, _, _ in rows]) - index) / self.sigma) ** 2)
        return guide + w @ np.array([r for _, r, _ in rows]) / w.sum()

    def forget(self, before: int) -> None:
        """Drop tracks whose last frame is before `before` (they ended)."""
        self.tracks = {k: rows for k, rows in self.tracks.items() if rows[-1][0] >= before}


def _guide(previous: np.ndarray | None, shift: np.ndarray | None) -> np.ndarray:
    """The summed measured motion, as an offset to params: [sum dx, sum dy, 0, 0]."""
    guide = np.zeros(4) if previous is None else previous.copy()
    if shift is not None:
        guide[:2] += shift
    return guide


class OneEuroFilter:
    """Causal low-pass whose cutoff rises with speed (Casiez et al., CHI 2012): a still face is
    held still, a moving one followed with little lag. Works on vectors, each component with its
    own cutoff (a face sliding sideways does not unlock its scale). rate: samples per second;
    beta: cutoff Hz added per unit/s of speed, so x should be in units where that makes sense."""

    def __init__(self, rate: float, min_cutoff: float = 1.0, beta: float = 2.0, d_cutoff: float = 1.0):
        self.rate, self.min_cutoff, self.beta, self.d_cutoff = rate, min_cutoff, beta, d_cutoff
        self.x = self.dx = None

    def _alpha(self, cutoff):
        return 1.0 / (1.0 + self.rate / (2 * math.pi * cutoff))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self.x is None:
            self.x, self.dx = x, np.zeros_like(x)
            return x
        self.dx = self.dx + self._alpha(self.d_cutoff) * ((x - self.x) * self.rate - self.dx)
        self.x = self.x + self._alpha(self.min_cutoff + self.beta * np.abs(self.dx)) * (x - self.x)
        return self.x


class OneEuroSmoother:
    """Live smoothing: a One Euro filter per track, causal (lookahead 0). The centre is filtered
    in units of the track's first crop size, so `beta` means the same at any resolution. Guided
    like GaussianWindow: given the face's measured shifts, the filter acts on what they leave
    unexplained, and the centre follows them without lag."""
    lookahead = 0

    def __init__(self, rate: float, min_cutoff: float = 1.0, beta: float = 2.0):
        self.rate, self.min_cutoff, self.beta = rate, min_cutoff, beta
        self.tracks: dict[int, tuple[OneEuroFilter, float, np.ndarray, np.ndarray]] = {}
        self.values: dict[int, np.ndarray] = {}

    def add(self, track_id: int, index: int, params: np.ndarray, shift: np.ndarray | None = None) -> None:
        f, unit, last, guide = self.tracks.get(track_id) or (
            OneEuroFilter(self.rate, self.min_cutoff, self.beta), math.exp(params[2]), None, None)
        p = unwrap(params, last)
        guide = _guide(guide, shift)
        r = p - guide
        v = f(np.array([r[0] / unit, r[1] / unit, r[2], r[3]]))
        self.tracks[track_id] = f, unit, p, guide
        self.values[track_id] = guide + np.array([v[0] * unit, v[1] * unit, v[2], v[3]])

    def smoothed(self, track_id: int, index: int) -> np.ndarray:
        return self.values[track_id]

    def forget(self, before: int) -> None:
        pass          # ids are never reused; a filter is a few numbers


def unwrap(params: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
    """params with its angle moved by whole turns to within pi of the previous one's (no 2 pi jumps)."""
    if previous is None:
        return params
    p = np.array(params, np.float64)
    p[3] = previous[3] + (p[3] - previous[3] + math.pi) % (2 * math.pi) - math.pi
    return p


class CropMotion:
    """How much the crops move, accumulated frame by frame over tracks of quad_params (memory: the
    last two params of each track). `change` is the mean frame-to-frame change of the centre
    (relative to the crop side) and of the scale (relative to the scale), as issue 5 defines the
    crop jitter; `jitter` is the same on second differences, the shake that steady motion does
    not explain (a face moving smoothly has a large change and no jitter)."""
    KEYS = ("change_centre", "change_scale", "jitter_centre", "jitter_scale")

    def __init__(self):
        self.sums, self.counts, self.recent = dict.fromkeys(self.KEYS, 0.0), dict.fromkeys(self.KEYS, 0), {}

    def add(self, track_id: int, params: np.ndarray) -> None:
        recent = self.recent[track_id] = (self.recent.get(track_id, ()) + (params,))[-3:]
        c = [p[:2] for p in recent]
        s = [math.exp(p[2]) for p in recent]
        if len(recent) >= 2:
            self._add("change_centre", np.hypot(*(c[-1] - c[-2])) / (2 * s[-2]))
            self._add("change_scale", abs(s[-1] - s[-2]) / s[-2])
        if len(recent) == 3:
            self._add("jitter_centre", np.hypot(*(c[2] - 2 * c[1] + c[0])) / (2 * s[1]))
            self._add("jitter_scale", abs(s[2] - 2 * s[1] + s[0]) / s[1])

    def _add(self, key: str, value: float) -> None:
        self.sums[key] += float(value)
        self.counts[key] += 1

    def summary(self) -> dict[str, float | None]:
        return {k: (self.sums[k] / self.counts[k] if self.counts[k] else None) for k in self.KEYS}


class CropOffset:
    """How far smoothing moves the crop centre from the raw one, relative to the raw crop's side:
    what smoothing costs in lag (plus the noise it removes). Mean and max over all faces and frames."""

    def __init__(self):
        self.total, self.count, self.max = 0.0, 0, 0.0

    def add(self, raw: np.ndarray, smoothed: np.ndarray) -> None:
        """Both as quad_params of the same face on the same frame."""
        offset = float(np.hypot(*(smoothed[:2] - raw[:2])) / (2 * math.exp(raw[2])))
        self.total, self.count, self.max = self.total + offset, self.count + 1, max(self.max, offset)

    def summary(self) -> dict[str, float | None]:
        return {"mean": self.total / self.count if self.count else None, "max": self.max if self.count else None}


@dataclass
class _Track:
    id: int
    landmarks: np.ndarray           # [68, 2] on the last frame
    box_from_landmarks: np.ndarray  # the detector's box relative to the landmarks' bounding box


def _bounds(landmarks: np.ndarray) -> np.ndarray:
    return np.concatenate([landmarks.min(0), landmarks.max(0)]).astype(np.float64)


def _iou(a, b) -> float:
    w, h = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter + 1e-9)


class FaceTracker:
    """Faces followed from frame to frame. In between detections the previous frame's landmarks,
    moved by the face's motion measured from its pixels (runtime.motion), give the box for this
    frame's (cheap next to a detection; unmoved, dlib's landmarks lag a fast face, and jump where
    it moves by several percent of its size in a frame). `shifts` holds each returned face's motion since
    the previous frame (FaceMotion: the pixels', or the landmarks' where the two disagree; None
    for a new face), which guides smoothing. Detection (on a copy at most faces.VIDEO_DETECT_SIDE
    px) is coarse, dlib's HOG without upsampling (faces from about 80 px in the copy), or fine, with
    one upsample (several times the cost, faces from about 40 px; bench/video.py times both). A coarse one runs every `every` frames
    while faces are followed, every IDLE_EVERY frames while none is, at scene cuts and whenever a
    face's landmarks jump. When it finds nothing while no face is followed, a fine one follows at
    a cut and at most every FINE_EVERY frames otherwise; a followed face it misses (a small one)
    is looked for finely in its neighbourhood only. Detections that overlap a track keep its id,
    except across a cut, so one id is one face over a contiguous run of frames of one shot
    (smoothing never mixes two shots). `detections` counts the detections of each kind."""

    def __init__(self, every: int = 5):
        self.every, self.coarse, self.fine, self.thumbnail = max(1, every), None, None, None
        self.tracks: list[_Track] = []
        self.next_id, self.age, self.detected_at, self.fine_at = 0, 0, -math.inf, -math.inf
        self.detections = {"coarse": 0, "fine": 0, "fine_local": 0}
        self.motion, self.shifts = FaceMotion(), {}

    def __call__(self, rgb: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """[H, W, 3] uint8 RGB -> [(track id, FFHQ quad [4, 2] float32)], largest face first."""
        if self.coarse is None:
            self.coarse, self.fine = FaceAligner.for_frames(rgb.shape, 0), FaceAligner.for_frames(rgb.shape, 1)
        # After a cut the predictor would still place landmarks where the face was: detect instead.
        step = max(1, rgb.shape[1] // 64)
        thumbnail, previous = rgb[::step, ::step].mean(axis=2), self.thumbnail
        self.thumbnail = thumbnail
        cut = (previous is not None and previous.shape == thumbnail.shape
               and np.abs(thumbnail - previous).mean() > CUT_CHANGE)
        if cut:
            self.tracks = []
        # Without a cut a face comes into view over several frames: looking every third frame
        # finds it at most two frames late, for a third of the cost.
        due = self.age - self.detected_at >= (self.every if self.tracks else IDLE_EVERY)
        pixels = {t.id: self.motion.pixels(t.id, rgb) for t in self.tracks}
        if cut or due or (self.tracks and not self._follow(rgb, pixels)):
            self._detect(rgb, cut)
        self.age += 1
        tracks = sorted(self.tracks, key=lambda t: -np.prod(np.ptp(t.landmarks, axis=0)))
        faces = [(t.id, ffhq_quad(t.landmarks)) for t in tracks]
        self.shifts = {i: self.motion.settle(i, rgb, quad_params(q), pixels.get(i)) for i, q in faces}
        self.motion.forget(set(self.shifts))
        return faces

    def _follow(self, rgb: np.ndarray, pixels: dict[int, np.ndarray | None]) -> bool:
        moved = []
        for t in self.tracks:
            old = _bounds(t.landmarks)
            size = old[2:] - old[:2]
            moved_by = pixels.get(t.id)
            moved_by = np.zeros(2) if moved_by is None else moved_by
            box = old + t.box_from_landmarks * np.tile(size, 2) + np.tile(moved_by, 2)
            lm = self.coarse.landmarks(rgb, tuple(int(round(v)) for v in box))
            new = _bounds(lm)
            # The predictor always answers; a face that left its box shows as a jump or a resize.
            ratio = (new[2] - new[0]) / max(size[0], 1.0)
            shift = np.hypot(*((new[:2] + new[2:] - old[:2] - old[2:]) / 2 - moved_by))
            if not 0.7 < ratio < 1.4 or shift > 0.5 * size[0]:
                return False
            moved.append(lm)
        for t, lm in zip(self.tracks, moved):
            t.landmarks = lm
        return True

    def _find(self, rgb: np.ndarray, cut: bool) -> list[Face]:
        self.detections["coarse"] += 1
        faces = self.coarse.detect(rgb)
        if not faces and not self.tracks and (cut or self.age - self.fine_at >= FINE_EVERY):
            self.detections["fine"] += 1
            self.fine_at = self.age
            return self.fine.detect(rgb)
        missed = [t for t in self.tracks if not any(_iou(_bounds(t.landmarks), _bounds(f.landmarks)) > SAME_FACE
                                                    for f in faces)]
        closer = [f for t in missed for f in self._look_closer(rgb, t)]
        return faces + [f for f in closer if not any(_iou(_bounds(f.landmarks), _bounds(g.landmarks)) > SAME_FACE
                                                     for g in faces)]

    def _look_closer(self, rgb: np.ndarray, track: _Track) -> list[Face]:
        """The largest face the fine detector finds within one face size around `track`."""
        self.detections["fine_local"] += 1
        b = _bounds(track.landmarks)
        size = b[2:] - b[:2]
        h, w = rgb.shape[:2]
        x0, y0 = np.clip(np.floor(b[:2] - size).astype(int), 0, (w, h))
        x1, y1 = np.clip(np.ceil(b[2:] + size).astype(int), 0, (w, h))
        if x1 - x0 < 2 or y1 - y0 < 2:                 # the face has left the frame
            return []
        shift = np.array([x0, y0], np.float32)
        return [Face((f.box[0] + x0, f.box[1] + y0, f.box[2] + x0, f.box[3] + y0), f.landmarks + shift, f.quad + shift)
                for f in self.fine.detect(rgb[y0:y1, x0:x1], max_faces=1)]

    def _detect(self, rgb: np.ndarray, cut: bool) -> None:
        self.detected_at = self.age
        tracks = []
        for face in self._find(rgb, cut):
            b = _bounds(face.landmarks)
            size = np.tile(np.maximum(b[2:] - b[:2], 1.0), 2)
            taken = {t.id for t in tracks}
            best = max((t for t in self.tracks if t.id not in taken), default=None,
                       key=lambda t: _iou(_bounds(t.landmarks), b))
            if best is not None and _iou(_bounds(best.landmarks), b) > SAME_FACE:
                track_id = best.id
            else:
                track_id, self.next_id = self.next_id, self.next_id + 1
            tracks.append(_Track(track_id, face.landmarks, (np.array(face.box, np.float64) - b) / size))
        self.tracks = tracks
