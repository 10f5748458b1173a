"""Output-size rules shared by every backend, the layers and the summary, and the check that
an output can be allocated at all.

These follow PyTorch exactly, so a model described here has the shapes torch gives it.
"""

from __future__ import annotations

import functools
import math
import os


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


def adaptive_bounds(in_size: int, out_size: int, index):
    """Start (inclusive) and end (exclusive) of the window of adaptive pooling output ``index``
    (an int, or an integer array of indices for arrays of bounds)."""
    start = (index * in_size) // out_size
    end = -(-((index + 1) * in_size) // out_size)
    return start, end



# ----------------------------------------------------------------------------- allocation

INT64_MAX = 2**63 - 1  # the kernels index with int64: sizes, strides and paddings stay below


@functools.lru_cache(maxsize=None)
def _physical_memory() -> int:
    """The machine's physical memory in bytes (``INT64_MAX`` if unknown); it does not change
    while the process runs, so it is asked once (two ``sysconf`` calls per layer call added up)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        return INT64_MAX


def memory_limit() -> int:
    """The most bytes one array may take in this process: the machine's physical memory, or
    the address-space limit (``RLIMIT_AS``, read on every call: it can change) when it is lower;
    ``INT64_MAX`` if neither is known."""
    limit = _physical_memory()
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            limit = min(limit, soft)
    except (ImportError, AttributeError, ValueError, OSError):
        pass
    return limit


def _bytes(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1024


def check_allocatable(op: str, shape, what: str = "output", itemsize: int = 4) -> None:
    """Refuse, before anything is allocated, a float32 array of ``shape`` larger than
    :func:`memory_limit`: a ``ValueError`` naming ``op``, ``what``, the shape and both sizes
    (the same on every backend, instead of a ``MemoryError`` or an exhausted machine)."""
    nbytes = math.prod(int(d) for d in shape) * itemsize
    limit = memory_limit()
    if nbytes > limit:
        dims = "(" + ", ".join(str(int(d)) for d in shape) + ")"
        raise ValueError(f"{op}: the {what} would have shape {dims} ({_bytes(nbytes)}), more than "
                         f"this process can allocate ({_bytes(limit)})")
