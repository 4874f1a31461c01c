"""The reader interface and format descriptor every format module implements."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..keys import DEFAULT_KEYS, LabelKeys
from ..record import Structure


class Reader(abc.ABC):
    """Random-access, read-only view of a data set (one file or a directory of shards).

    ``reader[i]`` returns a :class:`Structure` or raises :class:`~mlip_datasets.errors.DataError` naming the
    file and record. Readers must be safe to use from DataLoader worker processes: anything holding an OS handle
    (LMDB environments, HDF5 files) is opened lazily and reopened after a fork.
    """

    format_name: str = "?"

    def __init__(self, path: str | Path, keys: LabelKeys = DEFAULT_KEYS):
        self.path = Path(path)
        self.keys = keys

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __getitem__(self, index: int) -> Structure: ...

    def natoms(self, index: int) -> int:
        """Atom count of one record; formats that store it cheaply override this."""
        return self[index].natoms

    def record_name(self, index: int) -> str:
        """Where record ``index`` lives, for error messages (e.g. ``data.0001.lmdb key 17``)."""
        return f"{self.path.name} #{index}"

    def metadata(self) -> dict:
        """Format-level facts worth showing in ``mlip data info`` (e.g. OC20 energy kind)."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional: only readers that hold files open override it
        pass

    def __iter__(self) -> Iterator[Structure]:
        for i in range(len(self)):
            yield self[i]

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


Writer = Callable[..., int]
"""``write(path, structures, *, shards=1) -> count``: writes exactly to ``path`` (a file, or a directory when the
format writes shards); atomic placement is the caller's job (:func:`mlip_datasets.io.write_dataset`)."""


@dataclass(frozen=True)
class Format:
    """A data format: how to recognise it, open it and (optionally) write it."""

    name: str
    extensions: tuple[str, ...]
    open: Callable[[Path, LabelKeys], Reader]
    write: Writer | None = None
    sniff: Callable[[Path], bool] | None = None
    """Content check for extensions shared by several formats (``.lmdb``)."""
    directory_shards: str | None = None
    """Glob for shard files when the data set is a directory (e.g. ``*.aselmdb``)."""
    description: str = ""
