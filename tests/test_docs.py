"""Every Python block and shell command of README.md and docs/*.md runs as written (issue 20).

How blocks are found and marked: tests/support/docs.py. Each page runs in a fresh folder with
small photos and an ONNX stand-in; ``$FASTALEX_HOME`` holds seeded random weights in place of
the ImageNet ones, so everything runs offline (the predictions are meaningless).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from support.docs import ROOT, blocks, commands, pages
from support.fixture_specs import FIXTURES

PAGES = pages()
#: blocks marked ``<!-- docs-test: skip (why) -->``: raise this only with a reason in the page
SKIPPED = 15
OFFLINE_URL = "http://127.0.0.1:9/alexnet-owt-7be5be79.pth"  # the discard port: refused, offline


@pytest.fixture(scope="session")
def imagenet_stand_in(tmp_path_factory):
    """A cache holding torchvision's AlexNet with seeded random weights where the ImageNet
    weights go, with the digest fastalex records: ``weights="imagenet"`` loads it offline."""
    import fastalex
    from fastalex import hub as W
    home = tmp_path_factory.mktemp("fastalex-home")
    saved = os.environ.get("FASTALEX_HOME")
    os.environ["FASTALEX_HOME"] = str(home)
    try:
        paths = W.IMAGENET1K_V1.paths()
        fastalex.save_weights(fastalex.alexnet("torchvision", seed=0, backend="numpy"), paths["npz"])
        digest = hashlib.sha256(paths["npz"].read_bytes()).hexdigest()
        paths["digest"].write_text(f"{digest}  {paths['npz'].name}\n")
        assert W.IMAGENET1K_V1.cached() == paths["npz"]
    finally:
        if saved is None:
            del os.environ["FASTALEX_HOME"]
        else:
            os.environ["FASTALEX_HOME"] = saved
    return home


def _photo(path, size=(320, 240), seed=0):
    rng = np.random.default_rng(seed)
    w, h = size
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    pixels = ramp * rng.uniform(0.3, 1.0, (1, 1, 3)) + rng.uniform(0, 40, (h, w, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)


@pytest.fixture
def workdir(tmp_path, imagenet_stand_in, monkeypatch):
    """The folder a page's blocks run in, and the environment they see."""
    _photo(tmp_path / "photo.jpg")
    (tmp_path / "photos").mkdir()
    for i, name in enumerate(["beach.jpg", "dog.jpg", "cat.png"]):
        _photo(tmp_path / "photos" / name, size=(200 + 40 * i, 160), seed=i + 1)
    (tmp_path / "holiday").mkdir()
    _photo(tmp_path / "holiday" / "sea.jpg", seed=9)
    shutil.copy(FIXTURES / "onnx" / "caffe_alexnet.onnx", tmp_path / "bvlcalexnet-12.onnx")
    bin_dir = tmp_path / ".bin"
    bin_dir.mkdir()
    for name, target in (("fastalex", f'"{sys.executable}" -m fastalex'), ("python", f'"{sys.executable}"'),
                         ("python3", f'"{sys.executable}"')):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        (bin_dir / name).chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FASTALEX_HOME", str(imagenet_stand_in))
    monkeypatch.setenv("FASTALEX_WEIGHTS_URL", OFFLINE_URL)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.delenv("FASTALEX_BACKEND", raising=False)
    return tmp_path


def _missing(block):
    return [m for m in block.needs if importlib.util.find_spec(m) is None]


def _run_python(block, namespace):
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(block.code, block.where, "exec"), namespace)
    except Exception as exc:
        raise AssertionError(f"{block.where}: the Python block failed: {type(exc).__name__}: {exc}") from exc


#: a plain ``fastalex ...`` command (no pipe, redirection, variable or glob) runs in this
#: process, through the same ``cli.main`` the installed command calls: no interpreter start
#: and Numba import per command; anything else runs in bash
_PLAIN = re.compile(r"(fastalex|python -m fastalex)\s[^|<>;&$`*?~(){}]*")


def _run_command(command):
    """``(status, stdout, stderr)`` of one shell command."""
    words = shlex.split(command, comments=True)
    if _PLAIN.fullmatch(command.split(" #")[0].strip()) and words:
        from fastalex import cli
        argv = words[3:] if words[0] == "python" else words[1:]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = cli.main(argv)
        return status, out.getvalue(), err.getvalue()
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout, proc.stderr


def _run_shell(block):
    for command in commands(block.code):
        status, out, err = _run_command(command)
        if status != 0:
            tail = "\n".join((err or out).strip().splitlines()[-5:])
            raise AssertionError(f"{block.where}: `{command}` exited {status}:\n{tail}")


@pytest.fixture
def restored_settings():
    """A page may change module-level settings (``fastalex._files.MAX_WEIGHTS_BYTES = ...``):
    they are put back after it, so other tests see the defaults."""
    saved = {name: {k: v for k, v in vars(m).items() if k.isupper()}
             for name, m in list(sys.modules.items()) if name.startswith("fastalex")}
    yield
    for name, values in saved.items():
        for k, v in values.items():
            setattr(sys.modules[name], k, v)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_runs_as_written(page, workdir, restored_settings):
    namespace = {"__name__": "__docs__"}
    ran = 0
    for block in blocks(page):
        if not block.lang or block.skip is not None or _missing(block):
            continue
        if block.lang == "python":
            _run_python(block, namespace)
        else:
            _run_shell(block)
        ran += 1
    if not ran:
        pytest.skip("no runnable block on this page")


def test_skipped_blocks_are_explained_and_counted():
    skipped = [b for page in PAGES for b in blocks(page) if b.skip is not None]
    unexplained = [b.where for b in skipped if not b.skip.strip()]
    assert not unexplained, f"say why a block cannot run: <!-- docs-test: skip (needs network) --> at {unexplained}"
    assert len(skipped) == SKIPPED, (f"{len(skipped)} blocks are skipped, SKIPPED says {SKIPPED}: "
                                     + ", ".join(f"{b.where} ({b.skip})" for b in skipped))


def test_every_page_is_reachable_and_every_link_resolves():
    index = (ROOT / "docs" / "index.md").read_text()
    for page in PAGES[1:]:
        if page.name != "index.md":
            assert f"({page.name})" in index, f"docs/index.md does not link {page.name}"
    assert "(docs/index.md)" in (ROOT / "README.md").read_text()
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (page.parent / target).exists(), f"{page.name}: link to {target}, which does not exist"


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_block_finder():
    from support.docs import Block  # noqa: F401
    text = ("intro\n<!-- docs-test: skip (needs network) -->\n```bash\nfastalex weights download\n```\n"
            "```python\nx = 1\n```\n<!-- docs-test: needs onnx -->\n\n```bash\na \\\n  b  # c\n# only a comment\n```\n"
            "```text\nnot run\n```\n")
    path = ROOT / "tests" / ".docs_probe.md"
    try:
        path.write_text(text)
        found = blocks(path)
    finally:
        path.unlink()
    assert [(b.lang, b.skip, b.needs) for b in found] == [
        ("bash", "needs network", ()), ("python", None, ()), ("bash", None, ("onnx",)), ("", None, ())]
    assert commands(found[2].code) == ["a    b  # c"]
