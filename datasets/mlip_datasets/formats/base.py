"""The reader interface and format descriptor every format module implements."""

from __future__ import annotations

import abc
import functools
import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..keys import DEFAULT_KEYS, LabelKeys
from ..record import Structure


class Reader(abc.ABC):
    """Random-access, read-only view of a data set (one file or a directory of shards).

    ``reader[i]`` returns a :class:`Structure` or raises :class:`~mlip_datasets.errors.DataError` naming the
    file and record; negative ``i`` counts from the end and ``i`` out of range raises ``IndexError``.
    ``reader[2:5]`` (any slice) returns a list of Structures. Subclasses implement ``__getitem__`` for one
    index in ``0 <= i < len(self)``: :meth:`__init_subclass__` wraps it with the slicing and bounds checks, so
    every format behaves the same. Readers must be safe to use from DataLoader worker processes: anything holding
    an OS handle (LMDB environments, HDF5 files) is opened lazily and reopened after a fork.
    """

    format_name: str = "?"

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "__getitem__" in cls.__dict__:
            cls.__getitem__ = _indexed(cls.__dict__["__getitem__"])

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


def _indexed(get_one: Callable[[Reader, int], Structure]):
    """Wrap a reader's one-record ``__getitem__``: slices give lists, negative indices count from the end."""

    @functools.wraps(get_one)
    def __getitem__(self: Reader, index):
        if isinstance(index, slice):
            return [get_one(self, i) for i in range(*index.indices(len(self)))]
        try:
            i = operator.index(index)  # ints and numpy integers; not floats or strings
        except TypeError:
            raise TypeError(f"reader indices must be integers or slices, not {type(index).__name__}") from None
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"record {i} out of range for {n} records in {self.path.name}")
        return get_one(self, i + n if i < 0 else i)

    return __getitem__


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
