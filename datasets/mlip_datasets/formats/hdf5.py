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

**Groups of conformers** (any file without that root attribute: ANI-1x, ANI-2x, SPICE, modelforge): groups,
possibly nested (ANI-1x's one group per formula), each holding the conformers of one molecule or, in the ANI-2x
release, of all molecules with one atom count (groups ``/004``, ``/005``, ...). With C conformers of N atoms:
``coordinates``, ``conformations`` or ``positions`` (C, N, 3); ``atomic_numbers``, ``numbers`` or ``species`` as
(N,) or modelforge's (N, 1), or one row per conformer (C, N) as in ANI-2x, numbers or element symbols; energies
(C,) or (C, 1) under ``keys.energy`` (default: ``energies``, ``energy``, ``dft_total_energy``); forces (C, N, 3)
under ``keys.forces`` (default: ``forces``, ``dft_total_force``, else SPICE's ``dft_total_gradient``; a dataset
whose name ends in ``gradient(s)`` is negated); charge and spin as a scalar, (C,) or (C, 1) dataset or a group
attribute. Every shape is checked against C and N when the file opens, no dataset may declare more bytes than
the file stores (beyond 16 MiB) and no compressed chunk may inflate past 32 MiB (in both layouts); a record reads
only its own rows; links to other files are not followed. NaN labels (ANI-1x's missing levels of
theory) count as missing. ``sid`` is the group path and ``fid`` the conformer index.

Units come from the file where it declares them (a dataset attribute ``units``, as SPICE writes, or ``u``, as
modelforge writes: ``bohr``, ``nanometer``, ``hartree``, ``kilojoule_per_mole``, ``hartree/bohr``, ...), else
from ``units=`` (``mlip data ... --units``), else from the ANI convention (Angstrom, Hartree, Hartree/Angstrom)
for a group recognisably from ANI-1x (labels named ``<level>.<quantity>`` with ANI-1x's levels, e.g.
``wb97x_dz.energy``) or the ANI-2x release (groups named by atom count with per-conformer species rows and
``energies``); forces default to the energy unit over the length unit. A unit that is still unknown, or a
``units=`` entry contradicting the file, is refused with one line. :meth:`Hdf5Reader.metadata` says which units
were used and where each came from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import DataError
from ..keys import DEFAULT_KEYS, LabelKeys
from ..record import Structure
from ..units import BASE, KINDS, factor, same_unit
from .base import Format, Reader

FORMAT_TAG = "mlip-hdf5"
VERSION = 1
_OWN_UNITS = ("Angstrom", "eV", "eV/Angstrom")
UNITS = ", ".join((*_OWN_UNITS, "eV/Angstrom^3"))

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

_COORDS = ("coordinates", "conformations", "positions")
_NUMBERS = ("atomic_numbers", "numbers", "species")
_ENERGIES = ("energies", "energy", "dft_total_energy")
_FORCES = ("forces", "dft_total_force", "dft_total_gradient")
_UNIT_ATTRS = ("units", "u")  # SPICE writes "units", modelforge "u"
#: ANI-1x names its labels "<level of theory>.<quantity>" and stores Hartree and Angstrom without saying so
_ANI1X_LEVELS = frozenset(
    {
        "wb97x_dz",
        "wb97x_tz",
        "ccsd(t)_cbs",
        "hf_dz",
        "hf_tz",
        "hf_qz",
        "mp2_dz",
        "mp2_tz",
        "mp2_qz",
        "npno_ccsd(t)_dz",
        "npno_ccsd(t)_tz",
        "tpno_ccsd(t)_dz",
    }
)
_ANI_UNITS = {"length": "angstrom", "energy": "hartree"}  # torchani: Angstrom, Hartree, Hartree/Angstrom
_SMALL = 1 << 24  # bytes a dataset may declare without the file having to back them (reads stay this small)
_MAX_CHUNK = 1 << 25  # bytes of one compressed chunk (h5py's own chunks stay under 1 MiB)


class _Group(NamedTuple):
    """One group of conformers (ANI/SPICE/modelforge layout), as indexed."""

    path: str
    coords: str
    numbers: str
    per_conformer: bool  # numbers hold one row per conformer (ANI-2x) instead of one row for all
    energy: str | None
    forces: str | None
    charge: str | None
    spin: str | None
    scale: tuple[float, float, float]  # length, energy, forces factors (forces negative for gradients)


class _Meta(NamedTuple):
    """What indexing needs of a dataset, read through h5py's low-level API (a third of the high-level cost, which
    counts when a file holds 10^5 groups)."""

    name: str  # within its group
    path: str  # within the file
    shape: tuple | None
    dtype: np.dtype
    id: object  # h5py.h5d.DatasetID


def _declared_unit(ds: _Meta) -> str | None:
    from h5py import h5a

    for name in _UNIT_ATTRS:
        if h5a.exists(ds.id, name.encode()):
            attr = h5a.open(ds.id, name.encode())
            value = np.empty(attr.shape, dtype=attr.dtype)
            attr.read(value)
            unit = value.reshape(-1)[0] if value.size == 1 else value
            return unit.decode() if isinstance(unit, bytes) else str(unit)
    return None


class Hdf5Reader(Reader):
    """Either layout, chosen by the root attribute ``format``; the file opens lazily, once per process.

    Args:
        units: units of the values where the file does not declare them, e.g. ``{"length": "bohr",
            "energy": "hartree"}`` (forces default to energy/length); an entry contradicting a unit the file
            declares is refused (the mlip-hdf5 layout is always Angstrom/eV).
    """

    format_name = "hdf5"
    takes_units = True  # open_dataset passes ``units=`` only to readers that say so

    def __init__(self, path: str | Path, keys: LabelKeys = DEFAULT_KEYS, units: dict | None = None):
        super().__init__(path, keys)
        self.units = dict(units or {})
        for kind, unit in self.units.items():
            try:
                factor(unit, kind)
            except ValueError as err:
                raise DataError(self.path, f"units: {err}") from None
        self._h5 = None
        self._pid = None
        try:
            import h5py

            # index with a short-lived handle so that a parent process never forks while holding one
            with h5py.File(self.path, "r") as f:
                self.own = f.attrs.get("format") in (FORMAT_TAG, FORMAT_TAG.encode())
                if self.own:
                    self._index_own(f)
                    self._check_own_units()
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
        self._bounded(ds, name, backed=backed)
        return ds

    def _check_own_units(self) -> None:
        for kind, unit in self.units.items():
            if not same_unit(unit, BASE[kind], kind):
                raise DataError(
                    self.path, f"mlip-hdf5 files hold Angstrom and eV; units= says {kind} is {unit!r}, drop it"
                )

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

    def _bounded(self, ds, name: str, record=None, backed: bool = True) -> None:
        """Refuse a dataset whose reads could cost far more memory than the file holds.

        A declared shape costs nothing on disk (unwritten chunks): trust it only as far as stored bytes back it
        (``backed``), so a tiny file cannot make a read allocate terabytes (gzip, the strongest standard filter,
        packs < 1100:1); datasets of at most ``_SMALL`` declared bytes pass unasked. Reading any element of a
        compressed chunk inflates the whole chunk, so compressed chunks are limited to ``_MAX_CHUNK`` bytes.
        """
        shape, dtype = ds.shape, ds.dtype  # h5py properties ask the library on every read
        plist = ds.id.get_create_plist()
        filtered = plist.get_nfilters() > 0
        if filtered:
            chunk = plist.get_chunk()
            inflated = int(np.prod(chunk, dtype=np.float64) * dtype.itemsize)
            if inflated > _MAX_CHUNK:
                raise DataError(
                    self.path,
                    f"{name!r} is stored in compressed chunks of {chunk} ({inflated:,} bytes each; a read may "
                    f"inflate at most {_MAX_CHUNK:,})",
                    record=record,
                )
        declared = int(np.prod(shape, dtype=np.float64) * dtype.itemsize)
        if not backed or declared <= _SMALL:
            return
        stored = ds.id.get_storage_size()
        if declared > stored * (_MAX_RATIO if filtered else 1):
            raise DataError(
                self.path,
                f"{name!r} declares shape {shape} ({declared:,} bytes) but the file stores only {stored:,}",
                record=record,
            )

    def _index_groups(self, f) -> None:
        import h5py

        self._groups: list[_Group] = []
        self._units_seen: dict[str, dict[str, None]] = {kind: {} for kind in KINDS}
        counts, natoms = [], []

        def visit(group, depth: int) -> None:
            names, where = set(group), group.name
            coords = next((ds for ds in (_member(group, c, names, where) for c in _COORDS) if ds is not None), None)
            if coords is not None:
                entry, c, n = self._index_group(group, coords, names)
                self._groups.append(entry)
                counts.append(c)
                natoms.append(n)
                return
            if depth < 3:
                for key in sorted(names):
                    if _hard_link(group, key):
                        child = group[key]
                        if isinstance(child, h5py.Group):
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

    def _group_dataset(self, where: str, ds: _Meta, shapes: tuple[tuple, ...], kinds: str = "biuf", why: str = ""):
        """``ds`` of group ``where``, refused (naming the group) unless it has one of ``shapes`` and the file
        stores it."""
        if ds.shape not in shapes:
            expect = " or ".join(str(s) for s in shapes)
            raise DataError(self.path, f"{ds.name!r} has shape {ds.shape}, expected {expect}{why}", record=where)
        if ds.dtype.kind not in kinds:
            want = "numbers" if kinds == "biuf" else "integers or element symbols"
            raise DataError(self.path, f"{ds.name!r} has dtype {ds.dtype}, expected {want}", record=where)
        self._bounded(ds, ds.name, record=where)
        return ds

    def _index_group(self, group, coords, names: set[str]) -> tuple[_Group, int, int]:
        """The group's entry and its conformer and atom counts, every dataset checked against them."""
        where, coords_name, shape = group.name, coords.name, coords.shape
        if shape is None or len(shape) != 3 or shape[2] != 3:
            raise DataError(self.path, f"{coords_name!r} has shape {shape}, expected (C, N, 3)", record=where)
        c, n = shape[:2]
        self._group_dataset(where, coords, (shape,))
        why = f" for {c} conformers of {n} atoms ({coords_name!r} has shape {shape})"
        z = next((ds for ds in (_member(group, z, names, where) for z in _NUMBERS) if ds is not None), None)
        if z is None:
            raise DataError(self.path, "group has coordinates but no atomic_numbers/species", record=where)
        self._group_dataset(where, z, ((n,), (n, 1), (c, n), (c, n, 1)), kinds="iuSUO", why=why)
        per_conformer = z.shape[:2] == (c, n) and z.shape != (n, 1)  # ANI-2x: one species row per conformer
        labels = {}
        for kind, defaults, shapes in (
            ("energy", _ENERGIES, ((c,), (c, 1))),
            ("forces", _FORCES, ((c, n, 3),)),
            ("charge", (), ((), (1,), (c,), (c, 1))),
            ("spin", (), ((), (1,), (c,), (c, 1))),
        ):
            key = getattr(self.keys, kind)
            candidates = (key, *defaults) if key == kind else (key,)
            ds = next((ds for ds in (_member(group, x, names, where) for x in candidates) if ds is not None), None)
            labels[kind] = None if ds is None else self._group_dataset(where, ds, shapes, why=why)
        scale = self._group_scale(where, coords, labels["energy"], labels["forces"], per_conformer, names)
        entry = _Group(
            where,
            coords_name,
            z.name,
            per_conformer,
            *(None if labels[k] is None else labels[k].name for k in ("energy", "forces", "charge", "spin")),
            scale,
        )
        return entry, c, n

    def _group_scale(self, where: str, coords, energy, forces, per_conformer: bool, names: set[str]):
        """Factors into Angstrom/eV for one group: the file's declared units, else ``units=``, else the ANI
        convention where the group is recognisably ANI-1x or ANI-2x; anything still unknown is refused."""
        datasets = {"length": coords, "energy": energy, "forces": forces}
        chosen: dict[str, tuple[str, str]] = {}  # kind -> (unit, where it came from)
        for kind, ds in datasets.items():
            declared = None if ds is None else _declared_unit(ds)
            given = self.units.get(kind)
            if declared is not None:
                try:
                    factor(declared, kind)
                    same = given is None or same_unit(declared, given, kind)
                except ValueError as err:
                    raise DataError(self.path, f"{ds.name!r}: {err}", record=where) from None
                if not same:
                    raise DataError(
                        self.path,
                        f"the file declares {kind} in {declared!r} ({ds.path}) but units= says {given!r}",
                        record=where,
                    )
                chosen[kind] = (declared, "declared by the file")
            elif given is not None:
                chosen[kind] = (given, "given by the user")
        needed = ["length"] + ["energy"] * (energy is not None) + ["forces"] * (forces is not None)
        derive = "forces" in needed and "forces" not in chosen  # forces default to energy/length
        missing = [k for k in ("length", "energy") if k not in chosen and (k in needed or derive)]
        convention = _ani_convention(where, names, per_conformer) if missing else None
        if convention is not None:
            for kind in missing:
                chosen[kind] = (_ANI_UNITS[kind], f"assumed: {convention} convention")
        if "forces" not in chosen and "energy" in chosen and "length" in chosen:
            (e, e_from), (l, l_from) = chosen["energy"], chosen["length"]
            chosen["forces"] = (f"{e}/{l}", e_from if e_from == l_from else "from the energy and length units")
        missing = [k for k in needed if k not in chosen]
        if missing:
            raise DataError(
                self.path,
                f"no units for {', '.join(missing)}: the file declares none (attribute 'units' or 'u'); "
                "give them, e.g. --units length=angstrom,energy=hartree (units= in Python)",
                record=where,
            )
        for kind in needed:
            unit, source = chosen[kind]
            self._units_seen[kind].setdefault(f"{unit} ({source})")
        sign = -1.0 if forces is not None and forces.name.rstrip("s").endswith("gradient") else 1.0  # -gradient
        return (
            factor(chosen["length"][0], "length"),
            factor(chosen["energy"][0], "energy") if energy is not None else 1.0,
            sign * factor(chosen["forces"][0], "forces") if forces is not None else 1.0,
        )

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
        """The layout and, per kind, the units read and where each came from (declared, given or assumed)."""
        if self.own:
            units = {kind: f"{unit} (declared by the file)" for kind, unit in zip(KINDS, _OWN_UNITS)}
            return {"layout": FORMAT_TAG, "units": units}
        units = {kind: "; ".join(seen) for kind, seen in self._units_seen.items() if seen}
        return {"layout": "groups of conformers", "units": units}

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
        except (OSError, KeyError, ValueError, TypeError, IndexError) as err:
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

    def _read_group(self, index: int) -> Structure:
        g, j = self._locate(index)
        entry = self._groups[g]
        group = self._file()[entry.path]
        z = np.asarray(group[entry.numbers][j] if entry.per_conformer else group[entry.numbers][()]).reshape(-1)
        if z.dtype.kind in "SUO":  # element symbols (ANI-1 "species")
            z = self._symbols_to_numbers(z, entry.numbers)
        length, energy_scale, forces_scale = entry.scale
        energy = forces = None
        if entry.energy:
            value = float(np.asarray(group[entry.energy][j]).reshape(())) * energy_scale
            energy = None if np.isnan(value) else value  # NaN: ANI-1x's missing levels of theory
        if entry.forces:
            forces = forces_scale * np.asarray(group[entry.forces][j], dtype=np.float64)
            forces = None if np.isnan(forces).any() else forces
        extra = {}
        for name, ds_name in (("charge", entry.charge), ("spin", entry.spin)):
            key = getattr(self.keys, name)
            if ds_name:
                ds = group[ds_name]
                value = ds[()] if ds.ndim == 0 else ds[j if ds.shape[0] > 1 else 0]
                extra[name] = np.asarray(value).reshape(()).item()
            elif key in group.attrs:
                extra[name] = np.asarray(group.attrs[key]).reshape(()).item()
        return Structure(
            numbers=z,
            positions=np.asarray(group[entry.coords][j], dtype=np.float64) * length,
            energy=energy,
            forces=forces,
            sid=entry.path,
            fid=j,
            **extra,
        )

    @staticmethod
    def _symbols_to_numbers(symbols: np.ndarray, name: str) -> np.ndarray:
        from ase.data import atomic_numbers

        out = []
        for s in symbols:
            symbol = s.decode() if isinstance(s, bytes) else str(s)
            if symbol not in atomic_numbers:
                raise DataError(None, f"{name!r} holds {symbol!r}, not an element symbol")
            out.append(atomic_numbers[symbol])
        return np.array(out, dtype=np.int64)


def _hard_link(group, name: str) -> bool:
    """Whether ``name`` is a hard link: an external link would open another file, a soft link could loop."""
    from h5py import h5l

    return group.id.links.get_info(name.encode()).type == h5l.TYPE_HARD


def _member(group, name: str, names: set[str], where: str) -> _Meta | None:
    """Dataset ``name`` of ``group`` (at ``where``) if it is one and is reached by a hard link, else None."""
    from h5py import h5d

    if name not in names or not _hard_link(group, name):
        return None
    try:
        dsid = h5d.open(group.id, name.encode())
    except (KeyError, ValueError, TypeError):  # a group or a named type, not a dataset
        return None
    return _Meta(name, f"{where.rstrip('/')}/{name}", dsid.shape, dsid.dtype, dsid)


def _ani_convention(path: str, names: set[str], per_conformer: bool) -> str | None:
    """``ANI-1x`` for a group holding ``<level>.<quantity>`` labels of ANI-1x's levels of theory, ``ANI-2x`` for
    the release's groups named by atom count with one species row per conformer; else None."""
    if per_conformer and path.rsplit("/", 1)[-1].isdigit() and "energies" in names:
        return "ANI-2x"
    if any(key.split(".", 1)[0] in _ANI1X_LEVELS for key in names if "." in key):
        return "ANI-1x"
    return None


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
