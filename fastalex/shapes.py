"""Output-size rules shared by every backend, the layers and the summary.

These follow PyTorch exactly, so a model described here has the shapes torch gives it.
"""

from __future__ import annotations


def padding_sides(padding) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((top, bottom), (left, right))`` of a normalized padding: a pair ``(h, w)`` (both sides
    alike) or a 4-tuple ``(left, right, top, bottom)`` (``torch.nn.functional.pad``'s order)."""
    if len(padding) == 4:
        left, right, top, bottom = padding
        return (top, bottom), (left, right)
    return (padding[0], padding[0]), (padding[1], padding[1])


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1,
                     padding_end: int | None = None) -> int:
    """``floor((size + 2*padding - dilation*(kernel-1) - 1) / stride) + 1`` (torch's rule);
    ``padding_end``, if given, is the padding after the input (``padding`` is then the one before)."""
    end = padding if padding_end is None else padding_end
    return (size + padding + end - dilation * (kernel - 1) - 1) // stride + 1


def pool_output_size(size: int, kernel: int, stride: int, padding: int = 0, ceil_mode: bool = False,
                     dilation: int = 1, padding_end: int | None = None) -> int:
    """Pooling output size with torch's ``ceil_mode`` rule (ONNX Runtime's too).

    With ``ceil_mode`` the division rounds up, but the last window must still start inside
    the input or its left padding (torch drops a window that would start in the right padding).
    ``padding_end``, if given, is the padding after the input (``padding`` the one before).
    """
    end = padding if padding_end is None else padding_end
    span = size + padding + end - dilation * (kernel - 1) - 1
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= size + padding:
            out -= 1
    else:
        out = span // stride + 1
    return out


def adaptive_bounds(in_size: int, out_size: int, index: int) -> tuple[int, int]:
    """Start (inclusive) and end (exclusive) of the window of adaptive pooling output ``index``."""
    start = (index * in_size) // out_size
    end = -(-((index + 1) * in_size) // out_size)
    return start, end

