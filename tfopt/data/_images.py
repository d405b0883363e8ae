"""Offline 32x32 RGB image datasets that real CNNs learn in minutes: ``digits32`` and ``shapes32``."""

from __future__ import annotations

import numpy as np

SHAPES = (
    "disk",
    "square",
    "triangle",
    "ring",
    "plus",
    "x",
    "diamond",
    "horizontal_stripes",
    "vertical_stripes",
    "checkerboard",
)


def _resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of ``(n, h, w)`` images to ``(n, size, size)`` (align-corners=False)."""
    n, h, w = images.shape

    def weights(src: int):
        pos = np.clip((np.arange(size) + 0.5) * src / size - 0.5, 0, src - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, src - 1)
        return lo, hi, (pos - lo).astype("float32")

    y0, y1, fy = weights(h)
    x0, x1, fx = weights(w)
    rows = images[:, y0] * (1 - fy)[None, :, None] + images[:, y1] * fy[None, :, None]
    return rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx


def _shape_mask(k, dx, dy, r, period, phase):
    """The foreground of shape ``k`` at offsets ``dx, dy`` from its centre (half-size ``r``)."""
    ax, ay = np.abs(dx), np.abs(dy)
    box = np.maximum(ax, ay) < r
    if k == 0:
        return dx**2 + dy**2 < r**2
    if k == 1:
        return box
    if k == 2:
        return (dy > -r) & (dy < r) & (ax < (dy + r) * 0.55)
    if k == 3:
        d2 = dx**2 + dy**2
        return (d2 < r**2) & (d2 > (0.55 * r) ** 2)
    if k == 4:
        return ((ax < 0.28 * r) & (ay < r)) | ((ay < 0.28 * r) & (ax < r))
    if k == 5:
        return (np.abs(ax - ay) < 0.3 * r) & box
    if k == 6:
        return ax + ay < r
    h = np.mod(dy / period + phase, 1.0) < 0.5
    v = np.mod(dx / period + phase, 1.0) < 0.5
    return box & (h if k == 7 else v if k == 8 else h ^ v)


def digits32(size: int = 32):
    """scikit-learn's 1797 8x8 digits, resized bilinearly to ``size`` x ``size`` x 3 in [0, 1].

    Returns:
        ``(x, y)``: float32 images ``(1797, size, size, 3)`` and int labels.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    gray = _resize_bilinear(d.images.astype("float32") / 16.0, size)
    return np.repeat(gray[..., None], 3, axis=-1).astype("float32"), d.target.astype("int32")


def make_shapes(n: int, *, seed: int = 0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Generates ``n`` RGB images of 10 shape and texture classes (see `SHAPES`).

    Each image draws its class, centre, scale, foreground colour, background colour (kept at
    least 0.35 apart in mean intensity from the foreground), a linear background gradient and
    pixel noise from ``numpy.random.default_rng(seed)``: the same arguments give the same arrays.

    Args:
        n: number of images.
        seed: the generator's seed. Defaults to 0.
        size: image height and width. Defaults to 32.

    Returns:
        ``(x, y)``: float32 images ``(n, size, size, 3)`` in [0, 1] and int32 labels in [0, 10).

    Example:
        >>> x, y = make_shapes(100, seed=1)
        >>> x.shape
        (100, 32, 32, 3)
    """
    if n < 1:
        raise ValueError(f"n must be >= 1. Received: n={n}")
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(SHAPES), n).astype("int32")
    r = rng.uniform(0.22, 0.42, n) * size  # half-size of the shape
    cx = rng.uniform(r, size - r)
    cy = rng.uniform(r, size - r)
    angle = rng.uniform(-0.35, 0.35, n)  # a small rotation of the shapes
    period = rng.uniform(0.16, 0.3, n) * size  # texture period
    phase = rng.uniform(0, 1, n)

    grid = np.arange(size, dtype="float32") + 0.5
    gy, gx = grid[None, :, None], grid[None, None, :]
    mask = np.zeros((n, size, size), dtype=bool)
    for k in range(len(SHAPES)):
        i = np.flatnonzero(y == k)

        def col(a, i=i):
            return a[i, None, None].astype("float32")

        dx0, dy0 = gx - col(cx), gy - col(cy)
        c, s = np.cos(col(angle)), np.sin(col(angle))
        mask[i] = _shape_mask(
            k, c * dx0 + s * dy0, -s * dx0 + c * dy0, col(r), col(period), col(phase)
        )

    fg = rng.uniform(0, 1, (n, 3))
    bg = rng.uniform(0, 1, (n, 3))
    low = np.abs(fg.mean(1) - bg.mean(1)) < 0.35
    # push the background away from the foreground until they differ in mean intensity
    shift = np.where(fg.mean(1) > 0.5, -1.0, 1.0)[:, None] * 0.6
    bg[low] = np.clip(fg[low] + shift[low] + rng.uniform(-0.15, 0.15, (int(low.sum()), 3)), 0, 1)
    gradient = rng.uniform(-0.15, 0.15, (n, 2))
    ramp = (
        gradient[:, 0, None, None] * (gy / size - 0.5)
        + gradient[:, 1, None, None] * (gx / size - 0.5)
    )[..., None]
    fg, bg, ramp = fg.astype("float32"), bg.astype("float32"), ramp.astype("float32")
    x = np.where(mask[..., None], fg[:, None, None, :], bg[:, None, None, :] + ramp)
    x += rng.standard_normal(x.shape, dtype="float32") * 0.04
    return np.clip(x, 0, 1, out=x), y
