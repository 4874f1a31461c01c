"""OC20/OC22 legacy LMDB: pickled ``torch_geometric.data.Data`` records, read without PyG and written without it.

A data set is one ``.lmdb`` file (IS2RE) or a directory of ``*.lmdb`` shards (S2EF), read in shard-name order.
Keys are ASCII integers plus an optional pickled ``b"length"``. Records go through
:mod:`mlip_datasets.safe_pickle`, never plain ``pickle``. Files written here hold the opcodes a PyG 2.x
``Data`` of torch tensors pickles to, so fairchem-style code (``pickle.loads`` with PyG installed) reads them.
"""

from __future__ import annotations

import bisect
import pickle
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import lmdb  # this module itself is imported only when the format is used
import numpy as np

from .. import safe_pickle
from ..errors import DataError
from ..keys import DEFAULT_KEYS, LabelKeys
from ..label_kind import ENERGY_KINDS, LabelKind, record_label_kind
from ..lmdb_handles import LmdbWriter, ShardEnvs, open_readonly, release, shard_files, sniff_first_shard
from ..record import Structure, stress_to_matrix
from ._pyg_pickle import encode_data
from ._spool import write_contiguous
from .base import Format, Reader

NATIVE_KEY = b"__mlip_native__"  # the native store's header; such files belong to formats/native.py
LENGTH_KEY = b"length"
SHARD_GLOB = "*.lmdb"
_ASE_KEY = b"nextid"  # ASE's LMDB database keeps integer keys too; this reserved key tells it apart


def sniff(path: str | Path) -> bool:
    """True for an OC20-style LMDB (file, or first shard of a directory); False for other LMDBs and non-LMDBs."""
    return sniff_first_shard(path, _holds_oc20_records)


def _holds_oc20_records(txn) -> bool:
    if txn.get(NATIVE_KEY) is not None or txn.get(_ASE_KEY) is not None:
        return False
    for key, value in txn.cursor():
        if key == LENGTH_KEY:
            continue
        # pickles start with PROTO (protocol >= 2) or GLOBAL (protocol < 2 objects)
        return key.isdigit() and value[:1] in (b"\x80", b"c")
    return True  # empty, or only a length key


# ---- reading -------------------------------------------------------------------------------------------


def _scan_shard(path: Path) -> tuple[int, list[bytes] | None]:
    """Record count of one shard and, when its integer keys are not exactly 0..n-1, the sorted key list."""
    try:
        env = open_readonly(path)
    except lmdb.Error as err:
        raise DataError(path, f"not a readable LMDB file ({err})") from None
    try:
        with env.begin() as txn:
            raw = txn.get(LENGTH_KEY)
            if raw is not None:
                length = safe_pickle.loads(raw, path=path, record=LENGTH_KEY)
                if type(length) is not int or length < 0:
                    raise DataError(path, f"length key holds {repr(length)[:80]}, expected a count", record=LENGTH_KEY)
                stored = txn.stat()["entries"] - 1  # every entry but the length key itself
                if length > stored:
                    message = f"length key says {length} records but the file holds only {stored} other entries"
                    raise DataError(path, message, record=LENGTH_KEY)
                return length, None
            # no length key (some IS2RE files): count the integer keys, ignoring anything else
            keys = sorted(int(k) for k in txn.cursor().iternext(values=False) if k.isdigit())
    finally:
        release(env)
    if keys == list(range(len(keys))):
        return len(keys), None
    return len(keys), [str(k).encode() for k in keys]


def _first(value) -> Any:
    """A scalar from a Python value, numpy scalar or one-element array (sid/fid/natoms may be any of these)."""
    if isinstance(value, np.ndarray):
        return value.reshape(-1)[0].item() if value.size == 1 else value
    return value.item() if isinstance(value, np.generic) else value


