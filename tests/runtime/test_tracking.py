"""Faces over time: the crop as four numbers, Gaussian and One Euro smoothing, crop-motion
metrics, and the tracker on frames of the shared clip."""
import math

import av
import numpy as np
import pytest

from runtime.faces import FaceAligner, ffhq_quad
from runtime.motion import FaceMotion
from runtime.tracking import (FINE_EVERY, IDLE_EVERY, CropMotion, FaceTracker, GaussianWindow, OneEuroFilter, OneEuroSmoother, params_quad,
                              quad_params)
from runtime.videoio import VideoReader
from runtime.stability import moving_face_clip
from tests.helpers import smooth_track


@pytest.fixture(scope="module")
def frames(photos_dir):
    """Frames 0-59 and 140-159 of the shared clip (a cut at 20: the face of 0-19 disappears)."""
    with av.open(str(photos_dir / "short_hamilton_clip.mp4")) as c:
        return {i: f.to_ndarray(format="rgb24") for i, f in enumerate(c.decode(video=0))
                if i < 60 or 140 <= i < 160}


def test_quad_params_round_trip():
    # centre (10, 20), half side 5, upright: corners TL, BL, BR, TR as FFHQ's align script orders them
    assert np.allclose(params_quad(np.array([10, 20, math.log(5), 0])), [[5, 15], [5, 25], [15, 25], [15, 15]])
    p = np.array([120.5, 80.25, math.log(64), 0.3])
    assert np.allclose(quad_params(params_quad(p)), p, atol=1e-5)
    for landmarks in np.random.default_rng(0).uniform(0, 500, (20, 68, 2)):
        quad = ffhq_quad(landmarks)
        assert np.allclose(params_quad(quad_params(quad)), quad, atol=1e-3)




def test_gaussian_window_is_a_renormalised_gaussian_over_the_track():
    values = np.random.default_rng(0).normal(size=(40, 4)) * [1, 1, 1, 0.1]   # angles well within pi
    got = smooth_track(GaussianWindow(2.0), values)
    t = np.arange(40)
    for i in (0, 3, 20, 39):                           # the ends use the frames that exist
        w = np.exp(-0.5 * ((t - i) / 2.0) ** 2) * (abs(t - i) <= 6)
        assert np.allclose(got[i], w @ values / w.sum())
    assert GaussianWindow(2.0).lookahead == 6


def test_gaussian_window_keeps_constants_and_lines_and_cuts_white_noise():
    const = np.full((50, 4), 3.0)
    assert np.allclose(smooth_track(GaussianWindow(2.0), const), const)
    line = np.stack([2.0 * np.arange(60) + 1, -0.5 * np.arange(60), np.zeros(60), np.zeros(60)], axis=1)
    assert np.allclose(smooth_track(GaussianWindow(2.0), line)[6:-6], line[6:-6])   # a symmetric kernel keeps motion
    noise = np.random.default_rng(0).normal(size=(20000, 4)) * [1, 1, 1, 0.1]
    # White noise through a unit-sum Gaussian of sigma s keeps 1 / sqrt(2 sqrt(pi) s) of its std.
    assert smooth_track(GaussianWindow(2.0), noise).std(axis=0) == pytest.approx(
        np.array([1, 1, 1, 0.1]) / math.sqrt(4 * math.sqrt(math.pi)), rel=0.03)
    assert np.allclose(smooth_track(GaussianWindow(0.0), noise[:10]), noise[:10])       # sigma 0: no smoothing


def test_smoothers_keep_tracks_apart_and_angles_continuous():
    window = GaussianWindow(2.0)
    for index in range(10):
        window.add(0, index, np.array([0.0, 0, 0, 0]))
        window.add(1, index, np.array([100.0, 0, 0, math.pi - 0.01 if index % 2 else -math.pi + 0.01]))
    assert np.allclose(window.smoothed(0, 3), 0)
    assert window.smoothed(1, 3)[0] == pytest.approx(100) and math.cos(window.smoothed(1, 3)[3]) < -0.99   # not averaged to 0
    window.forget(10)
    assert window.tracks == {}
    live = OneEuroSmoother(30.0)
    for index in range(10):
        live.add(7, index, np.array([5.0, 5.0, 1.0, math.pi - 0.01 if index % 2 else -math.pi + 0.01]))
    assert math.cos(live.smoothed(7, 9)[3]) < -0.99


