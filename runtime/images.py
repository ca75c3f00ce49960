"""Images at the edges: reading any photo safely, writing atomically, and the one pair of
conversions between the edge convention (HWC uint8 RGB) and the model convention
(NCHW float32 in [-1, 1]).

    x = hwc_to_nchw(np.stack(images))      # [N, H, W, 3] uint8 -> [N, 3, H, W] float32 in [-1, 1]
    images = nchw_to_hwc(y)                # and back, clipped and rounded
"""
from __future__ import annotations

import numpy as np


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
    u8 = np.clip(np.rint((x + 1) * 127.5), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(u8.transpose(0, 2, 3, 1))
