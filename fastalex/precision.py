"""The bfloat16 paths of this CPU, for users and for the schedule tuner.

``precision="bfloat16"`` (on :func:`fastalex.alexnet`, :func:`fastalex.load_onnx`, the
``Conv2D``/``Dense`` layers and ``--precision`` on the command line) runs the products of
convolutions and dense layers in bfloat16 with float32 sums. On the numba backend they run on
the best path the CPU has (:func:`bf16_paths`, best first):

* ``"amx"``: Intel AMX tiles (``tdpbf16ps``; Sapphire Rapids and later, Linux),
* ``"avx512_bf16"``: ``vdpbf16ps`` (Cooper Lake, Sapphire Rapids, AMD Zen 4 and later),
* ``"emulation"``: any CPU; the same rounded inputs, float32 products by NumPy's sgemm.

:func:`set_bf16_path` (or ``FASTALEX_BF16_PATH``) picks another one of them, e.g. to time each.
The numpy backend always emulates. See docs/precision.md.
"""

from __future__ import annotations

__all__ = ["bf16_paths", "set_bf16_path", "active_bf16_path"]


def bf16_paths() -> list[str]:
    """The bfloat16 paths this CPU can run, best first; ``"emulation"`` is always last."""
    from .backends._bf16 import bf16_paths as paths
    return paths()


def set_bf16_path(name: str | None) -> None:
    """Run the numba backend's bfloat16 products on ``name`` (one of :func:`bf16_paths`) from
    now on, in this process; None: the best one again. ``ValueError`` for a path this CPU
    cannot run."""
    from .backends._bf16 import set_bf16_path as choose
    choose(name)


def active_bf16_path() -> str:
    """The path the numba backend's bfloat16 products run on now."""
    from .backends._bf16 import active_path
    return active_path()
