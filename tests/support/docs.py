"""The code blocks of README.md and docs/*.md, as ``tests/test_docs.py`` runs them.

Rules (docs/index.md repeats them for writers):

- A ```` ```python ```` block runs as it is. The Python blocks of one page run in order, in
  one namespace, so a later block may use what an earlier one made.
- A ```` ```bash ```` (or ``sh``, ``console``, ``shell``) block runs line by line in bash (a
  line ending in ``\\`` continues on the next; a ``$ `` prompt is dropped); every command
  must exit 0.
- Other blocks (``text``, ``yaml``, ``toml``, no language) are not run.
- An HTML comment right above a block changes that: ``<!-- docs-test: skip (why) -->`` does
  not run it (the reason is required, and the skips are counted by the test);
  ``<!-- docs-test: needs onnx -->`` skips it where that module is missing.
- The blocks of a page run in a fresh folder holding ``photo.jpg``, ``photos/`` (three small
  images), ``holiday/`` (one), ``bvlcalexnet-12.onnx`` (a narrow stand-in of the ONNX zoo's
  file, from ``tests/fixtures/onnx/``), and ``$FASTALEX_HOME`` is a cache holding seeded
  random weights in place of the ImageNet ones, so ``weights="imagenet"`` works offline
  (the answers are meaningless; the commands and code are what is tested). Downloads go to
  a closed port on 127.0.0.1: nothing reaches the network.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUN_LANGS = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "console": "bash", "shell": "bash"}
_FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w+-]*)\s*$")
_MARKER = re.compile(r"<!--\s*docs-test:\s*(?P<what>[^>]*?)\s*-->")


@dataclasses.dataclass
class Block:
    page: str
    line: int          # 1-based line of the opening fence
    lang: str          # "python", "bash", or "" for blocks that are not run
    code: str
    skip: str | None = None       # the reason, for a block marked skip
    needs: tuple = ()             # modules it needs (skipped where missing)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def pages() -> list[Path]:
    """README.md and every docs/*.md."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, with their markers."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    page = str(Path(path).relative_to(ROOT)) if Path(path).is_relative_to(ROOT) else str(path)
    out, i, pending = [], 0, []
    while i < len(lines):
        marker = _MARKER.search(lines[i])
        if marker and not _FENCE.match(lines[i]):
            pending.append(marker.group("what"))
            i += 1
            continue
        m = _FENCE.match(lines[i])
        if not m:
            if lines[i].strip():
                pending = []  # a marker applies to the block right below it only
            i += 1
            continue
        indent, lang, start = len(m.group("indent")), m.group("lang").lower(), i
        body = []
        i += 1
        while i < len(lines) and not re.match(r"^ *```\s*$", lines[i]):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        i += 1  # the closing fence
        block = Block(page, start + 1, RUN_LANGS.get(lang, ""), "\n".join(body) + "\n")
        for what in pending:
            if what.startswith("skip"):
                reason = re.match(r"skip\s*\((.+)\)\s*$", what)
                block.skip = reason.group(1) if reason else ""
            elif what.startswith("needs "):
                block.needs += tuple(what.split()[1:])
            else:
                raise ValueError(f"{page}:{start + 1}: unknown docs-test marker {what!r}")
        pending = []
        out.append(block)
    return out


def commands(code: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and prompts dropped."""
    out, current = [], ""
    for raw in code.splitlines():
        line = raw[2:] if raw.startswith("$ ") else raw
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        out.append(current + line)
        current = ""
    if current:
        out.append(current)
    return out
