"""Mask computations (TensorFlow ops, run inside the training step when the schedule says so).

Every function takes a weight tensor with a static shape and returns a 0/1 mask of the same shape
and dtype. "Rows" of a kernel are all axes but the last (the reduction axes of Dense and Conv,
input channels fastest); "columns" are the last axis (output units / channels).
"""

from __future__ import annotations

import math

import tensorflow as tf


def magnitude_mask(w, sparsity):
    """Zeros exactly ``round(sparsity * size)`` of the smallest-magnitude entries of ``w``."""
    flat = tf.reshape(tf.abs(w), [-1])
    n = flat.shape[0]
    k = tf.cast(tf.round(tf.cast(sparsity, tf.float32) * float(n)), tf.int32)
    order = tf.argsort(flat, stable=True)  # ascending; already-zero weights stay pruned first
    ranks = tf.math.invert_permutation(order)
    return tf.reshape(tf.cast(ranks >= k, w.dtype), w.shape)


def _as_rows_by_cols(shape) -> tuple[int, int]:
    if len(shape) == 1:
        return int(shape[0]), 1
    return math.prod(int(d) for d in shape[:-1]), int(shape[-1])


def m_by_n_mask(w, m: int, n: int, *, along_last: bool = False):
    """Keeps the ``m`` largest of every ``n`` consecutive entries (2:4 sparsity when m=2, n=4).

    Groups run along the rows of each column (the reduction dimension, input channels fastest),
    or along the last axis when ``along_last`` (embedding tables).
    """
    rows, cols = _as_rows_by_cols(w.shape)
    mat = tf.reshape(tf.abs(w), [rows, cols])
    if not along_last:
        mat = tf.transpose(mat)  # (cols, rows): groups run along the reduction dimension
    outer, inner = mat.shape
    groups = tf.reshape(mat, [outer, inner // n, n])
    order = tf.argsort(groups, axis=-1, direction="DESCENDING", stable=True)
    ranks = tf.argsort(order, axis=-1, stable=True)
    keep = tf.reshape(tf.cast(ranks < m, w.dtype), [outer, inner])
    if not along_last:
        keep = tf.transpose(keep)
    return tf.reshape(keep, w.shape)


def m_by_n_supported(shape, n: int, *, along_last: bool = False) -> str | None:
    """Returns why ``m_by_n`` cannot apply to a weight of ``shape``, or None when it can."""
    rows, cols = _as_rows_by_cols(shape)
    dim, what = (cols, "the last axis") if along_last else (rows, "the reduction axes")
    if dim % n:
        return f"{what} of shape {tuple(shape)} hold {dim} values, not a multiple of n={n}"
    return None


def block_mask(w, sparsity, block_size: tuple[int, int]):
    """Zeros whole ``block_size`` blocks of the (rows, cols) view, lowest mean magnitude first."""
    rows, cols = _as_rows_by_cols(w.shape)
    bh, bw = block_size
    nr, nc = -(-rows // bh), -(-cols // bw)
    mat = tf.reshape(tf.abs(w), [rows, cols])
    mat = tf.pad(mat, [[0, nr * bh - rows], [0, nc * bw - cols]])
    scores = tf.reduce_mean(tf.reshape(mat, [nr, bh, nc, bw]), axis=[1, 3])
    keep = magnitude_mask(scores, sparsity)
    keep = tf.repeat(tf.repeat(keep, bh, axis=0), bw, axis=1)[:rows, :cols]
    return tf.reshape(tf.cast(keep, w.dtype), w.shape)
