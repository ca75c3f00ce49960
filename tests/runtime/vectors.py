"""The alignment test vectors that runtime/faces.py and the browser's align.js must both reproduce.

    python -m tests.runtime.vectors      # rewrites tests/runtime/alignment_vectors.json

Landmarks come from dlib on the shared photos, and from those turned, scaled, moved and stretched
(a tilted head, a tall face, coordinates off the image); each case holds what the Python side
computes from them: the FFHQ quad, the crop transform, the crop's corners in the image and the
quad's smoothing params. One Euro smoothing and the feathered paste mask ride along.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from runtime.common import write_json_atomic
from runtime.faces import FaceAligner, crop_transform, ffhq_quad, paste_back
from runtime.images import read_image
from runtime.tracking import OneEuroSmoother, quad_params
from tests.conftest import PHOTOS

VECTORS = Path(__file__).with_name("alignment_vectors.json")
FEATHER_SIZE = 24


def _case(name: str, landmarks: np.ndarray, size: int) -> dict:
    lm = np.asarray(landmarks, np.float64)
    quad = ffhq_quad(lm)
    transform = crop_transform(quad, size)
    corners = np.array([(0, 0), (0, size), (size, size), (size, 0)], np.float64) @ transform[:, :2].T + transform[:, 2]
    return {"name": name, "size": size, "landmarks": lm.tolist(), "quad": quad.astype(np.float64).tolist(),
            "transform": transform.tolist(), "corners": corners.tolist(),
            "params": quad_params(quad).tolist()}


def _turned(lm: np.ndarray, angle: float, scale: float, shift, stretch=(1.0, 1.0)) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    centre = lm.mean(0)
    return ((lm - centre) * stretch) @ (scale * np.array([[c, -s], [s, c]])).T + centre + shift


def make_vectors() -> dict:
    aligner = FaceAligner()
    cases, real = [], []
    for photo in ("obama.jpg", "two_people.jpg", "32bit.png"):
        rgb, _ = read_image(PHOTOS / photo)
        for i, face in enumerate(aligner.detect(rgb)):
            real.append(face.landmarks)
            cases.append(_case(f"{photo} face {i}", face.landmarks, 256))
    base = real[0].astype(np.float64)
    rng = np.random.default_rng(17)
    cases += [
        _case("turned 30 degrees, 64 px crop", _turned(base, math.radians(30), 1.0, (0, 0)), 64),
        _case("upside down, 1024 px crop", _turned(base, math.pi, 0.5, (40, -30)), 1024),
        _case("small and off the image's top left", _turned(base, math.radians(-12), 0.1, (-520, -640)), 32),
        _case("tall face (eye-to-mouth sets the size)", _turned(base, 0.0, 1.0, (0, 0), (0.4, 1.6)), 256),
        _case("wide face (eye-to-eye sets the size)", _turned(base, math.radians(5), 1.0, (0, 0), (1.8, 0.6)), 128),
        _case("jittered landmarks", base + rng.normal(0, 3, base.shape), 256),
    ]
    # One Euro smoothing of a face that holds still, jumps, then drifts (params as quad_params gives).
    rate, smoother, inputs, outputs = 30.0, OneEuroSmoother(30.0), [], []
    start = quad_params(ffhq_quad(base))
    for t in range(40):
        step = np.array([2.0 * (t >= 15) + 0.8 * max(0, t - 25), 0.3 * math.sin(t), 0.01 * (t % 3), 0.002 * t])
        p = start + step + rng.normal(0, [1.0, 1.0, 0.004, 0.003])
        smoother.add(0, t, p)
        inputs.append(p.tolist())
        outputs.append(smoother.smoothed(0, t).tolist())
    # The feathered blend mask, read off a paste of white onto black through a crop that sits on
    # the pixel grid (one image pixel per crop pixel): what paste_back blends with.
    s = FEATHER_SIZE
    square = np.array([(0, 0), (0, s), (s, s), (s, 0)], np.float32) - 0.5
    mask = paste_back(np.zeros((s, s, 3), np.uint8), np.full((s, s, 3), 255, np.uint8), square)[..., 0]
    return {"about": "made by `python -m tests.runtime.vectors` from runtime/faces.py and runtime/tracking.py",
            "cases": cases,
            "one_euro": {"rate": rate, "min_cutoff": 1.0, "beta": 2.0, "inputs": inputs, "outputs": outputs},
            "feather": {"size": s, "feather": 0.1, "mask": mask.astype(int).tolist()}}


if __name__ == "__main__":
    write_json_atomic(VECTORS, make_vectors())
    print(f"wrote {VECTORS}")
