"""The native training store: sharded LMDB whose records decode with ``numpy.frombuffer`` (no pickle, no JSON).

On disk: a directory of shards ``data.0000.lmdb`` ... (each an LMDB environment opened with ``subdir=False``), or
one ``.lmdb`` file when a single shard is written to a path ending in ``.lmdb``. Record ``i`` of the data set
lives in shard ``i % S`` under the 8-byte big-endian key ``i // S`` (round-robin, so a writer that does not know
the length in advance still keeps the input order and balanced shards). Reserved keys in every shard:

- ``b"__mlip_native__"``: JSON header (schema, shard index, shard count, record count, total, layout, and the
  data set's ``energy_kind``/``labels_at_positions`` as :mod:`mlip_datasets.label_kind` defines them; stores
  written before these keys existed report what record 0's ``info`` says).
- ``b"__natoms__"``: little-endian int64 atom count per record of the shard, for size-aware batching.
- ``b"__stats__"`` (shard 0 only, when computed): JSON data-set statistics (:mod:`mlip_datasets.stats`).

Record value, little-endian, every block 8-byte aligned up to the byte blocks at the end::

    int64[2]        natoms N, flags (bitmask of optional blocks present, FLAGS below)
    float64[N,3]    positions
    float64[3,3]    cell
    float64         energy        if flags & 1
    float64[N,3]    forces        if flags & 2
    float64[3,3]    stress        if flags & 4
    float64         charge        if flags & 8
    float64         spin          if flags & 16
    int64[N]        tags          if flags & 32
    uint8[N]        numbers (Z <= 255)
    uint8[3]        pbc
    uint8[N]        fixed         if flags & 64
    utf-8 JSON      {"sid", "fid", "info"} to the end of the value, if flags & 128

Labels are kept in float64 so a round trip is exact; positions and forces dominate the size (48 bytes/atom).
Atomic numbers above 118 (a uint8 holds up to 255) are refused when read, as every other format refuses them.

A ``.lmdb`` store shares its extension with OC20 LMDBs, but fairchem's and torch_geometric's LMDB readers see
no records in it (they look for pickled ``Data`` under integer keys): ``mlip data info`` and ``convert`` say so
(:data:`FOREIGN_READERS_NOTE`); ``--to oc20`` writes what they read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path

import lmdb
import numpy as np

from ..errors import DataError
from ..keys import DEFAULT_KEYS, LabelKeys
from ..label_kind import LabelKindTally, first_record_kind, from_metadata
from ..lmdb_handles import LmdbWriter, ShardEnvs, readonly, shard_files, sniff_first_shard
from ..record import Structure, check_numbers
from .base import Format, Reader

SCHEMA = 1
#: what ``mlip data info`` and ``convert`` say about a native ``.lmdb``, whose extension OC20 files share
FOREIGN_READERS_NOTE = (
    "mlip native store, not an OC20/PyG LMDB: fairchem and torch_geometric LMDB readers see no records in it "
    "(write with --to oc20 for them)"
)
HEADER_KEY = b"__mlip_native__"
NATOMS_KEY = b"__natoms__"
STATS_KEY = b"__stats__"
FLAGS = {"energy": 1, "forces": 2, "stress": 4, "charge": 8, "spin": 16, "tags": 32, "fixed": 64, "extra": 128}
_SCALARS = ("energy", "charge", "spin")


def _key(local: int) -> bytes:
    return local.to_bytes(8, "big")  # big-endian sorts numerically, which lets the writer append


def _shard_name(k: int) -> str:
    return f"data.{k:04d}.lmdb"


# ---------------------------------------------------------------------------------------------------- encoding


def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": [list(obj.shape), obj.dtype.str, obj.ravel().tolist()]}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _json_hook(obj: dict):
    if "__ndarray__" in obj and len(obj) == 1:
        shape, dtype, flat = obj["__ndarray__"]
        return np.asarray(flat, dtype=np.dtype(dtype)).reshape(shape)
    return obj


def encode(s: Structure) -> bytes:
    """Serialise one structure to the record layout in the module docstring; ValueError if it cannot be stored."""
    n = s.natoms
    check_numbers(s.numbers)  # uint8 could hold 119..255, but they are no elements: refused as when reading
    flags = 0
    blocks = [np.ascontiguousarray(s.positions, "<f8").reshape(n, 3), np.ascontiguousarray(s.cell, "<f8")]
    for name, shape, dtype in (
        ("energy", (), "<f8"),
        ("forces", (n, 3), "<f8"),
        ("stress", (3, 3), "<f8"),
        ("charge", (), "<f8"),
        ("spin", (), "<f8"),
        ("tags", (n,), "<i8"),
    ):
        value = getattr(s, name)
        if value is None:
            continue
        arr = np.asarray(value, dtype=dtype)
        if arr.shape != shape:
            raise ValueError(f"{name} has shape {arr.shape}, expected {shape}")
        blocks.append(arr)
        flags |= FLAGS[name]
    blocks += [s.numbers.astype(np.uint8), s.pbc.astype(np.uint8)]
    if s.fixed is not None:
        if s.fixed.shape != (n,):
            raise ValueError(f"fixed has shape {s.fixed.shape}, expected {(n,)}")
        blocks.append(s.fixed.astype(np.uint8))
        flags |= FLAGS["fixed"]
    extra = {k: v for k, v in (("sid", s.sid), ("fid", s.fid), ("info", s.info or None)) if v is not None}
    tail = b""
    if extra:
        try:
            tail = json.dumps(extra, default=_json_default, separators=(",", ":")).encode()
        except (TypeError, ValueError) as err:
            raise ValueError(f"sid/fid/info cannot be stored as JSON: {err}") from None
        flags |= FLAGS["extra"]
    head = np.array([n, flags], dtype="<i8")
    return b"".join([head.tobytes(), *(b.tobytes() for b in blocks), tail])


def decode(value) -> Structure:
    """Inverse of :func:`encode`; ValueError (with what is wrong) on a malformed value. Arrays are writable."""
    buf = bytearray(value)  # one copy: every array below is a writable view of it
    if len(buf) < 16:
        raise ValueError(f"value is {len(buf)} bytes, shorter than the 16-byte record header")
    n, flags = (int(x) for x in np.frombuffer(buf, "<i8", 2))
    if n < 0 or flags & ~0xFF:
        raise ValueError(f"bad record header (natoms {n}, flags {flags:#x})")
    big = 8 * (
        3 * n
        + 9
        + 3 * n * bool(flags & 2)
        + 9 * bool(flags & 4)
        + n * bool(flags & 32)
        + bool(flags & 1)
        + bool(flags & 8)
        + bool(flags & 16)
    )
    end = 16 + big + n + 3 + n * bool(flags & 64)
    if len(buf) < end or (len(buf) > end and not flags & 128):
        raise ValueError(f"value is {len(buf)} bytes, the header (natoms {n}, flags {flags:#x}) implies {end}")
    f8 = np.frombuffer(buf, "<f8", big // 8, 16)
    pos = 0

    def take(size: int) -> np.ndarray:
        nonlocal pos
        pos += size
        return f8[pos - size : pos]

    fields = {"positions": take(3 * n).reshape(n, 3), "cell": take(9).reshape(3, 3)}
    if flags & 1:
        fields["energy"] = float(take(1)[0])
    if flags & 2:
        fields["forces"] = take(3 * n).reshape(n, 3)
    if flags & 4:
        fields["stress"] = take(9).reshape(3, 3)
    for name in ("charge", "spin"):
        if flags & FLAGS[name]:
            fields[name] = float(take(1)[0])
    if flags & 32:
        fields["tags"] = take(n).view("<i8")
    u1 = np.frombuffer(buf, np.uint8, end - 16 - big, 16 + big)
    fields["numbers"] = u1[:n].astype(np.int64)
    check_numbers(fields["numbers"])  # uint8 holds up to 255; Structure allows 0..118
    fields["pbc"] = u1[n : n + 3].astype(bool)
    if flags & 64:
        fields["fixed"] = u1[n + 3 : 2 * n + 3].astype(bool)
    if flags & 128:
        tail = bytes(buf[end:])
        try:  # the hook costs a Python call per JSON object: only pay it when arrays were stored
            extra = json.loads(tail, object_hook=_json_hook) if b'"__ndarray__"' in tail else json.loads(tail)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"unreadable sid/fid/info JSON tail: {err}") from None
        if not isinstance(extra, dict) or not extra.keys() <= {"sid", "fid", "info"}:
            raise ValueError("sid/fid/info JSON tail is not an object with those keys")
        fields.update(extra)
    return _structure(fields)


_PLAIN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Structure) if f.default is not dataclasses.MISSING}
_FACTORY_DEFAULTS = {
    f.name: f.default_factory for f in dataclasses.fields(Structure) if f.default_factory is not dataclasses.MISSING
}


def _structure(values: dict) -> Structure:
    """Build a Structure without ``__post_init__``.

    Every array in ``values`` already has the canonical dtype and a shape implied by the record header, so the
    conversions in ``__post_init__`` would only re-check them; they cost half of the decode time.
    """
    s = object.__new__(Structure)
    s.__dict__.update(_PLAIN_DEFAULTS)
    s.__dict__.update(values)
    for name, make in _FACTORY_DEFAULTS.items():
        if name not in values:
            s.__dict__[name] = make()
    return s


# ---------------------------------------------------------------------------------------------------- writing


def write(path: str | Path, structures: Iterable[Structure], *, shards: int = 1, stats: bool = True) -> int:
    """Write a native store; returns the number of records.

    ``path`` ending in ``.lmdb`` with ``shards == 1`` becomes one file; anything else becomes a directory of
    ``shards`` files. With ``stats`` (default) the data-set statistics are computed in the same pass and stored.
    """
    path = Path(path)
    shards = int(shards)
    if shards < 1:
        raise DataError(path, f"shards must be >= 1, got {shards}")
    single = shards == 1 and path.suffix.lower() == ".lmdb"
    # LMDB would open an existing file and mix old records with new ones: only ever write fresh files
    if path.is_file() if single else path.exists() and (path.is_file() or any(path.glob("*.lmdb"))):
        raise DataError(path, "output already exists; write to a new path")
    if single:
        files = [path]
    else:
        path.mkdir(parents=True, exist_ok=True)
        files = [path / _shard_name(k) for k in range(shards)]
    natoms: list[list[int]] = [[] for _ in range(shards)]
    label_kinds = LabelKindTally()
    count = 0
    with contextlib.ExitStack() as opened:  # each writer commits and closes on success, only closes on error
        writers = [opened.enter_context(LmdbWriter(f)) for f in files]

        def stored():
            nonlocal count
            for i, s in enumerate(structures):
                k, local = i % shards, i // shards
                try:
                    value = encode(s)
                except ValueError as err:
                    raise DataError(path, str(err), record=i) from None
                writers[k].put(_key(local), value, append=True)  # keys ascend: LMDB packs its pages full
                natoms[k].append(s.natoms)
                label_kinds.add(s)
                count = i + 1
                yield s

        if stats:
            from ..stats import compute_stats

            summary = compute_stats(stored()).as_dict()
        else:
            for _ in stored():
                pass
        for k, writer in enumerate(writers):
            header = {
                "format": "mlip-native",
                "schema": SCHEMA,
                "shard": k,
                "shards": shards,
                "count": len(natoms[k]),
                "total": count,
                "byteorder": "little",
                "layout": "record i is in shard i % shards under key (i // shards) as 8-byte big-endian",
                "flags": FLAGS,
                **label_kinds.result().as_metadata(),
            }
            writer.put(HEADER_KEY, json.dumps(header).encode())
            writer.put(NATOMS_KEY, np.asarray(natoms[k], dtype="<i8").tobytes())
            if stats and k == 0:
                writer.put(STATS_KEY, json.dumps(summary, default=_json_default).encode())
    return count


# ---------------------------------------------------------------------------------------------------- reading


def sniff(path: str | Path) -> bool:
    """True iff ``path`` (or the first shard of a directory) is an LMDB holding the native header key."""
    return sniff_first_shard(path, lambda txn: txn.get(HEADER_KEY) is not None)


class NativeReader(Reader):
    """Random access to a native store; LMDB environments open lazily and reopen after a fork."""

    format_name = "native"

    def __init__(self, path: str | Path, keys: LabelKeys = DEFAULT_KEYS):
        super().__init__(path, keys)  # labels are stored under their canonical names: ``keys`` is not needed
        self.files = shard_files(self.path)
        if not self.files:
            raise DataError(self.path, "directory holds no *.lmdb shards")
        headers, natoms, self._stats = [], [], None
        for f in self.files:
            try:
                with readonly(f) as env, env.begin() as txn:
                    raw_header, raw_natoms = txn.get(HEADER_KEY), txn.get(NATOMS_KEY)
                    raw_stats = txn.get(STATS_KEY)
            except lmdb.Error as err:
                raise DataError(f, f"cannot open as LMDB: {err}") from None
            if raw_header is None or raw_natoms is None:
                raise DataError(f, "not a native mlip store shard (no __mlip_native__/__natoms__ key)")
            try:
                header = json.loads(raw_header)
            except ValueError as err:
                raise DataError(f, f"unreadable native header: {err}") from None
            if header.get("schema", 0) > SCHEMA:
                raise DataError(f, f"written by a newer mlip (schema {header.get('schema')}); upgrade to read it")
            if raw_stats is not None:
                self._stats = json.loads(raw_stats)
            headers.append(header)
            natoms.append(np.frombuffer(raw_natoms, "<i8"))
        self._check_shards(headers, natoms)
        self._label_kind = from_metadata(headers[0])  # None: written before the header stated it
        self.shards = len(self.files)
        self._natoms = np.empty(self._total, dtype=np.int64)
        for k, counts in enumerate(natoms):
            self._natoms[k :: self.shards] = counts
        self._natoms.flags.writeable = False
        self._envs = ShardEnvs(self.files)  # opened on first read, reopened after a fork, dropped by pickle

    def _check_shards(self, headers: list[dict], natoms: list[np.ndarray]) -> None:
        shards = len(headers)
        total = headers[0].get("total", 0)
        for f, h, n in zip(self.files, headers, natoms):
            expect = len(range(h.get("shard", -1), total, shards))
            if h.get("shards") != shards or h.get("total") != total or not h.get("count") == len(n) == expect:
                raise DataError(
                    f,
                    f"shard {h.get('shard')} of {h.get('shards')} with {h.get('count')} records does "
                    f"not fit a store of {shards} shards and {total} records (missing or extra shards?)",
                )
        if sorted(h["shard"] for h in headers) != list(range(shards)):
            raise DataError(self.path, "shard indices are not 0..S-1: a shard is missing or duplicated")
        order = np.argsort([h["shard"] for h in headers])
        self.files = [self.files[k] for k in order]
        natoms[:] = [natoms[k] for k in order]
        self._total = total

    def __len__(self) -> int:
        return self._total

    def natoms(self, index: int) -> int:
        return int(self._natoms[index])

    def natoms_array(self) -> np.ndarray:
        """Atom counts of all records (read-only), without decoding any record. Shapes: (len(self),)."""
        return self._natoms

    def stats(self) -> dict | None:
        """The statistics stored at write time (:meth:`mlip_datasets.stats.DatasetStats.as_dict`), if any."""
        return self._stats

    def metadata(self) -> dict:
        return {
            "format": "native",
            "schema": SCHEMA,
            "shards": self.shards,
            "records": self._total,
            "has_stats": self._stats is not None,
            **(self._label_kind or first_record_kind(self)).as_metadata(),
            "note": FOREIGN_READERS_NOTE,
        }

    def record_name(self, index: int) -> str:
        return f"{self.files[index % self.shards].name} key {index // self.shards}"

    def __getitem__(self, index: int) -> Structure:
        index = int(index)
        if index < 0:
            index += self._total
        if not 0 <= index < self._total:
            raise IndexError(f"record {index} out of range for {self._total} records")
        k = index % self.shards
        try:
            with self._envs[k].begin(buffers=True) as txn:
                value = txn.get(_key(index // self.shards))
                s = None if value is None else decode(value)
        except (ValueError, TypeError, lmdb.Error) as err:
            raise DataError(self.files[k], str(err), record=index) from None
        if s is None:
            raise DataError(self.files[k], "record is missing", record=index)
        if s.natoms != self._natoms[index]:
            raise DataError(
                self.files[k],
                f"record has {s.natoms} atoms, the __natoms__ index says {self._natoms[index]}",
                record=index,
            )
        return s

    def close(self) -> None:
        self._envs.close()  # environments shared with other readers of the same files stay open for them


FORMAT = Format(
    name="native",
    extensions=(".lmdb",),
    open=NativeReader,
    write=write,
    sniff=sniff,
    directory_shards="*.lmdb",
    description="mlip native training store: sharded LMDB of raw little-endian arrays (fast to read)",
)
