"""``embed --output FILE``: vectors in ``.npy`` (plus ``<stem>.paths.jsonl``), ``.npz`` or
``.parquet``, through a journal that makes a run resumable and its end one atomic step; the
run's settings recorded, and compared on ``resume``. See :mod:`fastalex.outputs`."""

from __future__ import annotations

import base64
import binascii
import io
import json
import os

import numpy as np

from .._optional import install_hint
from .durable import (FULL, Appender, DiskFullError, JournalError, Lock, OutputError, RunMismatchError,
                      check_output_path, fsync_append, fsync_dir, not_a_record, scan_numbered, write_all)

__all__ = ["VectorOutput", "check_vector_path", "read_vectors", "read_run", "paths_file", "legacy_paths_file",
           "VECTOR_FORMATS", "PARQUET_HINT"]

PARQUET_HINT = install_hint("parquet")


VECTOR_FORMATS = (".npy", ".npz", ".parquet")


JOURNAL_VERSION = 2


PATHS_VERSION = 2


_PARQUET_RUN_KEY = b"fastalex.run"


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
    from .._optional import require
    require("pyarrow.parquet", extra="parquet", purpose="writing .parquet")
    return require("pyarrow", extra="parquet", purpose="writing .parquet")


def paths_file(path) -> str:
    """The paths file that goes with an ``.npy`` output: ``vectors.npy`` -> ``vectors.paths.jsonl``
    (a header line, then one JSON string per line; see the module doc)."""
    return os.path.splitext(os.fspath(path))[0] + ".paths.jsonl"


def legacy_paths_file(path) -> str:
    """The paths file of ``.npy`` outputs written by fastalex before the ``.paths.jsonl`` one
    (one path per line, no escapes: still read)."""
    return os.path.splitext(os.fspath(path))[0] + ".paths.txt"


def _encode(vector):
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")


def _decode(text):
    return np.frombuffer(base64.b64decode(text), dtype="<f4")


def _read_npy_paths(path):
    """``(paths, run)`` of an ``.npy`` output's paths file (the new one, else the legacy one)."""
    new = paths_file(path)
    if os.path.exists(new):
        with open(new, "rb") as f:
            lines = f.read().split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        try:
            header = json.loads(lines[0]) if lines else None
            paths = [json.loads(line) for line in lines[1:]]
        except ValueError as exc:
            raise OutputError(f"{new} is damaged ({exc}); embed again without --resume") from None
        if not (isinstance(header, dict) and header.get("fastalex") == "embed paths"
                and all(isinstance(p, str) for p in paths)):
            raise OutputError(f"{new} is not a fastalex paths file; embed again without --resume")
        if header.get("rows") != len(paths):
            raise OutputError(f"{new} says {header.get('rows')} paths but holds {len(paths)}; "
                              f"embed again without --resume")
        return paths, header.get("run")
    with open(legacy_paths_file(path), "r", encoding="utf-8", errors="surrogateescape", newline="\n") as f:
        return [line[:-1] if line.endswith("\n") else line for line in f], None


def read_vectors(path, chunk=4096):
    """``(paths, chunks)`` of an output written by :class:`VectorOutput`: the list of paths and
    an iterator of float32 ``(rows, dim)`` chunks in the same order (files are not read whole
    where the format allows it). Paths are exactly the names stored (see the module doc)."""
    path = os.fspath(path)
    fmt = _format(path)
    if fmt == ".npy":
        paths, _ = _read_npy_paths(path)
        vectors = np.load(path, mmap_mode="r")
        if len(vectors) != len(paths):
            raise OutputError(f"{path} holds {len(vectors)} vectors but {paths_file(path)} {len(paths)} paths")
        return paths, (np.asarray(vectors[i:i + chunk]) for i in range(0, len(vectors), chunk))
    if fmt == ".npz":
        with np.load(path, allow_pickle=False) as z:
            paths, vectors = [str(p) for p in z["paths"]], z["vectors"]
        return paths, iter([vectors] if len(vectors) else [])
    import pyarrow.parquet as pq
    pf = pq.ParquetFile(path)
    column = "path_bytes" if "path_bytes" in pf.schema_arrow.names else "path"
    paths = [p for b in pf.iter_batches(columns=[column]) for p in b.column(0).to_pylist()]
    if column == "path_bytes":
        paths = [os.fsdecode(p) for p in paths]

    def chunks():
        for b in pf.iter_batches(columns=["vector"], batch_size=chunk):
            col = b.column(0)
            yield np.asarray(col.flatten(), dtype=np.float32).reshape(len(col), -1)
    return paths, chunks()


