"""``classify --output FILE``: JSON lines, one record per input, appended and fsynced a batch at
a time; ``resume`` skips every path already recorded. See :mod:`fastalex.outputs`."""

from __future__ import annotations

import os

from .durable import Appender, Lock, check_output_path, not_a_record, scan_numbered

__all__ = ["JsonLinesOutput"]


class JsonLinesOutput:
    """``classify --output FILE``: JSON lines; ``done`` holds the paths already in it (resume)."""

    def __init__(self, path, resume=False, flush_every=16):
        self.path = check_output_path(path)
        self.done: set = set()
        self._lock = Lock(self.path)
        try:
            exists = os.path.exists(self.path)
            if resume and exists:
                for number, r in scan_numbered(self.path, repair=True):
                    if not (isinstance(r, dict) and isinstance(r.get("path", ""), str)
                            and ("path" in r or isinstance(r.get("input"), int))):
                        raise not_a_record(self.path, number, r, 'a record ({"path": ..., ...})',
                                            "fix or delete that line, or start a new file without --resume")
                    if "path" in r:
                        self.done.add(r["path"])
            self._out = Appender(self.path, append=resume and exists, flush_every=flush_every)
        except BaseException:
            self._lock.release()
            raise

    def write(self, line: str):
        self._out.add(line)

    def finish(self):
        self.close()

    def close(self):
        try:
            self._out.close()
        finally:
            self._lock.release()
