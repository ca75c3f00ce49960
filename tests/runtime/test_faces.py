import numpy as np
import pytest

from runtime.faces import FaceAligner, align, ffhq_quad, paste_back
from runtime.images import read_image


@pytest.fixture(scope="module")
def aligner():
    return FaceAligner()


@pytest.fixture(scope="module")
def obama(photos_dir):
    return read_image(photos_dir / "obama.jpg")[0]


def square(x0, y0, side):
    """The quad whose crop is exactly pixels [y0, y0+side) x [x0, x0+side) (pixel centres on integers)."""
    a, b = x0 - 0.5, y0 - 0.5
    return np.array([(a, b), (a, b + side), (a + side, b + side), (a + side, b)], np.float32)


def eye_centres(landmarks):
    return landmarks[36:42].mean(0), landmarks[42:48].mean(0)


def to_crop(points, quad, size):
    """Image pixel coordinates -> crop pixel coordinates, from the quad alone."""
    tl, tr, bl = quad[0] + 0.5, quad[3] + 0.5, quad[1] + 0.5
    axes = np.stack([tr - tl, bl - tl], axis=1) / size
    return (np.linalg.solve(axes, (np.asarray(points) + 0.5 - tl).T)).T - 0.5


@pytest.mark.parametrize("name, count", [("obama.jpg", 1), ("two_people.jpg", 2), ("32bit.png", 1), ("dogs.jpg", 0)])
def test_detects_the_reference_number_of_faces(aligner, photos_dir, name, count):
    rgb, _ = read_image(photos_dir / name)
    faces = aligner.detect(rgb)
    assert len(faces) == count
    areas = [(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in faces]
    assert areas == sorted(areas, reverse=True)
    h, w = rgb.shape[:2]
    for face in faces:
        left, top, right, bottom = face.box
        assert 0 <= left < right < w and 0 <= top < bottom < h
        assert face.landmarks.shape == (68, 2) and face.landmarks.dtype == np.float32
        assert face.quad.shape == (4, 2) and face.quad.dtype == np.float32
        # The landmarks sit in the box (dlib's box is tight: allow a margin).
        assert (face.landmarks.mean(0) > (left, top)).all() and (face.landmarks.mean(0) < (right, bottom)).all()


def test_max_faces_keeps_the_largest(aligner, photos_dir):
    rgb, _ = read_image(photos_dir / "two_people.jpg")
    both, one = aligner.detect(rgb), aligner.detect(rgb, max_faces=1)
    assert len(one) == 1 and one[0].box == both[0].box


def test_full_scale_detection_agrees_and_landmarks_follow_a_given_box(photos_dir, aligner, obama):
    face = aligner.detect(obama)[0]
    full = FaceAligner(detect_scale=1.0).detect(obama)[0]
    side = np.hypot(*(face.quad[3] - face.quad[0]))
    assert np.abs(full.quad - face.quad).max() < 0.02 * side      # boxes differ, the landmarks agree
    np.testing.assert_array_equal(aligner.landmarks(obama, face.box), face.landmarks)


def test_ffhq_quad_by_hand():
    lm = np.zeros((68, 2), np.float32)
    lm[36:42], lm[42:48] = (40, 50), (60, 50)       # eye centres
    lm[48], lm[54] = (42, 80), (58, 80)             # mouth corners
    # eye_to_eye (20, 0), eye_to_mouth (0, 30): half-side max(40, 54) = 54, centre (50, 50 + 3).
    np.testing.assert_allclose(ffhq_quad(lm), [(-4, -1), (-4, 107), (104, 107), (104, -1)], atol=1e-5)


def test_ffhq_quad_turns_with_the_face():
    rng = np.random.default_rng(0)
    lm = rng.uniform(0, 100, (68, 2))
    angle = np.deg2rad(30)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    np.testing.assert_allclose(ffhq_quad(lm @ rot.T), ffhq_quad(lm) @ rot.T, atol=1e-3)


def test_align_reproduces_pixels_exactly_for_an_axis_aligned_square():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)
    np.testing.assert_array_equal(align(img, square(10, 20, 64), 64), img[20:84, 10:74])
    rgba = np.concatenate([img, np.zeros_like(img[..., :1])], axis=2)
    np.testing.assert_array_equal(align(rgba, square(10, 20, 64), 64), img[20:84, 10:74])


