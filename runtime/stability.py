"""How steady the video path's crop is, judged against the truth: clips of a real face moving
along a known path, and the measures of a crop track against that path. A face photo, feathered
to an ellipse, slides over a static real background, with sensor noise on every frame and H.264 on
top (what makes dlib's landmarks wobble on a real clip); tests and bench/video.py use it.

The clip: a face photo, feathered to an ellipse, slides over a static real background, with sensor
noise on every frame and H.264 on top (what makes dlib's landmarks wobble on a real clip).

The face is moved by an exact sub-pixel shift (in the Fourier domain): an interpolating one (PIL's
bicubic) moves a face's detail by up to a tenth of a pixel off the path, as a function of the
fraction, which would count as the crop's jitter. For the same reason the truth is exact only
for a lossless encoding (crf 0): at crf 23, H.264's quarter-pixel motion compensation leaves the
decoded face slightly off the path (codec_drift measures how far), which a crop that follows the
face as decoded (as it should) is then charged with.

    truth = moving_face_clip(path, face_photo, background_photo, moves=True)   # [frames, 2] face offsets, px
    against_truth(crop_track(VideoConfig(path, ...)), truth)    # the crop's jitter against the face's path
"""
from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from runtime.motion import face_patch, phase_shift, refine
from runtime.videoio import VideoReader

SIZE = (480, 360)          # frame width, height
FACE = (240, 300)          # the face photo is resized to this
RATE = 30


def bobbing(frames: int, rate: int = RATE, speed: float = 1.0) -> np.ndarray:
    """A face that keeps moving, as a rapper's or a talker's does: sways and nods at 0.9 to 3.1 Hz,
    [frames, 2] offsets in pixels (against_truth's `face_moves` says how fast, relative to the crop)."""
    t = np.arange(frames) / rate * speed
    x = 14 * np.sin(2 * math.pi * 1.3 * t) + 8 * np.sin(2 * math.pi * 3.1 * t + 1.0)
    y = 6 * np.sin(2 * math.pi * 0.9 * t + 2.0) + 4 * np.sin(2 * math.pi * 2.3 * t)
    return np.stack([x, y], axis=1)


def fourier_shift(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """[H, W, C] float image moved by (dx, dy) pixels exactly (band-limited, circular: keep its
    border empty): output(p) = image(p - (dx, dy))."""
    h, w = image.shape[:2]
    phase = np.exp(-2j * np.pi * (np.fft.rfftfreq(w)[None, :] * dx + np.fft.fftfreq(h)[:, None] * dy))
    return np.fft.irfft2(np.fft.rfft2(image, axes=(0, 1)) * phase[..., None], s=(h, w), axes=(0, 1))


class Scene:
    """The face photo, feathered to an ellipse, over the background: `render(dx, dy)` is the frame
    with the face moved by (dx, dy) px, [H, W, 3] float, before noise and encoding."""

    def __init__(self, face: Path, background: Path):
        self.back = np.asarray(Image.open(background).convert("RGB").resize(SIZE), np.float32)
        photo = Image.open(face).convert("RGB").resize(FACE)
        mask = Image.new("L", FACE, 0)
        ImageDraw.Draw(mask).ellipse((10, 0, FACE[0] - 10, FACE[1]), fill=255)
        layer = Image.new("RGBA", SIZE)
        layer.paste(Image.merge("RGBA", (*photo.split(), mask.filter(ImageFilter.GaussianBlur(12)))),
                    ((SIZE[0] - FACE[0]) // 2, (SIZE[1] - FACE[1]) // 2))
        rgba = np.asarray(layer, np.float32)
        alpha = rgba[..., 3:] / 255
        self.premultiplied = np.concatenate([rgba[..., :3] * alpha, alpha], axis=-1)    # what shifts exactly

    def render(self, dx: float, dy: float) -> np.ndarray:
        moved = fourier_shift(self.premultiplied, dx, dy)
        return self.back * (1 - moved[..., 3:]) + moved[..., :3]


def moving_face_clip(path: Path, face: Path, background: Path, frames: int = 60, moves: bool = True,
                     crf: int = 23, speed: float = 1.0, seed: int = 0) -> np.ndarray:
    """Write an H.264 clip (SIZE, RATE fps, `crf`: 0 is lossless) of `face` moving by `bobbing`
    (`speed` times as fast) or held still over `background`; returns the face's true offset on
    each frame, [frames, 2] px."""
    rng = np.random.default_rng(seed)
    truth = bobbing(frames, speed=speed) if moves else np.zeros((frames, 2))
    scene = Scene(face, background)
    with av.open(str(path), "w") as c:
        stream = c.add_stream("libx264", rate=RATE, options={"crf": str(crf)})
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        for dx, dy in truth:
            frame = scene.render(dx, dy) + rng.normal(0, 3, scene.back.shape)
            image = av.VideoFrame.from_ndarray(np.clip(frame, 0, 255).astype(np.uint8), format="rgb24")
            c.mux(stream.encode(image))
        c.mux(stream.encode())
    return truth


def codec_drift(path: Path, face: Path, background: Path, truth: np.ndarray, crops: dict[int, np.ndarray]) -> float:
    """How far the encoding itself moved the face off its path, as the mean frame-to-frame change
    relative to the crop side: each decoded frame's face region registered (runtime.motion) on the
    same frame rendered without noise or encoding. A crop that follows the decoded face exactly is
    charged this much jitter by against_truth."""
    scene, offsets, sides = Scene(face, background), [], []
    for frame in VideoReader(path).frames():
        at = crops[frame.index]
        clean = np.clip(scene.render(*truth[frame.index]), 0, 255).astype(np.uint8)
        before, scale = face_patch(clean, at)
        first = phase_shift(before, face_patch(frame.image, at)[0])[0] * scale
        offsets.append(refine(before, frame.image, at, first))
        sides.append(2 * math.exp(at[2]))
    return float((np.hypot(*np.diff(offsets, axis=0).T) / np.array(sides[:-1])).mean())


def against_truth(crops: dict[int, np.ndarray], truth: np.ndarray) -> dict[str, float]:
    """How a crop follows a face whose true offsets are `truth` ([frames, 2] px, the face's size
    fixed), relative to the crop side: `jitter_centre`, the mean frame-to-frame change of the crop
    centre less the face's own step (what a crop that follows the face exactly has none of);
    `jitter_scale`, the mean frame-to-frame change of the crop side; `offset`, the mean distance of
    the crop centre from the face's path (its constant part removed: the crop's own choice of centre);
    `face_moves`, the face's own mean step."""
    frames = sorted(crops)
    params = np.array([crops[i] for i in frames])
    side = 2 * np.exp(params[:, 2])
    error = params[:, :2] - truth[frames]
    steps = np.diff(frames) == 1
    return {"jitter_centre": float((np.hypot(*np.diff(error, axis=0).T) / side[:-1])[steps].mean()),
            "jitter_scale": float((np.abs(np.diff(side)) / side[:-1])[steps].mean()),
            "offset": float((np.hypot(*(error - error.mean(0)).T) / side).mean()),
            "face_moves": float((np.hypot(*np.diff(truth[frames], axis=0).T) / side[:-1])[steps].mean())}