class OC20Reader(Reader):
    """Random access to an OC20/OC22 LMDB file or directory of shards.

    Labels: the user's :class:`LabelKeys` names when they differ from the defaults (and only those); otherwise
    ``energy``/``y``/``y_relaxed``, ``forces``/``force``, ``stress``, ``charge``, ``spin``. IS2RE's
    ``y_init``, ``y_relaxed`` and ``pos_relaxed`` are also kept in ``info``; when ``y_relaxed`` is the energy,
    ``info["energy_key"]`` says so and ``info["labels_at_positions"]`` is False, since it is the relaxed
    structure's energy, not that of ``positions``. Every record's ``info["energy_kind"]`` carries the data
    set's energy kind (:mod:`mlip_datasets.label_kind`), so conversions keep it.
    """

    format_name = "oc20"

    def __init__(self, path: str | Path, keys: LabelKeys = DEFAULT_KEYS):
        super().__init__(path, keys)
        if not self.path.exists():
            raise DataError(self.path, "no such file or directory")
        self._files = shard_files(self.path)
        if not self._files:
            raise DataError(self.path, f"directory holds no {SHARD_GLOB} shards")
        scans = [_scan_shard(f) for f in self._files]
        self._keys = [explicit for _, explicit in scans]
        self._offsets = np.cumsum([0] + [n for n, _ in scans]).tolist()
        self._natoms = self._load_natoms()
        self._envs = ShardEnvs(self._files)  # opened on first read, reopened after a fork, dropped by pickle
        self._kind: tuple[LabelKind, str, dict] | None = None  # from record 0, when first asked

    def _load_natoms(self) -> np.ndarray | None:
        # fairchem's metadata.npz (natoms per record) sits in the shard directory or beside the single file
        meta = (self.path if self.path.is_dir() else self.path.parent) / "metadata.npz"
        if not meta.is_file():
            return None
        try:
            with np.load(meta, allow_pickle=False) as npz:
                natoms = np.asarray(npz["natoms"], dtype=np.int64).reshape(-1)
        except (OSError, KeyError, ValueError):
            return None
        return natoms if len(natoms) == len(self) else None  # belongs to another data set: ignore

    def __len__(self) -> int:
        return self._offsets[-1]

    def _locate(self, index: int) -> tuple[int, bytes]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"record {index} out of range for {n} records")
        index %= n
        shard = bisect.bisect_right(self._offsets, index) - 1
        local = index - self._offsets[shard]
        explicit = self._keys[shard]
        return shard, explicit[local] if explicit is not None else str(local).encode()

    def record_name(self, index: int) -> str:
        shard, key = self._locate(index)
        return f"{self._files[shard].name} key {key.decode()}"

    def _record(self, index: int) -> tuple[safe_pickle.PygData, Path, bytes]:
        shard, key = self._locate(index)
        path = self._files[shard]
        try:
            with self._envs[shard].begin() as txn:
                raw = txn.get(key)
        except lmdb.Error as err:
            raise DataError(path, f"cannot read LMDB ({err})", record=key) from None
        if raw is None:
            raise DataError(path, "record is missing", record=key)
        data = safe_pickle.loads(raw, path=path, record=key)
        if not isinstance(data, safe_pickle.PygData):
            raise DataError(path, f"record holds a {type(data).__name__}, not a torch_geometric Data", record=key)
        return data, path, key

    def __getitem__(self, index: int) -> Structure:
        data, path, key = self._record(index)
        try:
            s = _to_structure(data.fields, self.keys)
        except (ValueError, TypeError) as err:
            raise DataError(path, str(err), record=key) from None
        return LabelKind(self._label_kind()[0].energy_kind).stamp(s)

    def _label_kind(self) -> tuple[LabelKind, str, dict]:
        """The data set's label kind as record 0 shows it, why, and record 0's pickle layout and field names."""
        if self._kind is None:
            if len(self) == 0:
                self._kind = LabelKind(), "the data set is empty", {}
            else:
                try:
                    data = self._record(0)[0]
                    first = _to_structure(data.fields, self.keys)
                except (DataError, ValueError, TypeError) as err:
                    self._kind = LabelKind(), f"first record unreadable ({err})", {}
                else:
                    kind, reason = _energy_kind(data.fields, self.keys)
                    layout = {"pyg1": "PyG 1.x (attributes in __dict__)", "pyg2": "PyG 2.x (_store)"}[data.layout]
                    at_positions = record_label_kind(first).labels_at_positions
                    self._kind = (
                        LabelKind(kind, at_positions),
                        reason,
                        {"pickle_layout": layout, "fields": sorted(data.fields)},
                    )
        return self._kind

    def natoms(self, index: int) -> int:
        if self._natoms is not None:
            return int(self._natoms[index])
        fields = self._record(index)[0].fields
        if fields.get("atomic_numbers") is not None:
            return int(np.size(fields["atomic_numbers"]))
        return self[index].natoms  # raises the DataError that names the missing field

    def metadata(self) -> dict:
        meta: dict = {"shards": len(self._files), "natoms_source": "records"}
        if self._natoms is not None:
            meta["natoms_source"] = "metadata.npz"
        kind, reason, first = self._label_kind()
        return {**meta, **kind.as_metadata(), "energy_kind_reason": reason, **first}

    def close(self) -> None:
        self._envs.close()  # environments shared with other readers of the same files stay open for them


