"""Files ASE reads: extended XYZ (read and write), ASE SQLite databases (read and write), anything else
``ase.io.read`` understands (read only).

extxyz: energy/forces/stress under plain names sit on the SinglePointCalculator ASE attaches; other names
(``REF_energy``, ``REF_forces``) stay in ``info``/``arrays``; pick them with :class:`LabelKeys`. Other
calculator results ASE knows (``magmoms``, ``charges``, ``magmom``, ``dipole`` ...) become ``info`` entries
under their names, and the writer puts such entries back on the calculator (per-atom ones as columns). The
writer puts charge/spin/sid/fid in the comment line, tags as a per-atom column and ``fixed`` as ASE's
``move_mask`` column (a FixAtoms constraint), which ASE reads back as FixAtoms. ``info`` values that ASE's
comment line would change (``None`` read back as ``True``, a one-element array as a scalar, a string such as
``"T"`` or ``"1.5"`` as a bool or number) are written as ASE's ``_JSON`` values, which read back as they were.

ASE SQLite (``.db``): the writer stores charge, spin, sid, fid and ``info`` in each row's ``data`` (as the
aselmdb writer and OMol25 do); the reader looks in ``data`` and then ``key_value_pairs``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from ..ase_convert import atoms_to_structure, structure_to_atoms
from ..errors import DataError
from ..keys import DEFAULT_KEYS, LabelKeys
from ..label_kind import LabelKindTally, first_record_kind, from_metadata
from ..record import Structure, stress_to_voigt
from ._aserows import calculator_extras, check_structure_shapes, row_data
from .base import Format, Reader


def _one_file(path: Path, shards: int, name: str) -> None:
    if shards != 1:
        raise DataError(path, f"{name} writes a single file; sharding (shards={shards}) is not supported")


# -- what ASE's calculator and extxyz comment line would lose -------------------------------------------------

_LABEL_RESULTS = ("energy", "free_energy", "forces", "stress")  # Structure's own label slots


def _calculator_extras(atoms, keys: LabelKeys) -> dict:
    """Calculator results other than the labels (``magmoms``, ``charges`` ...), for ``info``."""
    results = getattr(atoms.calc, "results", None) or {}
    taken = {*_LABEL_RESULTS, *keys.as_dict().values()}
    return {k: v for k, v in results.items() if k not in taken}


def _calculator_atoms(s: Structure):
    """``s`` as Atoms with the ``info`` entries that are calculator results (``magmoms`` ...) on the calculator."""
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = structure_to_atoms(s)
    extras = calculator_extras(s)
    if extras:
        for name in extras:
            atoms.info.pop(name, None)
        if atoms.calc is None:
            atoms.calc = SinglePointCalculator(atoms)
        atoms.calc.results.update(extras)
    return atoms


def _extxyz_atoms(s: Structure):
    """``s`` as Atoms whose extxyz text ``ase.io.read`` turns back into the same values (module docstring)."""
    atoms = _calculator_atoms(s)
    for key, value in list(atoms.info.items()):
        atoms.info[key] = _extxyz_info_value(key, value)
    return atoms


def _extxyz_info_value(key: str, value):
    """``value``, or ASE's ``_JSON`` form of it where the plain comment-line form would read back changed."""
    from ase.io.extxyz import key_val_dict_to_str, key_val_str_to_dict

    if value is None:
        return "_JSON null"
    if isinstance(value, np.ndarray) and value.dtype.kind in "iufb" and value.ndim == 1 and value.size <= 1:
        return "_JSON " + json.dumps(value.tolist())
    if isinstance(value, str):
        back = key_val_str_to_dict(key_val_dict_to_str({key: value})).get(key)
        if not (isinstance(back, str) and back == value):
            return "_JSON " + json.dumps(value)
    return value


# -- files read by ase.io -------------------------------------------------------------------------------------