def test_one_euro_holds_a_still_face_and_follows_a_moving_one():
    rate, rng = 30.0, np.random.default_rng(0)
    noise = rng.normal(0, 0.01, 300)                   # about dlib's wobble, in crop sizes
    ramp = 2.0 * np.arange(300) / rate                 # two crop sizes a second: fast
    f = OneEuroFilter(rate)
    out = np.array([f(v) for v in np.stack([ramp, noise], axis=1)])
    # The still component is smoothed (its own cutoff) even while the other one moves fast.
    assert out[30:, 1].std() < 0.4 * noise[30:].std()
    # Speed raises the cutoff: the lag behind the ramp is a fraction of a fixed 1 Hz low-pass's.
    fixed = OneEuroFilter(rate, beta=0.0)
    fixed_lag = np.mean(ramp[60:] - np.array([fixed([x])[0] for x in ramp])[60:])
    assert fixed_lag == pytest.approx(2.0 / (2 * math.pi), rel=0.01)           # speed / (2 pi cutoff)
    assert np.mean(ramp[60:] - out[60:, 0]) < 0.2 * fixed_lag


def crop_motion(tracks):
    motion = CropMotion()
    for track_id, params in enumerate(tracks):
        for p in params:
            motion.add(track_id, p)
    return motion.summary()


def test_crop_motion_separates_steady_motion_from_jitter():
    t = np.arange(50.0)
    steady = np.stack([100 + 3 * t, np.full(50, 50.0), np.full(50, math.log(40)), np.zeros(50)], axis=1)
    shaky = steady.copy()
    shaky[:, 0] = 100 + (-1.0) ** t                      # +-1 px around a still centre
    assert crop_motion([steady]) == pytest.approx(
        {"change_centre": 3 / 80, "change_scale": 0, "jitter_centre": 0, "jitter_scale": 0})
    assert crop_motion([shaky]) == pytest.approx(
        {"change_centre": 2 / 80, "change_scale": 0, "jitter_centre": 4 / 80, "jitter_scale": 0})
    growing = steady.copy()
    growing[:, 2] = np.log(40 * 1.1 ** t)                # 10% bigger every frame
    assert crop_motion([growing])["change_scale"] == pytest.approx(0.1)
    # Two faces are two tracks: no difference is taken across them.
    assert crop_motion([steady[:25], shaky[25:]])["change_centre"] == pytest.approx((24 * 3 + 24 * 2) / 48 / 80)
    assert crop_motion([]) == dict.fromkeys(CropMotion.KEYS)


def counting_detect(monkeypatch):
    calls = []
    real = FaceAligner.detect
    monkeypatch.setattr(FaceAligner, "detect", lambda self, *a, **kw: calls.append(1) or real(self, *a, **kw))
    return calls


def test_tracker_follows_a_face_with_few_detections(frames, monkeypatch):
    calls = counting_detect(monkeypatch)
    tracker = FaceTracker(every=5)
    tracked = [tracker(frames[i]) for i in range(140, 160)]
    # Coarse detections at frames 0, 5, 10, 15 of the run find this face: nothing finer is needed.
    assert tracker.detections == {"coarse": 4, "fine": 0, "fine_local": 0} and len(calls) == 4
    assert [len(faces) for faces in tracked] == [1] * 20
    assert len({faces[0][0] for faces in tracked}) == 1      # one id for the whole run
    # Following by landmarks lands where a fresh detection would, within the detection's own
    # noise (its boxes move in 10 px steps here, and the landmarks' scale with them).
    for i in (142, 148, 159):
        fresh = quad_params(FaceAligner(detect_scale=1.0).detect(frames[i])[0].quad)
        got = quad_params(tracked[i - 140][0][1])
        side = 2 * math.exp(fresh[2])
        assert np.hypot(*(got[:2] - fresh[:2])) < 0.02 * side and abs(got[2] - fresh[2]) < 0.07


