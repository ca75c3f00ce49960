import numpy as np
import pytest

from runtime.images import hwc_to_nchw, nchw_to_hwc


def test_conversion_round_trip_is_exact():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 5, 7, 3), dtype=np.uint8)
    x = hwc_to_nchw(images)
    assert x.shape == (2, 3, 5, 7) and x.dtype == np.float32
    assert x.min() >= -1 and x.max() <= 1
    assert hwc_to_nchw(np.array([[[0, 255, 0]]], np.uint8)).ravel().tolist() == [-1.0, 1.0, -1.0]
    np.testing.assert_array_equal(nchw_to_hwc(x), images)


def test_conversion_clips_and_rejects_wrong_layout():
    assert nchw_to_hwc(np.full((1, 3, 1, 1), 3.0)).ravel().tolist() == [255, 255, 255]
    with pytest.raises(ValueError, match=r"expected \[N, H, W, 3\] uint8"):
        hwc_to_nchw(np.zeros((1, 3, 4, 4), np.uint8))
