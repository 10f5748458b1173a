"""One base class for every exception fastalex defines, defined in fastalex.errors, printed by
the CLI as it is; one helper for optional imports (issue 20)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import socket

import pytest

import fastalex
from fastalex import cli, errors
from fastalex._optional import install_hint, require


#: the top-level packages of the optional extras (pyproject.toml): a module that needs one is
#: checked where the extra is installed (CI installs them all), and skipped where it is not
OPTIONAL_PACKAGES = {"starlette", "uvicorn", "multipart", "dask", "distributed", "onnx", "pyarrow", "matplotlib"}


def _all_modules():
    names = [m.name for m in pkgutil.walk_packages(fastalex.__path__, "fastalex.")]
    skip = {"fastalex.__main__", "fastalex._dask_preload"}
    modules = []
    for name in names:
        if name in skip:
            continue
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:  # an extra not installed (the README's plain install)
            if (exc.name or "").split(".")[0] not in OPTIONAL_PACKAGES:
                raise
        except ImportError:  # the kernels of an instruction set this CPU (or OS) lacks refuse to import
            if not name.startswith("fastalex.backends._bf16_"):
                raise
    return modules


def test_every_exception_class_fastalex_defines_is_a_fastalex_error():
    defined = []
    for module in _all_modules():
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException) and not issubclass(obj, Warning)
                    and obj.__module__.startswith("fastalex")):
                defined.append(obj)
                assert issubclass(obj, fastalex.FastalexError), f"{module.__name__}.{name}"
    assert len(set(defined)) >= len(errors.__all__)


def test_errors_keep_their_builtin_bases_and_old_import_paths():
    from fastalex import _torch_pickle, images, labels, models, onnx_import, weights
    from fastalex import distributed
    assert _torch_pickle.WeightsFileError is weights.WeightsFileError is errors.WeightsFileError
    assert _torch_pickle.UnsafePickleError is errors.UnsafePickleError
    assert models.WeightsMismatchError is errors.WeightsMismatchError is fastalex.WeightsMismatchError
    assert images.ImageError is errors.ImageError and onnx_import.OnnxError is errors.OnnxError
    assert labels.LabelsError is errors.LabelsError and distributed.ModelLoadError is errors.ModelLoadError
    assert issubclass(errors.WeightsFileNotFoundError, FileNotFoundError)
    for cls in (errors.WeightsFileError, errors.ImageError, errors.OnnxError, errors.LabelsError,
                errors.WeightsMismatchError):
        assert issubclass(cls, ValueError)
    assert issubclass(errors.WeightsUnavailableError, RuntimeError)


def test_a_library_error_is_caught_by_the_base_class(tmp_path):
    with pytest.raises(fastalex.FastalexError, match="no-such.pth"):
        fastalex.load_weights(tmp_path / "no-such.pth")
    with pytest.raises(fastalex.FastalexError):
        fastalex.load_image(tmp_path / "missing.png")


def test_cli_prints_the_library_message_as_it_is(tmp_path, monkeypatch, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("FASTALEX_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("FASTALEX_WEIGHTS_URL", f"http://127.0.0.1:{port}/alexnet-owt-7be5be79.pth")
    with pytest.raises(fastalex.WeightsUnavailableError) as info:
        fastalex.hub.download_imagenet(progress=False)
    assert cli.main(["weights", "download"]) == 2
    err = capsys.readouterr().err
    assert err == f"fastalex: error: {info.value}\n"
    # the library's advice fits both audiences: no Python-only syntax left to rewrite
    assert "--weights FILE" in err and "weights=PATH" in err and "--random-weights" in err


def test_cli_layer_errors_are_the_library_message(capsys):
    assert cli.main(["show", "filters", "--random-weights", "--variant", "original",
                     "--layer", "nope", "-o", "x.png"]) == 2
    err = capsys.readouterr().err
    with pytest.raises(ValueError) as info:
        fastalex.viz.filters(fastalex.alexnet("original", seed=None), "nope")
    assert err.splitlines()[-1] == f"fastalex: error: {info.value}"


def test_require_names_the_extra():
    assert require("json", extra="x", purpose="p").dumps is not None
    with pytest.raises(ImportError) as info:
        require("no_such_pkg_fastalex.sub", extra="dask", purpose="reading s3://b/x", alternative="pip install nsp")
    assert str(info.value) == ("reading s3://b/x needs no_such_pkg_fastalex: pip install 'fastalex[dask]' "
                               "(or pip install nsp)")
    with pytest.raises(ImportError, match=r"^a distributed run needs Dask: pip install 'fastalex\[dask\]'$"):
        require("no_such_pkg_fastalex", extra="dask", purpose="a distributed run", package="Dask")
    assert install_hint("onnx") == "pip install 'fastalex[onnx]'"


def test_one_helper_for_optional_imports():
    """No module imports an optional package in a try/except of its own any more."""
    import re
    from pathlib import Path
    for path in Path(fastalex.__path__[0]).rglob("*.py"):
        assert not re.search(r"except ImportError:\n\s+raise ImportError", path.read_text()), path