class AseFileReader(Reader):
    """All frames of a file ``ase.io`` reads, parsed on first access and kept in memory.

    Fine for files that fit in memory; convert larger sets to the native store or aselmdb for training.
    """

    def __init__(
        self, path: str | Path, keys: LabelKeys = DEFAULT_KEYS, ase_format: str | None = None, format_name: str = "ase"
    ):
        super().__init__(path, keys)
        self.ase_format = ase_format
        self.format_name = format_name
        self._frames: list | None = None

    def _load(self) -> list:
        if self._frames is None:
            from ase.io import iread

            frames: list = []
            try:
                # iread, not read(":"): on a parse error we know which frame broke
                for atoms in iread(str(self.path), index=":", format=self.ase_format, do_not_split_by_at_sign=True):
                    frames.append(atoms)
            except Exception as err:  # ase raises many types (XYZError, ValueError, KeyError, ...)
                what = f"{type(err).__name__}: {err}".strip().rstrip(":")
                if not frames and not self.ase_format:
                    raise DataError(self.path, f"ase.io cannot read this file ({what})") from None
                raise DataError(self.path, f"cannot parse ({what})", record=f"frame {len(frames)}") from None
            self._frames = frames
        return self._frames

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_frames"] = None  # re-parse in a spawned worker rather than pickling every Atoms
        return state

    def __len__(self) -> int:
        return len(self._load())

    def __getitem__(self, index: int) -> Structure:
        frames = self._load()
        atoms = frames[index]
        try:
            s = atoms_to_structure(atoms, self.keys)
            s.info.update(_calculator_extras(atoms, self.keys))
        except (ValueError, TypeError, KeyError) as err:
            raise DataError(self.path, str(err), record=f"frame {index % len(frames)}") from None
        check_structure_shapes(s, self.path, f"frame {index % len(frames)}")
        return s

    def natoms(self, index: int) -> int:
        return len(self._load()[index])

    def metadata(self) -> dict:
        """The label kind its frames' ``info`` states (:mod:`mlip_datasets.label_kind`); no header to ask."""
        tally = LabelKindTally()
        for atoms in self._load():
            tally.add_info(atoms.info)
        return tally.result().as_metadata()


def write_extxyz(
    path: str | Path,
    structures: Iterable[Structure],
    *,
    shards: int = 1,
    keys: LabelKeys = DEFAULT_KEYS,
    per_atom: Sequence[str] = (),
) -> int:
    """Write extended XYZ with ``ase.io.write``: labels on the calculator, charge/spin/sid/fid in info.

    With other ``keys`` the labels go under those names instead, in ``info`` (energy, stress as a Voigt
    6-vector) and ``arrays`` (forces), as ``mace_eval_configs`` writes ``MACE_energy``/``MACE_forces``; read them
    back with ``open_dataset(path, keys=keys)``. ``per_atom``: info entries with one row per atom (e.g. an
    ensemble's ``forces_uncertainty``) written as per-atom columns instead of into the comment line.
    """
    from ase.io import write as ase_write

    path = Path(path)
    _one_file(path, shards, "extxyz")
    count = 0
    with open(path, "w") as fd:
        for count, s in enumerate(structures, 1):
            check_structure_shapes(s, path, count - 1)
            columns = {k: np.asarray(s.info[k]) for k in per_atom if k in s.info}
            if any(c.shape[:1] != (s.natoms,) for c in columns.values()):
                raise DataError(path, f"record {count - 1}: a per-atom column does not have one row per atom")
            if columns:
                s = s.replace(info={k: v for k, v in s.info.items() if k not in columns})
            if keys.is_default():
                atoms = _extxyz_atoms(s)
            else:  # no calculator: the labels under the given names
                atoms = _extxyz_atoms(s.replace(energy=None, forces=None, stress=None))
                if s.energy is not None:
                    atoms.info[keys.energy] = s.energy
                if s.forces is not None:
                    atoms.arrays[keys.forces] = s.forces
                if s.stress is not None:
                    atoms.info[keys.stress] = stress_to_voigt(s.stress)
            atoms.arrays.update(columns)
            ase_write(fd, atoms, format="extxyz")
    return count