def _energy_kind(fields: dict, keys: LabelKeys) -> tuple[str | None, str]:
    """Adsorption, total or OC22 total energies (None: cannot tell), and how we know (record 0)."""
    declared = _first(fields.get("energy_kind"))
    if isinstance(declared, str) and declared in ENERGY_KINDS:
        return declared, f"records carry energy_kind={declared!r}"
    if fields.get("oc22") is not None:
        if _first(fields["oc22"]):
            return "oc22_total", "records carry the oc22 flag (OC22 energies are total DFT energies)"
        return None, "oc22=0: OC20 data, but whether reference energies were added back is not recorded"
    if keys.energy != DEFAULT_KEYS.energy:
        return None, f"energy read from the user-chosen key {keys.energy!r}; its reference is not recorded"
    if fields.get("y") is not None or fields.get("y_relaxed") is not None:
        return "adsorption", "legacy 'y' label and no oc22 flag: OC20 convention (minus slab and gas references)"
    if fields.get("energy") is not None:
        return "total", "label under 'energy', where fairchem's AtomsToGraphs puts the unreferenced DFT energy"
    return None, "records hold no energy label"


def _pick(fields: dict, wanted: str, default: str, fallbacks: tuple[str, ...] = ()) -> tuple[str | None, Any]:
    names = (wanted,) if wanted != default else (default, *fallbacks)
    for name in names:
        if fields.get(name) is not None:
            return name, fields[name]
    return None, None


def _array(name: str, value, shape: tuple[int, ...], dtype) -> np.ndarray:
    arr = np.asarray(value)
    if arr.size != int(np.prod(shape)) or (arr.ndim and arr.shape[-1] != shape[-1]):
        raise ValueError(f"{name} has shape {arr.shape}, expected {shape}")
    return arr.reshape(shape).astype(dtype)


def _scalar(name: str, value) -> float:
    arr = np.asarray(value)
    if arr.size != 1 or arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} has shape {arr.shape} ({arr.dtype}), expected one number")
    return float(arr.reshape(-1)[0])


_USED = {"pos", "cell", "atomic_numbers", "natoms", "tags", "fixed", "sid", "fid", "pbc", "num_nodes"}


def _to_structure(fields: dict, keys: LabelKeys) -> Structure:
    """Map one record's attributes onto a :class:`Structure`; ``ValueError`` names a missing or bad field."""
    for name in ("pos", "atomic_numbers"):
        if fields.get(name) is None:
            raise ValueError(f"required field {name!r} is missing (fields: {', '.join(sorted(fields)) or 'none'})")
    numbers_raw = np.asarray(fields["atomic_numbers"]).reshape(-1)
    n = len(numbers_raw)
    if numbers_raw.dtype.kind not in "biuf" or not np.all(numbers_raw == np.rint(numbers_raw)):
        raise ValueError("atomic_numbers are not whole numbers")
    positions = _array("pos", fields["pos"], (n, 3), np.float64)
    if fields.get("natoms") is not None and _first(fields["natoms"]) != n:
        raise ValueError(f"natoms is {_first(fields['natoms'])} but there are {n} atoms")
    cell = np.zeros((3, 3)) if fields.get("cell") is None else _array("cell", fields["cell"], (3, 3), np.float64)
    # OC20/OC22 slabs are periodic in all three directions (vacuum along z); a stored pbc wins
    pbc = _array("pbc", fields["pbc"], (3,), bool) if fields.get("pbc") is not None else np.full(3, cell.any())
    used = set(_USED)
    labels: dict[str, Any] = {}
    info: dict[str, Any] = {}
    for label, default, fallbacks in (
        ("energy", "energy", ("y", "y_relaxed")),
        ("forces", "forces", ("force",)),
        ("stress", "stress", ()),
        ("charge", "charge", ()),
        ("spin", "spin", ()),
    ):
        name, value = _pick(fields, getattr(keys, label), default, fallbacks)
        used.add(name)
        if value is None:
            continue
        if label == "forces":
            labels[label] = _array(name, value, (n, 3), np.float64)
        elif label == "stress":
            if np.size(value) not in (6, 9):
                raise ValueError(f"{name} has shape {np.shape(value)}, expected (1, 3, 3), (3, 3) or (6,)")
            labels[label] = stress_to_matrix(value)
        else:
            labels[label] = _scalar(name, value)
        if name == "y_relaxed":  # IS2RE: the relaxed structure's energy beside the initial positions
            info["energy_key"] = "y_relaxed"
            info["labels_at_positions"] = False
    for name in ("y_init", "y_relaxed"):
        if fields.get(name) is not None:
            info[name] = _scalar(name, fields[name])
    if fields.get("pos_relaxed") is not None:
        info["pos_relaxed"] = _array("pos_relaxed", fields["pos_relaxed"], (n, 3), np.float64)
    used |= {"y_init", "y_relaxed", "pos_relaxed"}
    for name, value in fields.items():  # other small facts (oc22, nads, energy_kind ...): keep in info
        value = _first(value)
        if name not in used and not name.startswith("_") and isinstance(value, (bool, int, float, str)):
            info[name] = value
    tags = None if fields.get("tags") is None else _array("tags", fields["tags"], (n,), np.int64)
    fixed = None if fields.get("fixed") is None else _array("fixed", fields["fixed"], (n,), bool)
    return Structure(
        numbers=numbers_raw.astype(np.int64),
        positions=positions,
        cell=cell,
        pbc=pbc,
        tags=tags,
        fixed=fixed,
        sid=_first(fields.get("sid")),
        fid=_first(fields.get("fid")),
        info=info,
        **labels,
    )


