"""ASE databases in LMDB (``*.aselmdb``): OMol25, OMat24, new-style OC20. Read and write.

Layout (as ase-db-backends' ``LMDBDatabase`` writes it; checked against ase-db-backends 0.11): one LMDB
environment per file, ``subdir=False``. Keys are ASCII row ids ``b"1"``, ``b"2"``, ... and three reserved
keys, ``b"nextid"`` (int), ``b"deleted_ids"`` (list of int, only after deletions) and ``b"metadata"``
(dict, only when set). Every value is zlib-compressed ASE JSON. The live ids are ``1 .. nextid-1`` minus
``deleted_ids``; files without ``nextid``, or whose ``nextid``/``deleted_ids`` disagree with the number of
keys present, are indexed by scanning their keys. Values inflate and decode within the per-record budget of
:mod:`mlip_datasets.safe_pickle` (zlib bombs and arrays whose dtype/shape promise more than is there are refused).

Files written here also hold ``b"metadata"`` (ase-db-backends' database metadata) stating the data set's
``energy_kind`` and ``labels_at_positions`` (:mod:`mlip_datasets.label_kind`); for other files the reader
reports what record 0's ``data`` says. Calculator results beyond the labels (``magmoms`` ...) are row fields,
as ASE writes them, and ``info`` entries when read.

A data set is one file or a directory of shards read in sorted file order. This module needs only
``lmdb``; ase-db-backends is not required to read or write.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..keys import DEFAULT_KEYS, LabelKeys
from ..label_kind import LabelKindTally, combine, first_record_kind, from_metadata
from ..lmdb_handles import LmdbWriter, ShardEnvs, shard_files
from ..record import Structure
from ..safe_pickle import RECORD_ALLOWANCE, RECORD_FACTOR
from ._aserows import RowError, check_structure_shapes, decode, encode, row_to_structure, structure_to_row
from ._spool import write_contiguous
from .base import Format, Reader

SUFFIX = ".aselmdb"
MISSING_SLACK = 1024  # live ids nextid/deleted_ids may claim beyond the row keys present before keys are scanned


def _inflate(raw: bytes, path: Path, record) -> bytes:
    """``zlib.decompress`` that stops at the per-record budget of :mod:`mlip_datasets.safe_pickle`."""
    limit = RECORD_ALLOWANCE + RECORD_FACTOR * len(raw)
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(raw, limit)
        done = not inflater.unconsumed_tail
        if done:
            out += inflater.flush()
    except zlib.error as err:
        raise DataError(path, f"cannot decode value (error: {err})", record=record) from None
    if not done:
        raise DataError(
            path,
            f"value inflates to more than {limit} bytes ({RECORD_ALLOWANCE} + {RECORD_FACTOR}x its "
            f"{len(raw)} compressed bytes); refusing it as a decompression bomb",
            record=record,
        )
    return out


def _decode_value(raw: bytes, path: Path, record):
    text = _inflate(raw, path, record)
    try:
        return decode(text.decode("utf-8"))
    except RowError as err:
        raise DataError(path, str(err), record=record) from None
    except (zlib.error, UnicodeDecodeError, ValueError, TypeError, RecursionError) as err:
        raise DataError(path, f"cannot decode value ({type(err).__name__}: {err})", record=record) from None


class AseLmdbReader(Reader):
    """Random access over the live rows of one ``.aselmdb`` file or a directory of them.

    Index ``i`` counts live rows in shard order, then id order. LMDB environments open lazily, read-only and
    without a lock file, shared with other readers of the same files (:mod:`mlip_datasets.lmdb_handles`); a
    forked DataLoader worker opens its own, a spawned one (pickle) reopens them.
    """

    format_name = "aselmdb"

    def __init__(self, path: str | Path, keys: LabelKeys = DEFAULT_KEYS):
        super().__init__(path, keys)
        self.shards = shard_files(self.path, f"*{SUFFIX}")
        if not self.shards:
            raise DataError(self.path, f"directory holds no *{SUFFIX} shards")
        self._envs = ShardEnvs(self.shards)
        # ids[k] is None when shard k's live ids are exactly 1..count (no deletions): saves memory on 100M rows
        self._ids: list[np.ndarray | None] = []
        counts = []
        for k in range(len(self.shards)):
            ids, count = self._index_shard(k)
            self._ids.append(ids)
            counts.append(count)
        self._offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self._natoms = self._load_natoms()

    # -- LMDB handles ------------------------------------------------------------------------------------

    def _env(self, k: int):
        import lmdb

        try:
            return self._envs[k]
        except lmdb.Error as err:
            raise DataError(self.shards[k], f"not a readable LMDB file ({err})") from None

    def _index_shard(self, k: int) -> tuple[np.ndarray | None, int]:
        """Shard ``k``'s live ids (None: exactly ``1 .. count``) and count, bounded by what the file holds.

        ``nextid``/``deleted_ids`` are trusted when they claim at most ``MISSING_SLACK`` more rows than there
        are row keys (those missing fail when read); otherwise, or without ``nextid``, the keys themselves are
        scanned, so a tiny file that claims a huge ``nextid`` costs nothing.
        """
        path = self.shards[k]
        env = self._env(k)
        with env.begin() as txn:
            raw_next = txn.get(b"nextid")
            raw_deleted = txn.get(b"deleted_ids")
            reserved = sum(txn.get(key) is not None for key in (b"nextid", b"deleted_ids", b"metadata"))
        rows = int(env.stat()["entries"]) - reserved  # row keys in the file, if it holds nothing else
        if raw_next is None:  # not written by ASE: trust the keys themselves
            return self._scan_ids(k)
        nextid = _decode_value(raw_next, path, "nextid")
        deleted = [] if raw_deleted is None else _decode_value(raw_deleted, path, "deleted_ids")
        try:
            nextid = int(nextid)
            deleted = np.unique(np.asarray(deleted, dtype=np.int64).reshape(-1))
        except (TypeError, ValueError, OverflowError):
            raise DataError(path, "nextid/deleted_ids are not integers", record="nextid") from None
        claimed = max(nextid - 1, 0) - int(np.count_nonzero((deleted >= 1) & (deleted < nextid)))
        if claimed > rows + MISSING_SLACK:  # nextid/deleted_ids cannot describe this file's keys
            return self._scan_ids(k)
        if len(deleted) == 0:
            return None, claimed
        # bounded: nextid <= rows + MISSING_SLACK + len(deleted) + 1
        ids = np.setdiff1d(np.arange(1, nextid, dtype=np.int64), deleted)
        return ids, len(ids)

    def _scan_ids(self, k: int) -> tuple[np.ndarray, int]:
        with self._env(k).begin() as txn:
            keys = [key for key in txn.cursor().iternext(values=False) if key.isdigit()]
        if any(len(key) > 18 for key in keys):
            raise DataError(self.shards[k], "a row key is too large to be a row id", record="keys")
        ids = np.unique(np.fromiter((int(key) for key in keys), dtype=np.int64, count=len(keys)))
        return ids, len(ids)

    def _load_natoms(self) -> np.ndarray | None:
        # fairchem ships a metadata.npz with per-row atom counts beside the shards; use it only if it fits
        meta = (self.path if self.path.is_dir() else self.path.parent) / "metadata.npz"
        if not meta.is_file():
            return None
        try:
            with np.load(meta) as npz:
                natoms = np.asarray(npz["natoms"], dtype=np.int64).reshape(-1)
        except Exception:
            return None
        return natoms if len(natoms) == len(self) else None

    def close(self) -> None:
        self._envs.close()  # handles shared with other readers of the same files stay open for them

    # -- Reader -----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {n} rows")
        k = int(np.searchsorted(self._offsets, index, side="right")) - 1
        local = index - int(self._offsets[k])
        ids = self._ids[k]
        return k, (local + 1 if ids is None else int(ids[local]))

    def __getitem__(self, index: int) -> Structure:
        k, rid = self._locate(int(index))
        path = self.shards[k]
        with self._env(k).begin() as txn:
            raw = txn.get(str(rid).encode("ascii"))
        if raw is None:
            raise DataError(path, "row is listed as live (below nextid, not deleted) but missing", record=rid)
        row = _decode_value(raw, path, rid)
        try:
            return row_to_structure(row, self.keys)
        except ValueError as err:  # RowError, and what Structure refuses (bad atomic numbers, shapes)
            if isinstance(err, DataError) and err.path is not None:
                raise
            raise DataError(path, getattr(err, "message", str(err)), record=rid) from None

    def natoms(self, index: int) -> int:
        if self._natoms is not None:
            return int(self._natoms[index])
        return super().natoms(index)

    def record_name(self, index: int) -> str:
        k, rid = self._locate(int(index))
        return f"{self.shards[k].name} id {rid}"

    def _database_metadata(self, k: int):
        with self._env(k).begin() as txn:
            raw = txn.get(b"metadata")
        return None if raw is None else _decode_value(raw, self.shards[k], "metadata")

    def metadata(self) -> dict:
        meta: dict = {"shards": len(self.shards)}
        first = self._database_metadata(0)
        if first is not None:
            meta["database_metadata"] = first
        # the writer states the label kind in every shard's metadata; files from elsewhere: ask record 0
        stated = [from_metadata(first)] + [
            from_metadata(self._database_metadata(k)) for k in range(1, len(self.shards))
        ]
        kind = combine(stated) if all(stated) else first_record_kind(self)
        return {**meta, **kind.as_metadata()}


# -- writer -------------------------------------------------------------------------------------------------


def _rows(structures: Iterable[Structure], path: Path, label_kinds: LabelKindTally) -> Iterator[bytes]:
    """Each structure as a stored row value (zlib-compressed ASE JSON), tallying label kinds on the way."""
    for i, s in enumerate(structures):
        check_structure_shapes(s, path, i)
        try:
            text = encode(structure_to_row(s))
        except TypeError as err:  # something in info that JSON cannot hold
            raise DataError(path, f"cannot store record: {err}", record=i) from None
        label_kinds.add(s)
        yield zlib.compress(text.encode("utf-8"))


def _write_shard(path: Path, rows: Iterable[bytes], metadata: Callable[[], dict]) -> int:
    """One new file: rows under ids 1, 2, ..., ``nextid`` as ase-db-backends records it (not in a file that got
    no rows), and ``metadata()`` (asked once the rows are written) as the database metadata. Returns the count."""
    with LmdbWriter(path) as writer:  # commits and closes on success, only closes on error
        nextid = 1
        for value in rows:
            writer.put(str(nextid).encode("ascii"), value)
            nextid += 1
        if nextid > 1:
            writer.put(b"nextid", zlib.compress(encode(nextid).encode("utf-8")))
        writer.put(b"metadata", zlib.compress(encode(metadata()).encode("utf-8")))
    return nextid - 1


def write(path: str | Path, structures: Iterable[Structure], *, shards: int = 1) -> int:
    """Write ``structures`` as an ASE LMDB database that ``ase.db.connect`` (ase-db-backends) opens.

    ``shards > 1`` makes ``path`` a directory of ``data.0000.aselmdb`` ... holding contiguous blocks of records
    (sizes differ by at most one), so readers that walk shards in name order and ids in order, this module's
    and fairchem's ``AseDBDataset``, see the input order; the rows are spooled to a temporary file first to
    learn the count. Every file's database metadata states the label kind (:mod:`mlip_datasets.label_kind`).
    Returns the count written.
    """
    path = Path(path)
    if shards < 1:
        raise DataError(path, f"shards must be at least 1, got {shards}")
    label_kinds = LabelKindTally()
    rows = _rows(structures, path, label_kinds)

    def metadata() -> dict:
        return label_kinds.result().as_metadata()

    if shards == 1:
        return _write_shard(path, rows, metadata)
    path.mkdir(parents=True, exist_ok=True)
    return write_contiguous(
        path, rows, shards, lambda k, values: _write_shard(path / f"data.{k:04d}{SUFFIX}", values, metadata)
    )


def _open(path: Path, keys: LabelKeys) -> Reader:
    return AseLmdbReader(path, keys)


FORMAT = Format(
    name="aselmdb",
    extensions=(SUFFIX,),
    open=_open,
    write=write,
    directory_shards=f"*{SUFFIX}",
    description="ASE database in LMDB (ase-db-backends; OMol25/OMat24/OC20 aselmdb)",
)
