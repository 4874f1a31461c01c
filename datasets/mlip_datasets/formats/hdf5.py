"""HDF5: our columnar layout (read and write) and the ANI/SPICE-style layout (read).

**mlip-hdf5, version 1** (what :func:`write` produces). Root attributes ``format = "mlip-hdf5"``,
``version = 1``, ``count = S``, ``units``. With ``A`` the total number of atoms, root datasets:

==================  ============  ==================================================================
name                shape         meaning
==================  ============  ==================================================================
natoms              (S,) int64    atoms per structure
offsets             (S+1,) int64  structure ``i`` owns atom rows ``offsets[i]:offsets[i+1]``
numbers             (A,) int64    atomic numbers
positions           (A, 3) f8     Angstrom
cell, pbc           (S, 3, 3) f8, (S, 3) bool
energy              (S,) f8       eV; NaN where missing            } each optional label comes with
forces              (A, 3) f8     eV/Angstrom; 0 where missing    } ``has_<name>`` (S,) bool; the label
stress              (S, 3, 3) f8  eV/Angstrom^3, ASE sign          } dataset and its mask exist only if
charge, spin        (S,) f8       spin = multiplicity              } some structure carries the label
tags, fixed         (A,) i8/bool  OC20 tags; 1 = fixed atom        }
sid, fid, info      (S,) str      JSON text (``null`` when absent), so ids keep their type
==================  ============  ==================================================================

**ANI/SPICE-style** (any file without that root attribute): groups, possibly nested (e.g. ANI-1x's one
group per formula), each holding conformers of one molecule: ``coordinates`` or ``conformations``
(M, N, 3), ``atomic_numbers`` (N,) or ``species`` (N,) element symbols, energies (M,) and forces
(M, N, 3). Energies are looked up under ``keys.energy`` (default: ``energies``, ``energy``,
``dft_total_energy``), forces under ``keys.forces`` (default: ``forces``, else SPICE's
``dft_total_gradient`` negated; any dataset whose name ends in ``gradient(s)`` is negated). NaN energies
(ANI-1x's missing levels of theory) count as missing. Values are taken as Angstrom/eV unless a dataset
declares ``attrs["units"]`` (SPICE: ``bohr``, ``hartree``, ``hartree/bohr``) or the caller passes
``units=`` to :class:`Hdf5Reader`; ANI-1x stores Hartree without saying so, so pass
``units={"energy": "hartree"}`` for it. ``sid`` is the group path and ``fid`` the conformer index.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..keys import DEFAULT_KEYS, LabelKeys
from ..record import Structure
from .base import Format, Reader

FORMAT_TAG = "mlip-hdf5"
VERSION = 1
UNITS = "Angstrom, eV, eV/Angstrom, eV/Angstrom^3"

# name -> (per-atom?, dtype, trailing shape, fill value); the optional labels carry a has_<name> mask
_OPTIONAL = {
    "energy": (False, np.float64, (), np.nan),
    "forces": (True, np.float64, (3,), 0.0),
    "stress": (False, np.float64, (3, 3), 0.0),
    "charge": (False, np.float64, (), np.nan),
    "spin": (False, np.float64, (), np.nan),
    "tags": (True, np.int64, (), 0),
    "fixed": (True, np.bool_, (), False),
}
_TEXT = ("sid", "fid", "info")
_MAX_RATIO = 1100  # bytes a filtered (compressed) dataset may declare per stored byte

_LENGTH = {"angstrom": 1.0, "a": 1.0, "ang": 1.0, "bohr": 0.529177210903, "a0": 0.529177210903, "nm": 10.0}
_ENERGY = {
    "ev": 1.0,
    "hartree": 27.211386245988,
    "ha": 27.211386245988,
    "kcal/mol": 0.0433641043,
    "kj/mol": 0.0103642688,
    "mev": 1e-3,
}
_COORDS = ("coordinates", "conformations", "positions")
_NUMBERS = ("atomic_numbers", "numbers", "species")
_ENERGIES = ("energies", "energy", "dft_total_energy")
_FORCES = ("forces", "dft_total_gradient")


def _factor(unit: str | None, kind: str) -> float:
    """Multiplier into Angstrom / eV / eV per Angstrom for a declared unit string."""
    if not unit:
        return 1.0
    u = unit.strip().lower().replace(" ", "")
    if kind == "length" and u in _LENGTH:
        return _LENGTH[u]
    if kind == "energy" and u in _ENERGY:
        return _ENERGY[u]
    if kind == "forces" and "/" in u:
        energy, length = u.rsplit("/", 1)
        if energy in _ENERGY and length in _LENGTH:
            return _ENERGY[energy] / _LENGTH[length]
    raise ValueError(f"unknown {kind} unit {unit!r}")


def _attr_unit(dataset) -> str | None:
    unit = dataset.attrs.get("units")
    return unit.decode() if isinstance(unit, bytes) else unit


class Hdf5Reader(Reader):
    """Either layout, chosen by the root attribute ``format``; the file opens lazily, once per process.

    Args:
        units: ANI/SPICE layout only; overrides declared units, e.g. ``{"length": "bohr",
            "energy": "hartree", "forces": "hartree/bohr"}`` (forces default to energy/length).
    """

    format_name = "hdf5"

    def __init__(self, path: str | Path, keys: LabelKeys = DEFAULT_KEYS, units: dict | None = None):
        super().__init__(path, keys)
        self.units = dict(units or {})
        self._h5 = None
        self._pid = None
        try:
            import h5py

            # index with a short-lived handle so that a parent process never forks while holding one
            with h5py.File(self.path, "r") as f:
                self.own = f.attrs.get("format") in (FORMAT_TAG, FORMAT_TAG.encode())
                if self.own:
                    self._index_own(f)
                else:
                    self._index_groups(f)
        except OSError as err:
            raise DataError(self.path, f"not a readable HDF5 file ({err})") from None

    def _file(self):
        if self._h5 is None or self._pid != os.getpid():
            import h5py

            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_h5"] = None
        return state

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None

    # -- indexing -----------------------------------------------------------------------------------------

    def _index_own(self, f) -> None:
        try:
            self._check_own(f)
        except DataError:
            raise
        except (KeyError, ValueError, TypeError, AttributeError) as err:
            raise DataError(self.path, f"malformed mlip-hdf5 index ({type(err).__name__}: {err})") from None

    def _dataset(self, f, name: str, shape: tuple, what: str, backed: bool = True):
        """``f[name]``, refused unless it is a dataset of ``shape`` (None = any length) whose bytes are stored."""
        ds = f.get(name)
        if ds is None:
            raise DataError(self.path, f"mlip-hdf5 file has no {name!r} dataset")
        if not hasattr(ds, "shape") or ds.shape is None:
            raise DataError(self.path, f"{name!r} is not a dataset")
        if len(ds.shape) != len(shape) or any(want is not None and got != want for got, want in zip(ds.shape, shape)):
            expect = (
                "(" + ", ".join(what if w is None else str(w) for w in shape) + ("," if len(shape) == 1 else "") + ")"
            )
            raise DataError(self.path, f"{name!r} has shape {ds.shape}, expected {expect}")
        if ds.dtype.kind not in "biuf":
            raise DataError(self.path, f"{name!r} has dtype {ds.dtype}, expected numbers")
        # a declared shape costs nothing on disk (unwritten chunks): trust it only as far as bytes back it, so a
        # tiny file cannot make a read allocate terabytes (gzip, the strongest standard filter, packs < 1100:1)
        declared = int(np.prod(ds.shape, dtype=np.float64) * ds.dtype.itemsize)
        filtered = ds.id.get_create_plist().get_nfilters() > 0
        stored = ds.id.get_storage_size()
        if backed and declared > max(stored * (_MAX_RATIO if filtered else 1), 0):
            raise DataError(
                self.path,
                f"{name!r} declares shape {ds.shape} ({declared:,} bytes) but the file stores only {stored:,}",
            )
        return ds

    def _check_own(self, f) -> None:
        raw = f.attrs.get("version", 0)
        version = np.asarray(raw)
        if version.shape != () or version.dtype.kind not in "iuf" or not np.isfinite(version) or version % 1:
            raise DataError(self.path, f"mlip-hdf5 'version' attribute is {raw!r}, not an integer")
        version = int(version)
        if version > VERSION:
            raise DataError(self.path, f"mlip-hdf5 version {version} is newer than this reader ({VERSION})")
        natoms_ds = self._dataset(f, "natoms", (None,), "S")
        nstruct = natoms_ds.shape[0]
        numbers_ds = self._dataset(f, "numbers", (None,), "A")
        total = numbers_ds.shape[0]
        self._dataset(f, "positions", (total, 3), "A")
        self._dataset(f, "cell", (nstruct, 3, 3), "S")
        self._dataset(f, "pbc", (nstruct, 3), "S")
        count = f.attrs.get("count")
        if count is not None and np.asarray(count).shape == () and np.asarray(count) != nstruct:
            raise DataError(self.path, f"'count' attribute says {count} structures but 'natoms' holds {nstruct}")
        for name, (per_atom, _, shape, _) in _OPTIONAL.items():
            if name in f or f"has_{name}" in f:
                # masks hold fill values where a label appeared late: their length is backed by 'natoms' instead
                self._dataset(f, f"has_{name}", (nstruct,), "S", backed=False)
                if name in f and f[name].shape != ((total if per_atom else nstruct), *shape):
                    want = ("A" if per_atom else "S", *shape)
                    raise DataError(self.path, f"{name!r} has shape {f[name].shape}, expected {want}")
        for name in _TEXT:
            if name in f and f[name].shape != (nstruct,):
                raise DataError(self.path, f"{name!r} has shape {f[name].shape}, expected (S,) with S = {nstruct}")
        natoms = natoms_ds[:]
        if natoms.dtype.kind not in "iu":
            raise DataError(self.path, f"'natoms' has dtype {natoms.dtype}, expected integers")
        natoms = natoms.astype(np.int64)
        bad = np.flatnonzero((natoms < 0) | (natoms > total))
        if bad.size:
            i = int(bad[0])
            raise DataError(self.path, f"natoms is {natoms[i]}, outside 0..{total} (the length of 'numbers')", record=i)
        if "offsets" in f:
            offsets = self._dataset(f, "offsets", (nstruct + 1,), "S+1")[:]
            if offsets.dtype.kind not in "iu":
                raise DataError(self.path, f"'offsets' has dtype {offsets.dtype}, expected integers")
            offsets = offsets.astype(np.int64)
        else:
            offsets = np.concatenate([[0], np.cumsum(natoms)]).astype(np.int64)
        if offsets[0] != 0:
            raise DataError(self.path, f"offsets start at {offsets[0]}, not 0", record=0)
        steps = np.diff(offsets)
        bad = np.flatnonzero(steps < 0)
        if bad.size:
            i = int(bad[0])
            raise DataError(self.path, f"offsets decrease from {offsets[i]} to {offsets[i + 1]}", record=i)
        if offsets[-1] != total:
            raise DataError(
                self.path,
                f"offsets/natoms do not match the length of 'numbers': offsets end at {offsets[-1]} "
                f"(after record {nstruct - 1}) but 'numbers' holds {total} atoms",
            )
        bad = np.flatnonzero(steps != natoms)
        if bad.size:
            i = int(bad[0])
            raise DataError(
                self.path,
                f"natoms says {natoms[i]} atoms but offsets give {steps[i]} (rows {offsets[i]}:{offsets[i + 1]})",
                record=i,
            )
        self._natoms, self._offsets = natoms, offsets

    def _index_groups(self, f) -> None:
        self._groups: list[tuple[str, str, str]] = []  # (group path, coordinates name, numbers name)
        counts, natoms = [], []

        def visit(group, depth: int) -> None:
            coords = next((c for c in _COORDS if c in group and hasattr(group[c], "shape")), None)
            if coords is not None:
                shape = group[coords].shape
                znames = next((z for z in _NUMBERS if z in group), None)
                if znames is None:
                    raise DataError(self.path, "group has coordinates but no atomic_numbers/species", record=group.name)
                if len(shape) != 3 or shape[2] != 3 or shape[1] != group[znames].shape[0]:
                    raise DataError(
                        self.path,
                        f"{coords} has shape {shape}, expected (M, {group[znames].shape[0]}, 3)",
                        record=group.name,
                    )
                self._groups.append((group.name, coords, znames))
                counts.append(shape[0])
                natoms.append(shape[1])
                return
            if depth < 3:
                for key in group:
                    child = group.get(key, getlink=False)
                    if hasattr(child, "keys"):  # a group, not a dataset
                        visit(child, depth + 1)

        visit(f, 0)
        if not self._groups:
            raise DataError(
                self.path,
                "no structures found: neither the mlip-hdf5 layout nor groups with "
                "coordinates/atomic_numbers (ANI/SPICE style)",
            )
        self._offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self._group_natoms = np.asarray(natoms, dtype=np.int64)

    # -- Reader -----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._natoms) if self.own else int(self._offsets[-1])

    def _check_index(self, index: int) -> int:
        n = len(self)
        index = int(index) + (n if index < 0 else 0)
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {n} structures")
        return index

    def _locate(self, index: int) -> tuple[int, int]:
        g = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return g, index - int(self._offsets[g])

    def natoms(self, index: int) -> int:
        index = self._check_index(index)
        return int(self._natoms[index] if self.own else self._group_natoms[self._locate(index)[0]])

    def record_name(self, index: int) -> str:
        if self.own:
            return f"{self.path.name} #{index}"
        g, j = self._locate(self._check_index(index))
        return f"{self.path.name} {self._groups[g][0]}[{j}]"

    def metadata(self) -> dict:
        return {"layout": FORMAT_TAG if self.own else "ani/spice groups"}

    def __getitem__(self, index: int) -> Structure:
        index = self._check_index(index)
        try:
            return self._read_own(index) if self.own else self._read_group(index)
        except DataError as err:
            if err.path is not None:
                raise
            # e.g. record.AtomicNumberError, raised by Structure without knowing the file: add file and record
            record = index if self.own else self.record_name(index).split(" ", 1)[1]
            raise type(err)(self.path, err.message, record=record) from None
        except (OSError, KeyError, ValueError, TypeError) as err:
            record = index if self.own else self.record_name(index).split(" ", 1)[1]
            raise DataError(self.path, f"{type(err).__name__}: {err}", record=record) from None

    def _read_own(self, i: int) -> Structure:
        f = self._file()
        a, b = int(self._offsets[i]), int(self._offsets[i + 1])
        values = {}
        for name, (per_atom, _, _, _) in _OPTIONAL.items():
            if name in f and f[f"has_{name}"][i]:
                values[name] = f[name][a:b] if per_atom else np.asarray(f[name][i])
                if values[name].ndim == 0:
                    values[name] = values[name].item()
        for name in _TEXT:
            if name in f:
                text = f[name][i]
                values[name] = json.loads(text.decode() if isinstance(text, bytes) else text)
        return Structure(
            numbers=f["numbers"][a:b],
            positions=f["positions"][a:b],
            cell=f["cell"][i],
            pbc=f["pbc"][i],
            energy=values.get("energy"),
            forces=values.get("forces"),
            stress=values.get("stress"),
            charge=values.get("charge"),
            spin=values.get("spin"),
            tags=values.get("tags"),
            fixed=values.get("fixed"),
            sid=values.get("sid"),
            fid=values.get("fid"),
            info=values.get("info") or {},
        )

    def _unit(self, kind: str, dataset) -> float:
        if kind in self.units:
            return _factor(self.units[kind], kind)
        if kind == "forces" and _attr_unit(dataset) is None and ("energy" in self.units or "length" in self.units):
            return _factor(self.units.get("energy", "ev"), "energy") / _factor(
                self.units.get("length", "angstrom"), "length"
            )
        return _factor(_attr_unit(dataset), kind)

    def _label(self, group, key: str, defaults: tuple[str, ...]):
        names = (key,) if key not in ("energy", "forces") else (key, *defaults)
        return next((group[n] for n in names if n in group), None)

    def _read_group(self, index: int) -> Structure:
        from ase.data import atomic_numbers

        g, j = self._locate(index)
        path, coords_name, z_name = self._groups[g]
        group = self._file()[path]
        z = group[z_name][()]
        if z.dtype.kind in "SUO":  # element symbols (ANI-1 "species")
            z = np.array([atomic_numbers[s.decode() if isinstance(s, bytes) else str(s)] for s in z])
        coords = group[coords_name]
        energy = forces = None
        ds = self._label(group, self.keys.energy, _ENERGIES)
        if ds is not None:
            value = float(ds[j]) * self._unit("energy", ds)
            energy = None if np.isnan(value) else value
        ds = self._label(group, self.keys.forces, _FORCES)
        if ds is not None:
            sign = -1.0 if ds.name.rstrip("s").endswith("gradient") else 1.0  # gradient = -forces
            forces = sign * self._unit("forces", ds) * np.asarray(ds[j], dtype=np.float64)
            forces = None if np.isnan(forces).any() else forces
        extra = {}
        for name in ("charge", "spin"):
            key = getattr(self.keys, name)
            if key in group:
                value = np.asarray(group[key][()])
                extra[name] = (value.reshape(-1)[j] if value.size > 1 else value.reshape(())).item()
            elif key in group.attrs:
                extra[name] = np.asarray(group.attrs[key]).item()
        return Structure(
            numbers=z,
            positions=np.asarray(coords[j]) * self._unit("length", coords),
            energy=energy,
            forces=forces,
            sid=path,
            fid=j,
            **extra,
        )


# -- writer -------------------------------------------------------------------------------------------------


class _Columns:
    """Appends blocks of structures to resizable datasets, creating an optional label on first sight."""

    def __init__(self, f):
        self.f = f
        self.nstruct = 0
        self.natom = 0
        base = {"natoms": ((), np.int64), "cell": ((3, 3), np.float64), "pbc": ((3,), np.bool_)}
        for name, (shape, dtype) in base.items():
            f.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype, chunks=True)
        for name, (shape, dtype) in {"numbers": ((), np.int64), "positions": ((3,), np.float64)}.items():
            f.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype, chunks=True)

    def _append(self, name: str, values: np.ndarray, start: int) -> None:
        ds = self.f[name]
        ds.resize(start + len(values), axis=0)
        ds[start : start + len(values)] = values

    def add(self, block: list[Structure]) -> None:
        import h5py

        natoms = np.array([s.natoms for s in block], dtype=np.int64)
        s0, a0 = self.nstruct, self.natom
        self._append("natoms", natoms, s0)
        self._append("cell", np.stack([s.cell for s in block]), s0)
        self._append("pbc", np.stack([s.pbc for s in block]), s0)
        self._append("numbers", np.concatenate([s.numbers for s in block]), a0)
        self._append("positions", np.concatenate([s.positions for s in block]).reshape(-1, 3), a0)
        for name, (per_atom, dtype, shape, fill) in _OPTIONAL.items():
            has = np.array([getattr(s, name) is not None for s in block])
            if name not in self.f:
                if not has.any():
                    continue
                # earlier structures lacked this label: the fill value and has_=False stand in for them
                self.f.create_dataset(
                    name,
                    shape=(a0 if per_atom else s0, *shape),
                    maxshape=(None, *shape),
                    dtype=dtype,
                    chunks=True,
                    fillvalue=fill,
                )
                self.f.create_dataset(
                    f"has_{name}", shape=(s0,), maxshape=(None,), dtype=bool, chunks=True, fillvalue=False
                )
            rows = [
                np.full((s.natoms if per_atom else 1, *shape), fill, dtype=dtype)
                if getattr(s, name) is None
                else np.asarray(getattr(s, name), dtype=dtype).reshape(-1, *shape)
                for s in block
            ]
            self._append(name, np.concatenate(rows), a0 if per_atom else s0)
            self._append(f"has_{name}", has, s0)
        text = h5py.string_dtype("utf-8")
        for name in _TEXT:
            if name not in self.f:
                self.f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=text, chunks=True)
            values = [json.dumps(s.info if name == "info" else getattr(s, name), default=_jsonable) for s in block]
            self._append(name, np.array(values, dtype=object), s0)
        self.nstruct += len(block)
        self.natom += int(natoms.sum())


def _jsonable(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot store an object of type {type(obj).__name__} in info")


def write(path: str | Path, structures: Iterable[Structure], *, shards: int = 1, block: int = 1024) -> int:
    """Write ``structures`` in the mlip-hdf5 layout (see the module docstring); returns the count."""
    import h5py

    from ._aserows import check_structure_shapes

    path = Path(path)
    if shards != 1:
        raise DataError(path, f"hdf5 writes a single file; sharding (shards={shards}) is not supported")
    count = 0
    limit = _file_size_limit()
    with h5py.File(path, "w") as f:
        f.attrs.update({"format": FORMAT_TAG, "version": VERSION, "units": UNITS})
        columns = _Columns(f)
        pending: list[Structure] = []
        for count, s in enumerate(structures, 1):
            check_structure_shapes(s, path, count - 1)
            pending.append(s)
            if len(pending) >= block:
                _room(f, path, limit, pending)
                _add(columns, pending, path, count - len(pending))
                pending = []
        if pending:
            _room(f, path, limit, pending)
            _add(columns, pending, path, count - len(pending))
        f.create_dataset("offsets", data=np.concatenate([[0], np.cumsum(f["natoms"][:])]).astype(np.int64))
        f.attrs["count"] = count
    return count


def _file_size_limit() -> int | None:
    """The soft ``RLIMIT_FSIZE`` (``ulimit -f``) in bytes, None when unlimited or unknown."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else int(soft)


