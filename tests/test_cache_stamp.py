"""Numba's cache of the fast backend's kernels notices a change in any module of the package
(``fastalex.backends._cache_stamp``): a kernel that inlines another module's code is compiled
again when that module changes, not loaded stale. Functions elsewhere keep Numba's caching."""

from __future__ import annotations

import importlib.util
import textwrap

import numpy as np
import pytest

pytest.importorskip("numba")

from numba.core.caching import FunctionCache  # noqa: E402

from fastalex.backends import _cache_stamp, _pool, fast  # noqa: E402

KERNELS = [fast._im2col, fast._lrn, _pool.max_pool]


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.__name__)
def test_package_kernels_are_stamped_with_the_whole_package(kernel):
    locator = kernel._cache._impl.locator
    assert isinstance(locator, _cache_stamp.LOCATORS), type(locator)
    own, package = locator.get_source_stamp()
    assert package == _cache_stamp.package_digest() and len(package) == 64


def test_a_change_elsewhere_in_the_package_makes_a_cached_kernel_stale(monkeypatch):
    """What Numba does on load: the index on disk is compared with the stamp of now. With the
    package's hash changed (another module edited), the kernel's cached index no longer loads."""
    x = np.zeros((1, 2, 5, 5), np.float32)
    fast.max_pool2d(x, (3, 3), (2, 2), (0, 0), False)  # compiled (or loaded) and saved
    now = FunctionCache(_pool.max_pool.py_func)
    assert now._cache_file._load_index(), "the kernel is cached under the current stamp"

    monkeypatch.setattr(_cache_stamp, "package_digest", lambda: "another source tree")
    edited = FunctionCache(_pool.max_pool.py_func)
    assert edited._cache_file._source_stamp != now._cache_file._source_stamp
    assert edited._cache_file._load_index() == {}, "a stale kernel would have been loaded"


def test_functions_outside_the_package_keep_numbas_locators(tmp_path):
    src = tmp_path / "user_kernel.py"
    src.write_text(textwrap.dedent("""
        from numba import njit

        @njit(cache=True)
        def twice(x):
            return 2 * x
    """))
    spec = importlib.util.spec_from_file_location("user_kernel", src)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.twice(3) == 6
    assert not isinstance(module.twice._cache._impl.locator, _cache_stamp.LOCATORS)


def test_the_digest_covers_every_module_of_the_package(tmp_path, monkeypatch):
    (tmp_path / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(_cache_stamp, "_HERE", str(tmp_path))
    _cache_stamp.package_digest.cache_clear()
    try:
        first = _cache_stamp.package_digest()
        (tmp_path / "b.py").write_text("y = 2\n")
        _cache_stamp.package_digest.cache_clear()
        second = _cache_stamp.package_digest()
        (tmp_path / "b.py").write_text("y = 3\n")
        _cache_stamp.package_digest.cache_clear()
        third = _cache_stamp.package_digest()
    finally:
        monkeypatch.undo()
        _cache_stamp.package_digest.cache_clear()
    assert len({first, second, third}) == 3
