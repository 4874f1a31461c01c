"""Open any supported data set, detect its format, and write data sets atomically."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DataError
from .formats import Format, Reader, all_formats, get_format
from .keys import DEFAULT_KEYS, LabelKeys
from .record import Structure

if TYPE_CHECKING:
    from ase import Atoms


def _by_extension(suffix: str) -> list[Format]:
    return [f for f in all_formats() if suffix in f.extensions]


def _pick(path: Path, candidates: list[Format]) -> Format | None:
    if len(candidates) == 1 and candidates[0].sniff is None:
        return candidates[0]
    for fmt in candidates:
        if fmt.sniff is None or fmt.sniff(path):
            return fmt
    return None


def shard_formats(path: str | Path) -> dict[Format, list[Path]]:
    """The shard files of directory ``path`` by format, each shard judged on its own.

    A shard belongs to the first format whose ``directory_shards`` glob matches its name and whose ``sniff`` (if
    any) accepts its content, so a native shard and an OC20 shard, both ``*.lmdb``, count as two formats. Shards no
    format recognises are left out (the reader reports them).
    """
    path = Path(path)
    found: dict[Format, list[Path]] = {}
    seen: set[Path] = set()
    for fmt in all_formats():
        if not fmt.directory_shards:
            continue
        for shard in sorted(p for p in path.glob(fmt.directory_shards) if p.is_file()):
            if shard in seen:
                continue
            if fmt.sniff is None or fmt.sniff(shard):
                seen.add(shard)
                found.setdefault(fmt, []).append(shard)
    return found


def directory_format(path: str | Path) -> Format | None:
    """The one format of the shards in directory ``path`` (None when no shard is recognised).

    Raises:
        DataError: the directory mixes shard formats (naming each with a shard count and an example).
    """
    found = shard_formats(path)
    if len(found) > 1:
        kinds = ", ".join(
            f"{fmt.name} ({len(files)} shard{'s' * (len(files) > 1)}, e.g. {files[0].name})"
            for fmt, files in found.items()
        )
        raise DataError(path, f"directory mixes shard formats: {kinds}; keep one format per directory")
    return next(iter(found), None)


def detect_format(path: str | Path) -> Format:
    """Work out the format of ``path`` from its extension and, where extensions are shared, its content.

    A directory is a set of shards (``*.aselmdb``, ``*.lmdb``) or the native store, all of one format (each shard
    is sniffed; a mix raises :class:`DataError` naming the formats); a file without an extension is
    the native store; any other extension falls back to ``ase.io.read``.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "no such file or directory")
    if path.is_dir():
        fmt = directory_format(path)
        if fmt is None:
            raise DataError(path, "directory holds no recognised data shards (*.aselmdb, *.lmdb, native store)")
        return fmt
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


def resolve_format(path: str | Path, fmt: str | Format | None) -> Format:
    """``fmt`` by name when given (``--from``/``--to``), else detected from ``path``; a :class:`Format` as is."""
    if isinstance(fmt, Format):  # e.g. a registered format with another writer (``mlip predict`` label keys)
        return fmt
    if fmt:
        try:
            return get_format(fmt)
        except KeyError as err:
            raise DataError(path, err.args[0]) from None
    return detect_format(path)


def open_dataset(
    path: str | Path, fmt: str | None = None, keys: LabelKeys = DEFAULT_KEYS, units: dict[str, str] | None = None
) -> Reader:
    """Open a data set for random access. Raises :class:`DataError` for a missing or unreadable path.

    ``units`` (e.g. ``{"energy": "hartree"}``) goes to readers that take it (HDF5); other formats refuse it.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "no such file or directory")
    if fmt and path.is_dir():  # detection already refuses a directory of mixed shards; --from must not skip that
        directory_format(path)
    chosen = resolve_format(path, fmt)
    if not units:
        return chosen.open(path, keys)
    if not getattr(chosen.open, "takes_units", False):
        raise DataError(path, f"{chosen.name} data is read in Angstrom and eV; units apply to HDF5 files only")
    return chosen.open(path, keys, units=units)


def output_format(path: str | Path, fmt: str | Format | None = None) -> Format:
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
    structures: Iterable[Structure] | Iterable[Atoms] | Structure | Atoms,
    fmt: str | Format | None = None,
    *,
    shards: int = 1,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write ``structures`` to ``path`` atomically: into a temporary sibling first, renamed only on success.

    ``structures``: :class:`Structure` records or :class:`ase.Atoms` (labels taken from the calculator results,
    ``info`` and ``arrays`` under the plain names, see :func:`mlip_datasets.ase_convert.atoms_to_structure`),
    mixed freely, or one of either. ``progress(k)`` is called after each structure is handed to the writer.
    Returns the number written.
    """
    path = Path(path)
    check_output(path, fmt, overwrite)
    tmp, count = stage_dataset(path, structures, fmt, shards=shards, progress=progress)
    commit_staged([(tmp, path)])
    return count