def test_align_shrinks_without_aliasing():
    # Stripes one pixel wide average to grey when shrunk 4x; a plain bicubic warp would sample
    # them (aliasing) and return stripes of its own.
    img = np.zeros((256, 256, 3), np.uint8)
    img[:, ::2] = 255
    crop = align(img, square(0, 0, 256), 64).astype(int)
    assert abs(crop.mean() - 127.5) < 2 and crop[8:-8, 8:-8].std() < 3


def test_align_mirrors_the_photo_where_the_quad_leaves_it():
    img = np.full((50, 50, 3), 128, np.uint8)
    img[:, :25] = 40
    crop = align(img, square(-20, -10, 40), 40)
    assert crop.min() == 40 and crop.max() == 40      # mirrored left part, never a black border


def test_aligned_obama_has_eyes_where_the_quad_puts_them(aligner, obama):
    size = 256
    face = aligner.detect(obama)[0]
    crop = align(obama, face.quad, size)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    expected = to_crop(eye_centres(face.landmarks), face.quad, size)
    # FFHQ geometry: the eye midpoint is on the vertical centre line, 0.1 eye_to_mouth above the centre.
    assert abs(expected.mean(0)[0] - (size - 1) / 2) < 8 and expected.mean(0)[1] < (size - 1) / 2
    found = aligner.detect(crop)
    assert len(found) == 1
    got = np.array(eye_centres(found[0].landmarks))
    assert np.abs(got - expected).max() < 3, (got, expected)
    assert abs(got[0, 1] - got[1, 1]) < 3          # the eye line is level in the crop


def test_paste_back_of_an_identity_toon_leaves_the_photo(aligner, obama):
    face = aligner.detect(obama)[0]
    # A crop with more pixels than the face has: the round trip loses no detail to resolution.
    out = paste_back(obama, align(obama, face.quad, 512), face.quad)
    assert out is not obama and out.shape == obama.shape
    diff = np.abs(out.astype(int) - obama)
    x0, y0 = np.floor(face.quad.min(0)).astype(int)
    x1, y1 = np.ceil(face.quad.max(0)).astype(int) + 1
    outside = np.ones(obama.shape[:2], bool)
    outside[max(y0, 0):y1, max(x0, 0):x1] = False
    assert diff[outside].max() == 0
    left, top, right, bottom = face.box
    assert diff[top:bottom, left:right].mean() < 2.5      # resampled twice: a little softer, same picture


def test_paste_back_feathers_the_edge_and_keeps_alpha():
    photo = np.zeros((200, 200, 4), np.uint8)
    photo[..., 3] = np.arange(200, dtype=np.uint8)[None, :]
    toon = np.full((64, 64, 3), 255, np.uint8)
    quad = square(50, 50, 100)
    out = paste_back(photo, toon, quad, feather=0.2)
    np.testing.assert_array_equal(out[..., 3], photo[..., 3])
    assert (photo[..., :3] == 0).all()                      # the input is not modified
    row = out[100, :, 0].astype(int)
    assert row[:50].max() == 0 and row[150:].max() == 0      # outside the quad: untouched
    assert (row[70:130] == 255).all()                        # inside the feather band: the toon
    ramp = row[50:71]
    assert (np.diff(ramp) >= 0).all() and 0 < ramp[5] < 255  # a smooth rise over 20 px (0.2 of 100)
    hard = paste_back(photo, toon, quad, feather=0)
    assert (hard[50:150, 50:150, :3] == 255).all() and hard[:, :50, :3].max() == 0
