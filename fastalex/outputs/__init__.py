"""Output files for ``classify --output`` and ``embed --output`` that survive interruptions.

**JSON lines** (``classify``): one record per input, appended a batch at a time with one
``write`` of whole lines, then ``flush`` and ``fsync``. A run killed mid-write can at worst leave
an incomplete last line; ``--resume`` cuts it off before appending, and skips every path that
already has a record (errors included: delete a line to try that file again).

**Vectors** (``embed``): ``.npy`` (plus ``<stem>.paths.jsonl``), ``.npz`` (arrays ``paths``,
``vectors`` and ``run``) or ``.parquet`` (columns ``path``, ``path_bytes`` and ``vector``; needs
pyarrow). These formats cannot be appended to safely, so during a run the vectors go to a
journal next to the output, ``<output>.journal`` (JSON lines: a header naming the run, then one
``{"path", "vector"}`` per image, the vector as base64 of little-endian float32, appended and
fsynced as above). When the run ends the new files are written to ``.part`` names next to the
output, a ``commit`` line naming them is appended to the journal, they are renamed into place
and the journal is deleted: the commit line is the one atomic step. A run that dies before it
leaves the old output and the journal (``--resume`` continues); one that dies after it is
completed by the next run that opens the output (the renames are done again). Images that
failed are not stored, so ``--resume`` tries them again. A path is never stored twice.

**File names** are stored exactly, whatever bytes they hold: in JSON (the journal, the paths
file) as ASCII-escaped strings, a name that is not valid UTF-8 with ``\\udcXX`` escapes (Python's
``surrogateescape``: ``os.fsencode(name)`` gives the original bytes back); in ``.npz`` as numpy
unicode (the same escapes); in ``.parquet`` as the ``path_bytes`` column (the bytes, exact) next
to ``path`` (a string for reading; a byte that is not UTF-8 shows as U+FFFD there).

**The run** (``run=``, a dict of the settings that change the vectors: layer, normalization,
weights, precision, preprocessing, variant) is recorded in the journal's header and in the
output; ``resume`` with other settings raises :class:`RunMismatchError` naming the difference.

**One writer**: an output is locked (``fcntl.flock`` on ``<output>.lock``, which holds the
writer's pid) while a run writes it; a second run gets :class:`OutputBusyError`.

The pieces: :mod:`.durable` (appending, fsync, the lock, errors), :mod:`.jsonl` (classify's
JSON lines), :mod:`.vectors` (embed's vectors and their journal).
"""

from .durable import (DiskFullError, JournalError, OutputBusyError, OutputError, RunMismatchError, check_output_path,
                      scan_jsonl)
from .jsonl import JsonLinesOutput
from .vectors import (PARQUET_HINT, VECTOR_FORMATS, VectorOutput, check_vector_path, legacy_paths_file, paths_file,
                      read_run, read_vectors)

__all__ = ["JsonLinesOutput", "VectorOutput", "check_vector_path", "VECTOR_FORMATS", "PARQUET_HINT",
           "read_vectors", "read_run", "OutputError", "OutputBusyError", "RunMismatchError", "JournalError",
           "DiskFullError", "check_output_path", "scan_jsonl", "paths_file", "legacy_paths_file"]
