"""The face's motion from its pixels: phase correlation and its Lucas-Kanade refinement against
known shifts of a real photo, the probe's fallback to landmarks, guided smoothing that follows
motion without lag, and the crop-slip measure."""
import math

import numpy as np
import pytest
from PIL import Image

from runtime.motion import PATCH, CropSlip, FaceMotion, face_patch, phase_shift, refine
from runtime.tracking import GaussianWindow, OneEuroSmoother

from tests.helpers import smooth_track


@pytest.fixture(scope="module")
def photo(photos_dir):
    return np.asarray(Image.open(photos_dir / "obama.jpg").convert("RGB"))


def shifted(photo, dx, dy):
    """The photo moved by (dx, dy) pixels (sub-pixel: bilinear), same size, edges repeated."""
    image = Image.fromarray(photo).transform(photo.shape[1::-1], Image.Transform.AFFINE, (1, 0, -dx, 0, 1, -dy),
                                             Image.Resampling.BILINEAR, fillcolor=None)
    return np.asarray(image)


def params_at(x, y, half_side):
    return np.array([x, y, math.log(half_side), 0.0])


def test_phase_shift_measures_sub_pixel_shifts(photo):
    centre = params_at(photo.shape[1] / 2, photo.shape[0] / 3, 64.0)   # 64 frame px = 1 patch px
    before, scale = face_patch(photo, centre)
    assert before.shape == (PATCH, PATCH) and scale == pytest.approx(1.0)
    for dx, dy in [(0.0, 0.0), (2.5, -1.25), (-7.0, 4.6)]:
        after, _ = face_patch(shifted(photo, dx, dy), centre)
        shift, peak = phase_shift(before, after)
        assert shift == pytest.approx([dx, dy], abs=0.25)
        assert peak > 0.3
    noise = np.random.default_rng(0).uniform(0, 255, (PATCH, PATCH)).astype(np.float32)
    assert phase_shift(before, noise)[1] < 0.08                          # unrelated: no peak to speak of


def test_refine_measures_shifts_in_noise_several_times_closer(photo):
    # Sensor noise on both frames, as on every real frame: phase correlation weighs the noisy high
    # frequencies as much as the face's; the gradient least squares does not.
    rng = np.random.default_rng(0)

    def noisy(image):
        return np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)

    at = params_at(photo.shape[1] / 2, photo.shape[0] / 3, 90.0)
    before, scale = face_patch(noisy(photo), at)
    phase, refined = [], []
    for truth in rng.uniform(-6, 6, (12, 2)):
        frame = noisy(shifted(photo, *truth))
        first = phase_shift(before, face_patch(frame, at)[0])[0] * scale
        phase.append(np.hypot(*(first - truth)))
        refined.append(np.hypot(*(refine(before, frame, at, first) - truth)))
    assert np.mean(refined) < 0.04 and np.max(refined) < 0.1              # measured: 0.022, 0.053 px
    assert np.mean(phase) > 4 * np.mean(refined)                          # measured: 0.140 px
    # Nothing to hold on to (a flat patch), or a refinement that runs off: the first estimate stays.
    flat = np.full_like(photo, 128)
    assert np.array_equal(refine(face_patch(flat, at)[0], flat, at, np.array([1.5, -2.0])), [1.5, -2.0])
    assert np.array_equal(refine(before, noisy(shifted(photo, 30.0, 0.0)), at, np.array([0.5, 0.0])), [0.5, 0.0])


def test_face_patch_repeats_the_edge_outside_the_frame(photo):
    patch, scale = face_patch(photo, params_at(-20.0, 10.0, 128.0))     # mostly off the top-left corner
    assert patch.shape == (PATCH, PATCH) and scale == pytest.approx(2.0)
    assert np.all(patch[:, :20] == patch[:, :1])                         # left of the frame: column 0 repeated