def check_output(path: str | Path, fmt: str | Format | None = None, overwrite: bool = False) -> Format:
    """Fail before writing anything: the output format is writable and ``path`` is free (or may be replaced)."""
    path = Path(path)
    target = output_format(path, fmt)
    if path.exists() and not overwrite:
        raise DataError(path, "output already exists (pass --overwrite to replace it)")
    return target


def stage_dataset(
    path: str | Path,
    structures: Iterable[Structure] | Iterable[Atoms] | Structure | Atoms,
    fmt: str | Format | None = None,
    *,
    shards: int = 1,
    progress: Callable[[int], None] | None = None,
) -> tuple[Path, int]:
    """Write ``structures`` into a hidden temporary sibling of ``path``; returns (temporary, count).

    On any failure the temporary is removed and the error names ``path``; an unwritable folder is a DataError.
    Pass the result to :func:`commit_staged` (or :func:`discard_staged`).
    """
    path = Path(path)
    target = output_format(path, fmt)
    tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}")

    def counted():
        for k, s in enumerate(as_structures(structures), 1):
            yield s
            if progress is not None:
                progress(k)

    try:
        _make_parent(path)
        count = target.write(tmp, counted(), shards=shards)
    except DataError as err:
        _remove(tmp)
        if err.path is not None and Path(err.path).name.startswith(tmp.name):  # name the user's path
            raise type(err)(str(path) + err.path[len(str(tmp)) :], err.message, err.record) from None
        raise
    except BaseException as err:
        _remove(tmp)
        if _is_output_error(err, path, tmp):
            raise _cannot_write(path, err) from None
        raise
    return tmp, count


def _is_atoms(obj) -> bool:
    # an ase.Atoms can only exist once ase is imported: no import (and no cost) otherwise
    ase = sys.modules.get("ase")
    return ase is not None and isinstance(obj, ase.Atoms)


def as_structures(items: Iterable[Structure] | Iterable[Atoms] | Structure | Atoms) -> Iterator[Structure]:
    """``items`` as Structures: ase.Atoms converted with :func:`~mlip_datasets.ase_convert.atoms_to_structure`.

    One Structure or Atoms counts as a list of one (an Atoms is itself an iterable, of Atom objects). An Atoms
    whose calculator's results belong to other positions, numbers, cell or pbc raises :class:`DataError`.
    """
    if isinstance(items, Structure) or _is_atoms(items):
        items = [items]
    for k, item in enumerate(items):
        if isinstance(item, Structure):
            yield item
        elif _is_atoms(item):
            from .ase_convert import atoms_to_structure

            calc = item.calc
            if calc is not None and getattr(calc, "results", None) and calc.check_state(item):
                # labels are read from calc.results: refuse results computed for other atoms, not write them
                raise DataError(
                    None,
                    f"item {k} to write: its calculator holds results for other atoms (a calculator shared by "
                    "several Atoms keeps only the last one's); attach a SinglePointCalculator to each",
                )
            yield atoms_to_structure(item)
        else:
            raise TypeError(f"item {k} to write is a {type(item).__name__}, not a Structure or ase.Atoms")


def commit_staged(pairs: Iterable[tuple[Path, Path]]) -> None:
    """Rename each staged temporary onto its final path (replacing what is there); on failure remove the rest."""
    pairs = list(pairs)
    for k, (tmp, path) in enumerate(pairs):
        try:
            if path.exists():
                _remove(path)
            os.replace(tmp, path)
        except BaseException as err:
            discard_staged(tmp for tmp, _ in pairs[k:])
            if isinstance(err, OSError):
                raise _cannot_write(path, err) from None
            raise


def discard_staged(tmps: Iterable[Path]) -> None:
    """Remove staged temporaries (best effort)."""
    for tmp in tmps:
        with contextlib.suppress(OSError):
            _remove(tmp)


def _make_parent(path: Path) -> None:
    for parent in (path.parent, *path.parent.parents):
        if parent.exists() and not parent.is_dir():
            raise DataError(path, f"cannot write the output: {parent} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _cannot_write(path, err) from None


def _is_output_error(err: BaseException, path: Path, tmp: Path) -> bool:
    """An OSError (or lmdb error) about creating or writing the output, not about reading the input."""
    if isinstance(err, OSError):
        if err.filename is not None:
            return str(err.filename).startswith((str(tmp), str(path)))
        return err.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)
    if type(err).__module__ == "lmdb" and type(err).__name__ in ("ReadonlyError", "Error", "InvalidError"):
        return str(tmp) in str(err)
    return type(err).__module__ == "sqlite3" and ("unable to open" in str(err) or "readonly" in str(err))


def _cannot_write(path: Path, err: BaseException) -> DataError:
    reason = getattr(err, "strerror", None)
    if not reason and path.parent.is_dir() and not os.access(path.parent, os.W_OK):
        reason = os.strerror(errno.EACCES)  # sqlite only says "unable to open database file"
    reason = reason or str(err).split(":")[-1].strip() or type(err).__name__
    where = path.parent if path.parent != Path("") else Path(".")
    return DataError(path, f"cannot write the output in {where}: {reason}")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()
    for sidecar in path.parent.glob(path.name + "-lock"):  # LMDB lock files next to a subdir=False env
        sidecar.unlink()
