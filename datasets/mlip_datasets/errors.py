"""One exception type for everything a user's data can get wrong."""

from __future__ import annotations

from pathlib import Path


class DataError(Exception):
    """A problem with a user's data file: names the file, the record and what is wrong.

    ``str(err)`` is a single line meant to be shown to the user as-is, e.g.
    ``data.0001.lmdb: record b'17': forces has shape (3, 3), expected (5, 3)``.
    """

    def __init__(self, path: str | Path | None, message: str, record: object | None = None):
        self.path = None if path is None else str(path)
        self.record = record
        self.message = message
        parts = [p for p in (self.path, None if record is None else f"record {record}") if p]
        super().__init__(": ".join([*parts, message]))

    def __reduce__(self):
        # the default pickles only str(self); rebuilding from that fails, and a multiprocessing pool whose
        # worker raised a DataError then hangs instead of reporting it
        return (type(self), (self.path, self.message, self.record))


class UnsafePickleError(DataError):
    """A pickle asked for a class or function outside the allow-list; nothing was executed."""