# ---- writing -------------------------------------------------------------------------------------------


_LABEL_FIELDS = ("y", "force", "energy", "forces", "energy_key")  # written from the labels (energy_key: see below)


def _record_fields(s: Structure, legacy_names: bool) -> dict:
    """A Structure as OC20 record attributes, with the dtypes of the released files (float32, long tags)."""
    n = s.natoms
    f: dict[str, Any] = {
        "pos": s.positions.astype(np.float32),
        "cell": s.cell.reshape(1, 3, 3).astype(np.float32),
        "atomic_numbers": s.numbers.astype(np.float32),
        "natoms": n,
        "tags": np.zeros(n, np.int64) if s.tags is None else s.tags.astype(np.int64),
        "fixed": np.zeros(n, np.float32) if s.fixed is None else s.fixed.astype(np.float32),
        "pbc": s.pbc.reshape(1, 3).copy(),
    }
    for name in ("sid", "fid"):
        if getattr(s, name) is not None:
            f[name] = _first(getattr(s, name))
    if s.energy is not None:
        # an IS2RE energy (the relaxed structure's, read from y_relaxed) goes back under y_relaxed, where IS2RE
        # loaders look and S2EF loaders, which pair y with the positions, do not
        relaxed = s.info.get("energy_key") == "y_relaxed"
        f["y_relaxed" if relaxed else "y" if legacy_names else "energy"] = float(s.energy)
    if s.forces is not None:
        f["force" if legacy_names else "forces"] = np.asarray(s.forces).reshape(n, 3).astype(np.float32)
    if s.stress is not None:
        f["stress"] = s.stress.reshape(1, 3, 3).astype(np.float32)
    for name in ("charge", "spin"):
        if getattr(s, name) is not None:
            f[name] = float(getattr(s, name))
    for name, value in s.info.items():  # y_init, y_relaxed, pos_relaxed, oc22, energy_kind ... travel along
        value = _first(value)
        if name in f or name in _LABEL_FIELDS or not name.isidentifier() or name[0] == "_":
            continue
        if isinstance(value, (bool, int, float, str)):
            f[name] = value
        elif isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            f[name] = value.astype({"b": bool, "i": np.int64, "u": np.int64, "f": np.float32}[value.dtype.kind])
    return f


def _write_shard(path: Path, values: Iterable[bytes]) -> int:
    """One file: records under keys b"0", b"1", ... and their count under ``b"length"``; returns the count."""
    count = 0
    with LmdbWriter(path) as writer:
        for count, value in enumerate(values, 1):
            writer.put(str(count - 1).encode(), value)
        writer.put(LENGTH_KEY, pickle.dumps(count, protocol=4))
    return count


def write(path: str | Path, structures: Iterable[Structure], *, shards: int = 1, legacy_names: bool = True) -> int:
    """Write ``structures`` as OC20 records: one file, or a directory of ``data.NNNN.lmdb`` when ``shards > 1``.

    ``legacy_names`` stores labels as ``y``/``force`` (what OC20 S2EF loaders expect) instead of
    ``energy``/``forces``. Records keep their input order across shards. Returns the number written.
    """
    path = Path(path)
    encoded = _encoded(structures, path, legacy_names)
    if shards <= 1:
        return _write_shard(path, encoded)
    path.mkdir(parents=True, exist_ok=True)
    return write_contiguous(path, encoded, shards, lambda k, values: _write_shard(path / f"data.{k:04d}.lmdb", values))


def _encoded(structures: Iterable[Structure], path: Path, legacy_names: bool) -> Iterator[bytes]:
    for i, s in enumerate(structures):
        try:
            fields = _record_fields(s, legacy_names)
        except (ValueError, TypeError) as err:  # e.g. forces of the wrong shape
            raise DataError(path, f"cannot write as OC20: {err}", record=i) from None
        yield encode_data(fields)


FORMAT = Format(
    name="oc20",
    extensions=(".lmdb",),
    open=OC20Reader,
    write=write,
    sniff=sniff,
    directory_shards=SHARD_GLOB,
    description="OC20/OC22 legacy LMDB of pickled torch_geometric Data (read without PyG; written PyG-2 style)",
)
