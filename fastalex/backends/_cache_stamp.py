"""Numba's on-disk cache, made to notice a change in any of the fast backend's modules.

Numba keys a cached kernel by its own source file only (a hash of that file). The fast
backend's kernels inline functions and ``@intrinsic``\\ s of its other modules: a kernel of
``_winograd.py`` runs ``_gemm.py``'s micro-kernel. Changing ``_gemm.py`` alone left that
kernel's old machine code in the cache, loaded as if current (seen in a development tree;
installed releases replace every file at once, but an editable install after ``git pull``
would not).

So the kernels defined in ``fastalex/backends`` get locators (Numba's ``_CacheLocator``: where
a function's cache lives and how fresh its source is) whose source stamp is the usual one plus
a hash of every ``.py`` file of this package: a change to any of them compiles every kernel
again (~15 s, once). Functions elsewhere keep Numba's locators. Importing this module installs
the locators; every module of this package that defines cached kernels imports it first.
"""

from __future__ import annotations

import functools
import hashlib
import os

from numba.core import caching

_HERE = os.path.dirname(os.path.abspath(__file__))


@functools.lru_cache(maxsize=None)
def package_digest() -> str:
    """A hash of the names and contents of this package's ``.py`` files ("" if unreadable)."""
    h = hashlib.sha256()
    try:
        names = sorted(n for n in os.listdir(_HERE) if n.endswith(".py"))
        for name in names:
            with open(os.path.join(_HERE, name), "rb") as f:
                h.update(name.encode() + b"\0" + f.read() + b"\0")
    except OSError:
        return ""
    return h.hexdigest()


def _in_package(py_file) -> bool:
    try:
        return os.path.dirname(os.path.abspath(py_file)) == _HERE
    except (TypeError, ValueError):
        return False


class _PackageStamp:
    """The mixin: only this package's functions, stamped with the whole package's hash."""

    def get_source_stamp(self):
        return (super().get_source_stamp(), package_digest())

    @classmethod
    def from_function(cls, py_func, py_file):
        if not _in_package(py_file):
            return None
        return super().from_function(py_func, py_file)


def _stamped(base):
    return type(f"Package{base.__name__}", (_PackageStamp, base), {})


#: Numba's file-backed locators, in Numba's order, with the package stamp
LOCATORS = tuple(_stamped(base) for base in (getattr(caching, name, None) for name in
                                              ("UserProvidedCacheLocator", "InTreeCacheLocator",
                                               "UserWideCacheLocator")) if base is not None)


def install() -> bool:
    """Put :data:`LOCATORS` first in Numba's list (once). False where Numba's internals differ
    (its own locators then apply: the cache works as Numba's)."""
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    classes = getattr(impl, "_locator_classes", None)
    if not isinstance(classes, list):
        return False
    if not any(c in classes for c in LOCATORS):
        classes[:0] = LOCATORS
    return True


install()
