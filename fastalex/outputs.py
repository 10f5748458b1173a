"""Output files for ``classify --output`` and ``embed --output`` that survive interruptions.

**JSON lines** (``classify``): one record per input, appended a batch at a time with one
``write`` of whole lines, then ``flush`` and ``fsync``. A run killed mid-write can at worst leave
an incomplete last line; ``--resume`` cuts it off before appending, and skips every path that
already has a record (errors included: delete a line to try that file again).

**Vectors** (``embed``): ``.npy`` (plus ``<stem>.paths.txt``, one path per line), ``.npz``
(arrays ``paths`` and ``vectors``) or ``.parquet`` (columns ``path`` and ``vector``; needs
pyarrow). These formats cannot be appended to safely, so during a run the vectors go to a
journal next to the output, ``<output>.journal`` (JSON lines ``{"path", "vector"}``, the vector
as base64 of little-endian float32, appended and fsynced as above). When the run ends, the
output is written from the earlier output (with ``--resume``) and the journal to a temporary
file, renamed into place, and the journal is deleted. An interrupted run leaves its journal;
``--resume`` reads the output and the journal and skips the paths in them. Images that failed
are not stored, so ``--resume`` tries them again. A path is never stored twice.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import time

import numpy as np

from ._optional import install_hint

__all__ = ["JsonLinesOutput", "VectorOutput", "check_vector_path", "VECTOR_FORMATS", "PARQUET_HINT", "read_vectors"]

PARQUET_HINT = install_hint("parquet")
VECTOR_FORMATS = (".npy", ".npz", ".parquet")
FLUSH_SECONDS = 2.0


def _fsync_append(fd, data: bytes):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
    os.fsync(fd)


def scan_jsonl(path, repair=False):
    """The records of a JSON-lines file, skipping unparsable lines. With ``repair``, an
    incomplete last line (a write cut short) is truncated off the file."""
    records, good = [], 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break  # torn: only the last line can lack its newline
            good += len(line)
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    if repair and good < os.path.getsize(path):
        with open(path, "r+b") as f:
            f.truncate(good)
            os.fsync(f.fileno())
    return records


class _Appender:
    """Whole lines appended to ``path`` in batches (one write + fsync per flush)."""

    def __init__(self, path, append, flush_every):
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        self.fd = os.open(path, flags, 0o666)
        self.lines: list[str] = []
        self.flush_every = flush_every
        self.last = time.monotonic()

    def add(self, line: str):
        self.lines.append(line + "\n")
        if len(self.lines) >= self.flush_every or time.monotonic() - self.last > FLUSH_SECONDS:
            self.flush()

    def flush(self):
        if self.lines and self.fd is not None:
            data, self.lines = "".join(self.lines).encode("utf-8", "surrogateescape"), []
            _fsync_append(self.fd, data)
        self.last = time.monotonic()

    def close(self):
        if self.fd is not None:
            try:
                self.flush()
            finally:
                os.close(self.fd)
                self.fd = None


class JsonLinesOutput:
    """``classify --output FILE``: JSON lines; ``done`` holds the paths already in it (resume)."""

    def __init__(self, path, resume=False, flush_every=16):
        self.path = os.fspath(path)
        self.done: set = set()
        exists = os.path.exists(self.path)
        if resume and exists:
            self.done = {r.get("path") for r in scan_jsonl(self.path, repair=True) if isinstance(r, dict)}
        self._out = _Appender(self.path, append=resume and exists, flush_every=flush_every)

    def write(self, line: str):
        self._out.add(line)

    def finish(self):
        self._out.close()

    def close(self):
        self._out.close()


# ----------------------------------------------------------------------------- vectors

def check_vector_path(path) -> str:
    """The format (extension) of a vector output; ValueError for an unknown extension,
    ImportError naming the extra when ``.parquet`` lacks pyarrow."""
    return _format(os.fspath(path))


def _format(path):
    ext = os.path.splitext(path)[1].lower()
    if ext not in VECTOR_FORMATS:
        raise ValueError(f"embed: the output must end in {', '.join(VECTOR_FORMATS)} (the format is "
                         f"chosen by the extension), got {path!r}")
    if ext == ".parquet":
        _pyarrow()
    return ext


def _pyarrow():
    from ._optional import require
    require("pyarrow.parquet", extra="parquet", purpose="writing .parquet")
    return require("pyarrow", extra="parquet", purpose="writing .parquet")


def paths_file(path) -> str:
    """The paths file that goes with an ``.npy`` output: ``vectors.npy`` -> ``vectors.paths.txt``."""
    return os.path.splitext(os.fspath(path))[0] + ".paths.txt"


def _encode(vector):
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")


def _decode(text):
    return np.frombuffer(base64.b64decode(text), dtype="<f4")


def read_vectors(path, chunk=4096):
    """``(paths, chunks)`` of an output written by :class:`VectorOutput`: the list of paths and
    an iterator of float32 ``(rows, dim)`` chunks in the same order (files are not read whole
    where the format allows it)."""
    path = os.fspath(path)
    fmt = _format(path)
    if fmt == ".npy":
        with open(paths_file(path), "r", encoding="utf-8", errors="surrogateescape", newline="\n") as f:
            paths = [line[:-1] if line.endswith("\n") else line for line in f]
        vectors = np.load(path, mmap_mode="r")
        if len(vectors) != len(paths):
            raise ValueError(f"{path} holds {len(vectors)} vectors but {paths_file(path)} {len(paths)} paths")
        return paths, (np.asarray(vectors[i:i + chunk]) for i in range(0, len(vectors), chunk))
    if fmt == ".npz":
        with np.load(path, allow_pickle=False) as z:
            paths, vectors = [str(p) for p in z["paths"]], z["vectors"]
        return paths, iter([vectors] if len(vectors) else [])
    import pyarrow.parquet as pq
    pf = pq.ParquetFile(path)
    paths = [p for b in pf.iter_batches(columns=["path"]) for p in b.column(0).to_pylist()]

    def chunks():
        for b in pf.iter_batches(columns=["vector"], batch_size=chunk):
            col = b.column(0)
            yield np.asarray(col.flatten(), dtype=np.float32).reshape(len(col), -1)
    return paths, chunks()


class VectorOutput:
    """``embed --output FILE`` (``.npy``/``.npz``/``.parquet``) through a journal; see the module doc.

    ``done`` holds the paths already stored (with ``resume``). :meth:`write` journals one
    vector, :meth:`finish` writes the output and deletes the journal, :meth:`close` (after an
    interruption) only closes the journal.
    """

    def __init__(self, path, resume=False, flush_every=16):
        self.path = os.fspath(path)
        self.format = _format(self.path)
        self.journal = self.path + ".journal"
        self.done: set = set()
        self.dim = None
        if resume:
            if os.path.exists(self.path):
                paths, chunks = read_vectors(self.path)
                self.done.update(paths)
                for c in chunks:
                    self.dim = c.shape[1]
                    break
            if os.path.exists(self.journal):
                for r in scan_jsonl(self.journal, repair=True):
                    self.done.add(r["path"])
                    self.dim = len(_decode(r["vector"]))
        self._resume = resume
        self._out = _Appender(self.journal, append=resume, flush_every=flush_every)

    def write(self, path, vector):
        vector = np.asarray(vector, dtype=np.float32).ravel()
        if self.dim is None:
            self.dim = len(vector)
        elif len(vector) != self.dim:
            raise ValueError(f"embed: vectors of {len(vector)} values, but {self.path} (or its journal) "
                             f"holds vectors of {self.dim}: resume with the same --layer, or start a new file")
        self._out.add(json.dumps({"path": path, "vector": _encode(vector)}, ensure_ascii=True))

    def close(self):
        self._out.close()

    def finish(self):
        """Write the output from the earlier output (resume) and the journal; delete the journal."""
        self._out.close()
        sources = []
        if self._resume and os.path.exists(self.path):
            sources.append(read_vectors(self.path))
        sources.append(self._journal_source())
        paths, seen, keep = [], set(), []
        for source_paths, _ in sources:  # first occurrence of each path wins
            mask = np.zeros(len(source_paths), bool)
            for i, p in enumerate(source_paths):
                if p not in seen:
                    seen.add(p)
                    paths.append(p)
                    mask[i] = True
            keep.append(mask)
        dim = self.dim or 0

        def rows():
            for (_, chunks), mask in zip(sources, keep):
                offset = 0
                for c in chunks:
                    m = mask[offset:offset + len(c)]
                    offset += len(c)
                    if m.any():
                        yield np.ascontiguousarray(c[m], dtype="<f4")

        getattr(self, "_write_" + self.format[1:])(paths, rows(), dim)
        os.unlink(self.journal)

    def _journal_source(self):
        if not os.path.exists(self.journal):
            return [], iter(())
        records = scan_jsonl(self.journal)
        paths = [r["path"] for r in records]

        def chunks(n=1024):
            for i in range(0, len(records), n):
                yield np.stack([_decode(r["vector"]) for r in records[i:i + n]])
        return paths, chunks()

    # -- writers: each to a temp file next to the output, renamed into place

    def _tmp(self, target):
        d = os.path.dirname(os.path.abspath(target))
        fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{os.path.basename(target)}.", suffix=".part")
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as an ordinary new file, not mkstemp's 0600
        return tmp

    def _replace(self, tmp, target):
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)

    def _write_npy(self, paths, rows, dim):
        tmp, tmp_paths = self._tmp(self.path), self._tmp(paths_file(self.path))
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype="<f4", shape=(len(paths), dim))
            i = 0
            for r in rows:
                out[i:i + len(r)] = r
                i += len(r)
            out.flush()
            del out
            with open(tmp_paths, "w", encoding="utf-8", errors="surrogateescape", newline="\n") as f:
                f.writelines(p + "\n" for p in paths)
            self._replace(tmp, self.path)
            self._replace(tmp_paths, paths_file(self.path))
        finally:
            for t in (tmp, tmp_paths):
                if os.path.exists(t):
                    os.unlink(t)

    def _write_npz(self, paths, rows, dim):
        import zipfile
        tmp = self._tmp(self.path)
        try:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
                with z.open("paths.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.array(paths, dtype=str) if paths else np.array([], dtype="<U1"))
                with z.open("vectors.npy", "w", force_zip64=True) as f:  # streamed: never all in memory
                    np.lib.format.write_array_header_2_0(
                        f, {"descr": "<f4", "fortran_order": False, "shape": (len(paths), dim)})
                    for r in rows:
                        f.write(r.tobytes())
            self._replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _write_parquet(self, paths, rows, dim):
        pa = _pyarrow()
        import pyarrow.parquet as pq
        schema = pa.schema([("path", pa.string()), ("vector", pa.list_(pa.float32(), dim))])
        tmp = self._tmp(self.path)
        try:
            with pq.ParquetWriter(tmp, schema) as writer:
                i = 0
                for r in rows:
                    names = [p.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                             for p in paths[i:i + len(r)]]
                    vectors = pa.FixedSizeListArray.from_arrays(pa.array(r.ravel(), pa.float32()), dim)
                    writer.write_table(pa.table({"path": pa.array(names, pa.string()), "vector": vectors},
                                                schema=schema))
                    i += len(r)
                if not paths:
                    writer.write_table(schema.empty_table())
            self._replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
