"""Output-size rules shared by every backend, the layers and the summary.

These follow PyTorch exactly, so a model described here has the shapes torch gives it.
"""

from __future__ import annotations


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """``floor((size + 2*padding - dilation*(kernel-1) - 1) / stride) + 1`` (torch's rule)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def pool_output_size(size: int, kernel: int, stride: int, padding: int = 0, ceil_mode: bool = False,
                     dilation: int = 1) -> int:
    """Pooling output size with torch's ``ceil_mode`` rule.

    With ``ceil_mode`` the division rounds up, but the last window must still start inside
    the input or its left padding (torch drops a window that would start in the right padding).
    """
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= size + padding:
            out -= 1
    else:
        out = span // stride + 1
    return out


def adaptive_bounds(in_size: int, out_size: int, index):
    """Start (inclusive) and end (exclusive) of the window of adaptive pooling output ``index``
    (an int, or an integer array of indices for arrays of bounds)."""
    start = (index * in_size) // out_size
    end = -(-((index + 1) * in_size) // out_size)
    return start, end