def test_face_motion_follows_the_pixels_and_falls_back_to_landmarks(photo):
    probe, truth = FaceMotion(), [(0.0, 0.0), (3.0, 1.5), (4.5, -2.0), (10.0, 0.0)]
    landmarks_noise = np.array([[0.0, 0.0], [2.0, -2.0], [-2.0, 1.0], [1.0, 1.0]])
    base = np.array([photo.shape[1] / 2, photo.shape[0] / 3])
    assert probe(0, photo, params_at(*base, 90.0)) is None                # a track's first frame
    for k in range(1, 4):
        x, y = base + truth[k] + landmarks_noise[k]
        shift = probe(0, shifted(photo, *truth[k]), params_at(x, y, 90.0))
        step = np.subtract(truth[k], truth[k - 1])
        assert shift == pytest.approx(step, abs=0.3)                     # the pixels, not the landmarks
    # A frame that is not the same face: the landmarks' own shift stands in.
    noise = np.random.default_rng(1).integers(0, 256, photo.shape, np.uint8)
    shift = probe(0, noise, params_at(*(base + [20.0, 5.0]), 90.0))
    assert shift == pytest.approx(base + [20.0, 5.0] - (base + truth[3] + landmarks_noise[3]))
    # Pixels and landmarks 10% of the crop side apart: one of them is wrong; the landmarks lead.
    jump = base + [20.0, 5.0] + [36.0, 0.0]
    assert probe(0, noise, params_at(*jump, 90.0)) == pytest.approx([36.0, 0.0])
    assert probe.counts == {"measured": 3, "from_landmarks": 2}
    # How far the face moved: the mean step over all five, relative to the 180 px crop side.
    steps = [np.hypot(*np.subtract(truth[k], truth[k - 1])) for k in range(1, 4)] + [np.hypot(9.0, 4.0), 36.0]
    assert probe.per_frame() == pytest.approx(sum(steps) / 5 / 180, rel=0.01)
    assert FaceMotion().per_frame() is None
    probe.forget({1})
    assert probe(0, photo, params_at(*base, 90.0)) is None               # forgotten: a new start


def zigzag(frames=120, seed=0):
    """A face moving fast and turning often (true centre), its landmarks' wobble, and the true shifts."""
    t = np.arange(frames)
    truth = np.stack([40 * np.sin(t / 5.0) + 3 * t, 25 * np.cos(t / 3.0)], axis=1)
    wobble = np.random.default_rng(seed).normal(0, 1.5, truth.shape)
    params = np.concatenate([truth + wobble, np.full((frames, 1), math.log(80.0)), np.zeros((frames, 1))], axis=1)
    shifts = np.concatenate([[[0.0, 0.0]], np.diff(truth, axis=0)])
    return truth, params, shifts


def smooth_guided(smoother, params, shifts):
    out, lag = [], smoother.lookahead
    for index, (p, s) in enumerate(zip(params, shifts)):
        smoother.add(0, index, p, s if index else None)
        if index >= lag:
            out.append(smoother.smoothed(0, index - lag))
    out += [smoother.smoothed(0, index) for index in range(max(len(params) - lag, 0), len(params))]
    return np.array(out)


@pytest.mark.parametrize("make", [lambda: GaussianWindow(3.0), lambda: OneEuroSmoother(30.0)],
                         ids=["gaussian", "one-euro"])
def test_guided_smoothing_follows_motion_and_removes_wobble(make):
    truth, params, shifts = zigzag()
    raw_error = np.hypot(*(params[:, :2] - truth).T).mean()
    guided = np.hypot(*(smooth_guided(make(), params, shifts)[:, :2] - truth).T).mean()
    plain = np.hypot(*(smooth_track(make(), params)[:, :2] - truth).T).mean()
    # Guided: the wobble averaged away (the Gaussian of sigma 3 keeps ~1/3.3 of white noise) and no lag.
    assert guided < 0.5 * raw_error
    # Unguided, the same smoother lags the turning face by more than the wobble it removes.
    assert plain > raw_error
    # Scale and angle are smoothed as before: the guide moves only the centre.
    assert np.allclose(smooth_guided(make(), params, shifts)[:, 2:], smooth_track(make(), params)[:, 2:])


def test_crop_slip_is_the_face_moving_within_its_crop(photo):
    base = np.array([photo.shape[1] / 2, photo.shape[0] / 3])
    following, still = CropSlip(), CropSlip()
    for k, dx in enumerate([0.0, 4.0, 8.0, 12.0]):
        frame = shifted(photo, dx, 0.0)
        following.add(0, frame, params_at(base[0] + dx, base[1], 64.0))   # the crop moves with the face
        still.add(0, frame, params_at(*base, 64.0))                        # the crop stays put
    assert following.summary() == pytest.approx(0.0, abs=0.002)
    assert still.summary() == pytest.approx(4.0 / 128, abs=0.003)           # 4 px a frame of a 128 px crop
    assert CropSlip().summary() is None