def read_run(path):
    """The run settings recorded in an output of :class:`VectorOutput` (None if it has none:
    written before fastalex recorded them, or without ``run=``)."""
    path = os.fspath(path)
    fmt = _format(path)
    if fmt == ".npy":
        return _read_npy_paths(path)[1]
    if fmt == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z["run"])) if "run" in z.files else None
    import pyarrow.parquet as pq
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[_PARQUET_RUN_KEY]) if _PARQUET_RUN_KEY in meta else None


_OPTION = {"layer": "--layer", "normalize": "--normalize", "weights": "--weights", "weight_dtype": "--weight-dtype",
           "precision": "--precision",
           "preprocess": "--preprocess", "variant": "--variant", "num_classes": "--num-classes"}


def _compare_runs(where, old, new):
    """RunMismatchError naming each setting that differs between ``old`` and ``new``."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return
    shown = {k for k in old if k.endswith("_shown")}
    diffs = []
    for key in sorted(set(old) & set(new) - shown):
        if old[key] != new[key]:
            a, b = old.get(key + "_shown", old[key]), new.get(key + "_shown", new[key])
            diffs.append(f"{_OPTION.get(key, key)}: {json.dumps(a)} there, {json.dumps(b)} now")
    if diffs:
        raise RunMismatchError(f"--resume: {where} belongs to a run with other settings ({'; '.join(diffs)}); "
                               f"resume with that run's settings, or write to another file (or leave out "
                               f"--resume to replace it)")


class _Commit:
    """What a finished run renames into place, as a journal line: ``{"commit": [[part, target,
    size], ...], "remove": [...]}`` (names relative to the output's folder)."""

    @staticmethod
    def apply(folder, commit, journal):
        for part, target, size in commit["commit"]:
            part_path, target_path = os.path.join(folder, part), os.path.join(folder, target)
            if os.path.exists(part_path):
                os.replace(part_path, target_path)
            elif not (os.path.exists(target_path) and os.path.getsize(target_path) == size):
                raise OutputError(f"{journal} ends in a commit of {part} ({size} bytes) to {target}, but "
                                  f"neither is there as committed; delete the journal's last line to resume "
                                  f"from its records")
        for name in commit.get("remove", ()):
            try:
                os.unlink(os.path.join(folder, name))
            except FileNotFoundError:
                pass
        fsync_dir(os.path.join(folder, "x"))

    @staticmethod
    def valid(record):
        def name(n):
            return isinstance(n, str) and n and os.sep not in n and n not in (".", "..")
        c = record.get("commit")
        return (isinstance(c, list) and all(
            isinstance(p, list) and len(p) == 3 and name(p[0]) and name(p[1]) and isinstance(p[2], int)
            for p in c) and isinstance(record.get("remove", []), list)
            and all(name(n) for n in record.get("remove", [])))


class VectorOutput:
    """``embed --output FILE`` (``.npy``/``.npz``/``.parquet``) through a journal; see the module doc.

    ``done`` holds the paths already stored (with ``resume``). :meth:`write` journals one
    vector, :meth:`finish` writes the output and deletes the journal, :meth:`close` (after an
    interruption) only closes the journal. ``run``: a JSON-able dict of the settings that
    change the vectors; with ``resume`` it must equal the one recorded (RunMismatchError).
    """

    def __init__(self, path, resume=False, flush_every=16, run=None):
        self.path = check_output_path(path)
        self.format = _format(self.path)
        self.journal = self.path + ".journal"
        self.folder = os.path.dirname(os.path.abspath(self.path))
        self.run = run
        self.done: set = set()
        self.dim = None
        self._lock = Lock(self.path)
        try:
            self._open(resume, flush_every)
        except BaseException:
            self._lock.release()
            raise

    def _targets(self):
        targets = [self.path] + ([paths_file(self.path)] if self.format == ".npy" else [])
        return [(os.path.join(self.folder, f".{os.path.basename(t)}.part"), t) for t in targets]

    def _open(self, resume, flush_every):
        header, records = None, []
        if os.path.exists(self.journal):
            try:
                header, records, commit = self._read_journal()
            except JournalError:
                if resume:
                    raise
                header, records, commit = None, [], None  # a new run: the old journal is dropped
            if commit is not None:  # a finished run died while renaming: complete it
                _Commit.apply(self.folder, commit, self.journal)
                os.unlink(self.journal)
                header, records = None, []
        for part, _ in self._targets():  # left by a run that died before its commit: never used
            if os.path.exists(part):
                os.unlink(part)
        self._base = bool(resume and os.path.exists(self.path) and not (header or {}).get("replaces"))
        if resume and header is not None:
            _compare_runs(f"the unfinished run in {self.journal}", header.get("run"), self.run)
        if self._base:
            _compare_runs(self.path, read_run(self.path), self.run)
            paths, chunks = read_vectors(self.path)
            self.done.update(paths)
            for c in chunks:
                self.dim = c.shape[1]
                break
        if resume and records:
            self.done.update(r["path"] for _, r in records)
            dim = len(_decode(records[0][1]["vector"]))
            if self.dim is not None and dim != self.dim:
                raise OutputError(f"--resume: {self.path} holds vectors of {self.dim} values but its journal "
                                  f"{self.journal} vectors of {dim}; delete the journal to keep the output")
            self.dim = dim
        append = bool(resume and os.path.exists(self.journal))
        self._out = Appender(self.journal, append=append, flush_every=flush_every)
        if not append or header is None and not records:
            if append:  # an empty journal: start it again with its header
                os.ftruncate(self._out.fd, 0)
            head = {"fastalex": "embed journal", "version": JOURNAL_VERSION, "output": os.path.basename(self.path),
                    "replaces": not self._base, "run": self.run}
            fsync_append(self._out.fd, (json.dumps(head, ensure_ascii=True) + "\n").encode("ascii"))

    def _read_journal(self):
        """``(header, [(line, record)], commit)`` of the journal; JournalError for a line that is
        JSON but not one of its lines."""
        header, records, commit, dim = None, [], None, self.dim
        fix = "delete that line (its image is embedded again), or the journal to start over"
        for number, r in scan_numbered(self.journal, repair=True):
            if commit is not None:
                raise not_a_record(self.journal, number, r, "expected after a commit line", fix)
            if isinstance(r, dict) and r.get("fastalex") == "embed journal" and number == 1:
                if r.get("version") != JOURNAL_VERSION:
                    raise JournalError(f"{self.journal}: journal version {r.get('version')!r}, this fastalex "
                                       f"reads version {JOURNAL_VERSION}; delete it to start over")
                header = r
                continue
            if isinstance(r, dict) and "commit" in r:
                if not _Commit.valid(r):
                    raise not_a_record(self.journal, number, r, "a valid commit line", fix)
                commit = r
                continue
            ok = isinstance(r, dict) and isinstance(r.get("path"), str) and isinstance(r.get("vector"), str)
            if ok:
                try:
                    raw = base64.b64decode(r["vector"], validate=True)
                except (binascii.Error, ValueError):
                    raw = b"x"
                ok = len(raw) >= 4 and len(raw) % 4 == 0
                n = len(raw) // 4
                if ok and dim is not None and n != dim:
                    raise JournalError(f"{self.journal} line {number}: a vector of {n} values after vectors "
                                       f"of {dim}; {fix}")
                dim = n if ok else dim
            if not ok:
                raise not_a_record(self.journal, number, r,
                                    'a vector record ({"path": "...", "vector": "<base64>"})', fix)
            records.append((number, r))
        return header, records, commit

    def write(self, path, vector):
        vector = np.asarray(vector, dtype=np.float32).ravel()
        if self.dim is None:
            self.dim = len(vector)
        elif len(vector) != self.dim:
            raise ValueError(f"embed: vectors of {len(vector)} values, but {self.path} (or its journal) "
                             f"holds vectors of {self.dim}: resume with the same --layer, or start a new file")
        self._out.add(json.dumps({"path": path, "vector": _encode(vector)}, ensure_ascii=True))

    def close(self):
        try:
            self._out.close()
        finally:
            self._lock.release()

    def finish(self):
        """Write the output from the earlier output (resume) and the journal; delete the journal."""
        try:
            self._out.close()
            self._finish()
        finally:
            self._lock.release()

    def _finish(self):
        sources = []
        if self._base and os.path.exists(self.path):
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

        targets = self._targets()
        try:
            getattr(self, "_write_" + self.format[1:])([p for p, _ in targets], paths, rows(), dim)
            remove = []
            if self.format == ".npy" and os.path.exists(legacy_paths_file(self.path)):
                remove.append(os.path.basename(legacy_paths_file(self.path)))
            commit = {"commit": [[os.path.basename(p), os.path.basename(t), os.path.getsize(p)]
                                 for p, t in targets], "remove": remove}
            fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND)
            size = os.fstat(fd).st_size
            try:
                fsync_append(fd, (json.dumps(commit, ensure_ascii=True) + "\n").encode("ascii"))
            except BaseException:
                os.ftruncate(fd, size)  # no commit line: the parts below are deleted
                raise
            finally:
                os.close(fd)
        except BaseException as exc:
            for part, _ in targets:  # not committed: the old output and the journal stand
                try:
                    os.unlink(part)
                except OSError:
                    pass
            if isinstance(exc, OSError) and exc.errno in FULL:
                raise DiskFullError(f"no space left on the device writing {self.path} (about "
                                    f"{_mib(len(paths) * dim * 4)} MiB): nothing was replaced; free some space, "
                                    f"then rerun with --resume ({self.journal} keeps every vector)") from None
            raise
        _Commit.apply(self.folder, commit, self.journal)  # the commit line is durable: from here a rerun completes it
        os.unlink(self.journal)
        fsync_dir(self.journal)

    def _journal_source(self):
        if not os.path.exists(self.journal):
            return [], iter(())
        records = [r for _, r in self._read_journal()[1]]
        paths = [r["path"] for r in records]

        def chunks(n=1024):
            for i in range(0, len(records), n):
                yield np.stack([_decode(r["vector"]) for r in records[i:i + n]])
        return paths, chunks()

    # -- writers: each to its part file next to the output (renamed into place by the commit)

    @staticmethod
    def _create(part, size=None):
        """A new file (mode as for any new file) with ``size`` bytes reserved where the file
        system can: a full disk fails here, before anything is written."""
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        if size and hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno in FULL:
                    os.close(fd)
                    raise
        return fd

    def _write_npy(self, parts, paths, rows, dim):
        part, part_paths = parts
        header = io.BytesIO()
        d = {"descr": "<f4", "fortran_order": False, "shape": (len(paths), dim)}
        try:
            np.lib.format.write_array_header_1_0(header, d)
        except ValueError:
            header = io.BytesIO()
            np.lib.format.write_array_header_2_0(header, d)
        head = header.getvalue()
        fd = self._create(part, len(head) + len(paths) * dim * 4)
        try:  # ordinary writes (a memmap of a sparse file dies of SIGBUS on a full disk)
            write_all(fd, head)
            for r in rows:
                write_all(fd, r.tobytes())
            os.fsync(fd)
        finally:
            os.close(fd)
        lines = [json.dumps({"fastalex": "embed paths", "version": PATHS_VERSION, "rows": len(paths),
                             "dim": dim, "run": self.run}, ensure_ascii=True)]
        lines += [json.dumps(p, ensure_ascii=True) for p in paths]
        data = ("\n".join(lines) + "\n").encode("ascii")
        fd = self._create(part_paths, len(data))
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write_npz(self, parts, paths, rows, dim):
        import zipfile
        (part,) = parts
        with open(self._create(part), "wb") as raw:
            with zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
                with z.open("paths.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.array(paths, dtype=str) if paths else np.array([], dtype="<U1"))
                with z.open("run.npy", "w") as f:
                    np.lib.format.write_array(f, np.array(json.dumps(self.run, ensure_ascii=True)))
                with z.open("vectors.npy", "w", force_zip64=True) as f:  # streamed: never all in memory
                    np.lib.format.write_array_header_2_0(
                        f, {"descr": "<f4", "fortran_order": False, "shape": (len(paths), dim)})
                    for r in rows:
                        f.write(r.tobytes())
            raw.flush()
            os.fsync(raw.fileno())

    def _write_parquet(self, parts, paths, rows, dim):
        pa = _pyarrow()
        import pyarrow.parquet as pq
        (part,) = parts
        schema = pa.schema([("path", pa.string()), ("path_bytes", pa.binary()),
                            ("vector", pa.list_(pa.float32(), dim))],
                           metadata={_PARQUET_RUN_KEY: json.dumps(self.run, ensure_ascii=True).encode("ascii")})
        with open(self._create(part), "wb") as raw:
            with pq.ParquetWriter(raw, schema) as writer:
                i = 0
                for r in rows:
                    exact = [os.fsencode(p) for p in paths[i:i + len(r)]]
                    names = [b.decode("utf-8", "replace") for b in exact]
                    vectors = pa.FixedSizeListArray.from_arrays(pa.array(r.ravel(), pa.float32()), dim)
                    writer.write_table(pa.table({"path": pa.array(names, pa.string()),
                                                 "path_bytes": pa.array(exact, pa.binary()), "vector": vectors},
                                                schema=schema))
                    i += len(r)
                if not paths:
                    writer.write_table(schema.empty_table())
            raw.flush()
            os.fsync(raw.fileno())


def _mib(n):
    return f"{n / 2**20:.1f}"
