"""Open any supported data set, detect its format, and write data sets atomically."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import DataError
from .formats import Format, Reader, all_formats, get_format
from .keys import DEFAULT_KEYS, LabelKeys
from .record import Structure


def _by_extension(suffix: str) -> list[Format]:
    return [f for f in all_formats() if suffix in f.extensions]


def _pick(path: Path, candidates: list[Format]) -> Format | None:
    if len(candidates) == 1 and candidates[0].sniff is None:
        return candidates[0]
    for fmt in candidates:
        if fmt.sniff is None or fmt.sniff(path):
            return fmt
    return None


def detect_format(path: str | Path) -> Format:
    """Work out the format of ``path`` from its extension and, where extensions are shared, its content.

    A directory is a set of shards (``*.aselmdb``, ``*.lmdb``) or the native store; a file without an extension is
    the native store; any other extension falls back to ``ase.io.read``.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "no such file or directory")
    if path.is_dir():
        for fmt in all_formats():
            has_shards = fmt.directory_shards and any(path.glob(fmt.directory_shards))
            if has_shards and (fmt.sniff is None or fmt.sniff(path)):
                return fmt
        raise DataError(path, "directory holds no recognised data shards (*.aselmdb, *.lmdb, native store)")
    suffix = path.suffix.lower()
    if not suffix:
        return get_format("native")
    candidates = _by_extension(suffix)
    if candidates:
        fmt = _pick(path, candidates)
        if fmt is None:
            names = "/".join(f.name for f in candidates)
            raise DataError(path, f"not a readable {suffix} file (tried {names})")
        return fmt
    return get_format("ase")


def resolve_format(path: str | Path, fmt: str | None) -> Format:
    """``fmt`` by name when given (``--from``/``--to``), else detected from ``path``."""
    if fmt:
        try:
            return get_format(fmt)
        except KeyError as err:
            raise DataError(path, err.args[0]) from None
    return detect_format(path)


def open_dataset(path: str | Path, fmt: str | None = None, keys: LabelKeys = DEFAULT_KEYS) -> Reader:
    """Open a data set for random access. Raises :class:`DataError` for a missing or unreadable path."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "no such file or directory")
    return resolve_format(path, fmt).open(path, keys)


def output_format(path: str | Path, fmt: str | None = None) -> Format:
    """The format to write ``path`` in: ``fmt`` if given, else from the extension (none = native store)."""
    path = Path(path)
    if fmt:
        chosen = resolve_format(path, fmt)
    else:
        suffix = path.suffix.lower()
        writable = [f for f in _by_extension(suffix) if f.write is not None] if suffix else [get_format("native")]
        if not writable:
            raise DataError(path, f"cannot tell which format to write for extension {suffix!r}; pass --to")
        chosen = writable[0]
    if chosen.write is None:
        raise DataError(path, f"format {chosen.name!r} is read-only")
    return chosen


def write_dataset(
    path: str | Path,
    structures: Iterable[Structure],
    fmt: str | None = None,
    *,
    shards: int = 1,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write ``structures`` to ``path`` atomically: into a temporary sibling first, renamed only on success.

    ``progress(k)`` is called after each structure is handed to the writer. Returns the number written.
    """
    path = Path(path)
    target = output_format(path, fmt)
    if path.exists() and not overwrite:
        raise DataError(path, "output already exists (pass --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}")

    def counted():
        for k, s in enumerate(structures, 1):
            yield s
            if progress is not None:
                progress(k)

    try:
        count = target.write(tmp, counted(), shards=shards)
        if path.exists():
            _remove(path)
        os.replace(tmp, path)
    except DataError as err:
        _remove(tmp)
        if err.path is not None and Path(err.path).name.startswith(tmp.name):  # name the user's path
            raise type(err)(str(path) + err.path[len(str(tmp)) :], err.message, err.record) from None
        raise
    except BaseException:
        _remove(tmp)
        raise
    return count


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()
    for sidecar in path.parent.glob(path.name + "-lock"):  # LMDB lock files next to a subdir=False env
        sidecar.unlink()