# -- ASE SQLite databases ---------------------------------------------------------------------------------


class AseDbReader(Reader):
    """Rows of an ASE SQLite database in id order; the connection is reopened in forked workers."""

    format_name = "asedb"

    def __init__(self, path: str | Path, keys: LabelKeys = DEFAULT_KEYS):
        super().__init__(path, keys)
        self._db = None
        self._pid = None
        try:
            self._ids = [row.id for row in self._conn().select(columns=["id"], include_data=False)]
        except DataError:
            raise
        except Exception as err:  # sqlite3.DatabaseError and friends
            raise DataError(self.path, f"not a readable ASE database ({type(err).__name__}: {err})") from None
        self._ids.sort()

    def _conn(self):
        if self._db is None or self._pid != os.getpid():
            import ase.db

            self._db = ase.db.connect(str(self.path), type="db", use_lock_file=False)
            self._pid = os.getpid()
        return self._db

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_db"] = None
        return state

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index: int) -> Structure:
        rid = self._ids[index]
        try:
            row = self._conn().get(id=rid)
            atoms = row.toatoms()
            # charge/spin/sid/fid and custom labels live in data (then key_value_pairs); hand them over via info
            # row.key_value_pairs goes through getattr, where AtomsRow.charge (a property) hides a "charge" key
            atoms.info.update({k: vars(row)[k] for k in row._keys if k in vars(row)})
            atoms.info.update(row.data)
            s = atoms_to_structure(atoms, self.keys)
            s.info.update(_calculator_extras(atoms, self.keys))
        except Exception as err:
            raise DataError(self.path, f"{type(err).__name__}: {err}", record=f"id {rid}") from None
        check_structure_shapes(s, self.path, f"id {rid}")
        return s

    def record_name(self, index: int) -> str:
        return f"{self.path.name} id {self._ids[index]}"

    def metadata(self) -> dict:
        """The label kind the database metadata states (our writer's), else what record 0 says."""
        try:
            stated = from_metadata(self._conn().metadata)
        except Exception:  # sqlite3/JSON errors in a foreign file: fall back to the records
            stated = None
        return (stated or first_record_kind(self)).as_metadata()


def write_asedb(path: str | Path, structures: Iterable[Structure], *, shards: int = 1) -> int:
    """Write an ASE SQLite database; charge, spin, sid, fid and info go into each row's ``data``."""
    import ase.db

    path = Path(path)
    _one_file(path, shards, "asedb")
    db = ase.db.connect(str(path), type="db", append=False, use_lock_file=False)
    count = 0
    label_kinds = LabelKindTally()
    with db:  # one transaction for the whole file
        for count, s in enumerate(structures, 1):
            check_structure_shapes(s, path, count - 1)
            atoms = _calculator_atoms(s)
            atoms.info.clear()  # ase.db ignores info; everything else we keep is in data
            db.write(atoms, data=row_data(s))
            label_kinds.add(s)
    db.metadata = label_kinds.result().as_metadata()
    return count


FORMATS = {
    "extxyz": Format(
        name="extxyz",
        extensions=(".extxyz", ".xyz"),
        open=partial(AseFileReader, ase_format="extxyz", format_name="extxyz"),
        write=write_extxyz,
        description="extended XYZ via ase.io (labels on the SinglePointCalculator or under LabelKeys names)",
    ),
    "asedb": Format(
        name="asedb",
        extensions=(".db",),
        open=AseDbReader,
        write=write_asedb,
        description="ASE SQLite database (ase.db)",
    ),
    "ase": Format(
        name="ase",
        extensions=(),
        open=partial(AseFileReader, ase_format=None, format_name="ase"),
        description="anything ase.io.read reads (read only)",
    ),
}
