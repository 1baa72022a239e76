"""Head splitting shared by the attention layers of every family."""

from __future__ import annotations

from kvid.backend import tf


def split_heads(x, num_heads: int):
    """(batch, length, channels) -> (batch, heads, length, channels / heads), head-major."""
    length, channels = x.shape[-2], x.shape[-1]
    x = tf.reshape(x, (-1, length, num_heads, channels // num_heads))
    return tf.transpose(x, (0, 2, 1, 3))


def merge_heads(x):
    """(batch, heads, length, depth) -> (batch, length, heads * depth)."""
    heads, length, depth = x.shape[1], x.shape[2], x.shape[3]
    x = tf.transpose(x, (0, 2, 1, 3))
    return tf.reshape(x, (-1, length, heads * depth))