def test_tracker_finds_and_keeps_a_small_face_with_fine_detections(frames, monkeypatch):
    # Frames 0-19 show a face too small for the coarse detector (no upsampling).
    assert FaceAligner(detect_scale=1.0, upsample=0).detect(frames[0]) == []
    calls = counting_detect(monkeypatch)
    tracker = FaceTracker(every=5)
    tracked = [tracker(frames[i]) for i in range(20)]
    # Frame 0: coarse finds nothing, so the whole frame is searched finely; at 5, 10 and 15 the
    # coarse detection misses the followed face and a fine one confirms it in its neighbourhood.
    assert tracker.detections == {"coarse": 4, "fine": 1, "fine_local": 3} and len(calls) == 8
    assert [len(faces) for faces in tracked] == [1] * 20
    assert len({faces[0][0] for faces in tracked}) == 1
    fresh = quad_params(FaceAligner(detect_scale=1.0).detect(frames[15])[0].quad)
    got = quad_params(tracked[15][0][1])
    assert np.hypot(*(got[:2] - fresh[:2])) < 0.02 * 2 * math.exp(fresh[2])


def test_tracker_looks_less_often_while_no_face_is_followed(frames, monkeypatch):
    calls = counting_detect(monkeypatch)
    tracker = FaceTracker(every=5)
    assert all(tracker(frames[i]) == [] for i in range(24, 60))            # no face in these 36 frames
    # Coarse every IDLE_EVERY frames (0, 5, ..., 35 of the run), fine after it at 0 and 30 (FINE_EVERY).
    assert IDLE_EVERY == 5 and FINE_EVERY == 30
    assert tracker.detections == {"coarse": 8, "fine": 2, "fine_local": 0} and len(calls) == 10


def test_tracker_drops_a_face_at_a_scene_cut(frames, monkeypatch):
    calls = counting_detect(monkeypatch)
    tracker = FaceTracker(every=5)
    counts = [len(tracker(frames[i])) for i in range(16, 24)]
    # Detections at 16 (coarse, then fine: the face is small) and at the cut at 20 (coarse, then
    # fine: nothing found), where the face is gone at once; the next is IDLE_EVERY frames on, at 25.
    assert counts == [1, 1, 1, 1, 0, 0, 0, 0]
    assert tracker.detections == {"coarse": 2, "fine": 2, "fine_local": 0} and len(calls) == 4
    # The same face after a cut (here: a jump in exposure) starts a new track, so that smoothing
    # never averages two shots.
    tracker = FaceTracker(every=5)
    before = [tracker(frames[i])[0][0] for i in (150, 151)]
    brighter = np.clip(frames[152].astype(int) + 60, 0, 255).astype(np.uint8)
    after = [tracker(brighter)[0][0], tracker(brighter)[0][0]]
    assert before[0] == before[1] and after[0] == after[1] != before[1]


def test_tracker_moves_its_landmark_box_with_the_face(tmp_path, photos_dir, monkeypatch):
    # A face swaying fast (5.5% of the crop side a frame, up to 12 px): dlib's landmarks, started
    # from the previous frame's box, would lag it and jump; moved by the face's measured motion
    # first, they follow it within their usual wobble.
    path = tmp_path / "fast.mp4"
    truth = moving_face_clip(path, photos_dir / "obama.jpg", photos_dir / "dogs.jpg", frames=60, speed=1.5)

    def worst_step():
        tracker = FaceTracker(every=5)
        crops = [quad_params(tracker(frame.image)[0][1]) for frame in VideoReader(path).frames()]
        error = np.array([c[:2] for c in crops]) - truth
        return (np.hypot(*np.diff(error, axis=0).T) / (2 * np.exp([c[2] for c in crops[:-1]]))).max()

    assert worst_step() < 0.01                       # measured: 0.5% of the crop side at worst
    monkeypatch.setattr(FaceMotion, "pixels", lambda self, track_id, rgb: None)
    assert worst_step() > 0.05                       # unmoved: a 17% jump