def _room(f, path: Path, limit: int | None, block: list[Structure]) -> None:
    """Refuse, before HDF5 writes it, a block that could take the file past ``ulimit -f``.

    HDF5 hitting EFBIG leaves h5py unable to close the file, and h5py then crashes the process (SIGSEGV) instead
    of raising, so the limit is checked here with a generous margin: four times the block's array bytes plus
    1 MiB for chunk granularity and the metadata written at close.
    """
    if limit is None:
        return
    f.flush()
    need = 4 * sum(s.natoms * 80 + 200 for s in block) + (1 << 20)
    size = path.stat().st_size
    if size + need > limit:
        raise DataError(
            path,
            f"writing would pass the file-size limit (ulimit -f: {limit:,} bytes; {size:,} written, "
            f"about {need:,} more needed for the next {len(block)} structures)",
        )


def _add(columns: _Columns, block: list[Structure], path: Path, first: int) -> None:
    try:
        columns.add(block)
    except TypeError as err:
        raise DataError(path, f"cannot store record: {err}", record=f"{first}..{first + len(block) - 1}") from None


FORMAT = Format(
    name="hdf5",
    extensions=(".h5", ".hdf5"),
    open=Hdf5Reader,
    write=write,
    description="HDF5: mlip-hdf5 columnar layout (read/write) or ANI/SPICE-style groups (read)",
)
