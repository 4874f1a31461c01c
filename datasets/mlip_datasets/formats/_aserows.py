"""ASE database rows as plain dicts: the JSON codec and the row <-> :class:`Structure` mapping.

Shared by the aselmdb format (which stores these dicts as zlib-compressed JSON) and the ASE SQLite format
(which stores ``charge``/``spin``/``sid``/``fid``/``info`` the same way, in the row's ``data``).

The JSON codec mirrors :mod:`ase.io.jsonio` (``{"__ndarray__": [shape, dtype, flat]}`` and friends) without
importing ASE, and also accepts the plain nested lists written by older ASE versions.
"""

from __future__ import annotations

import datetime
import json
import os
import time
import uuid
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..keys import LabelKeys
from ..record import Structure, stress_to_voigt
from ..safe_pickle import RECORD_ALLOWANCE, RECORD_FACTOR

# ase.db.core.now(): row times are years since 2000-01-01
_T2000 = 946681200.0
_YEAR = 31557600.0
# keys the writer puts in ``data``; the reader takes them out of ``info`` again
_META = ("charge", "spin", "sid", "fid")
# ase.calculators.calculator.all_properties in its order (rows list calculator results so); the labels
# energy/forces/stress/free_energy are Structure fields, the rest travel in ``info`` under these names
CALC_PROPERTIES = (
    "energy",
    "forces",
    "stress",
    "stresses",
    "dipole",
    "charges",
    "magmom",
    "magmoms",
    "free_energy",
    "energies",
    "dielectric_tensor",
    "born_effective_charges",
    "polarization",
)
_PER_ATOM_PROPERTIES = ("stresses", "charges", "magmoms", "energies", "born_effective_charges")
_EXTRA_PROPERTIES = tuple(p for p in CALC_PROPERTIES if p not in ("energy", "forces", "stress", "free_energy"))


class RowError(ValueError):
    """A row is malformed; the caller turns it into a DataError naming the file and the record."""


def now() -> float:
    """Time in ASE database units (years since 2000), as ``ase.db.core.now()``."""
    return (time.time() - _T2000) / _YEAR


# --- JSON ------------------------------------------------------------------------------------------------


def _ndarray(shape, dtype, flat, budget: list[int] | None = None) -> np.ndarray:
    """One jsonio array; its declared shape and dtype must fit the values present and what ``budget`` has left.

    ``budget`` is a one-item list of bytes the row may still materialise: a dtype such as ``S400000000``
    would otherwise turn a few bytes of JSON into hundreds of MB before anything checks it.
    """
    try:
        dtype = np.dtype(dtype)
    except (TypeError, ValueError) as err:
        raise RowError(f"array has an unknown dtype {dtype!r} ({err})") from None
    if not isinstance(flat, list) or not isinstance(shape, list | tuple):
        raise RowError("array is not stored as [shape, dtype, values]")
    count = 1
    for dim in shape:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            raise RowError(f"array has an invalid shape {shape!r}")
        count *= dim
    if (2 * count if dtype.kind == "c" else count) != len(flat):  # complex: interleaved real/imaginary parts
        raise RowError(f"array declares shape {tuple(shape)} but holds {len(flat)} values")
    need = count * dtype.itemsize
    if budget is not None:
        if need > budget[0]:
            raise RowError(
                f"array of dtype {dtype.str} and shape {tuple(shape)} needs {need} bytes, more than the "
                f"{budget[1]} bytes this row may decode to ({RECORD_ALLOWANCE} + {RECORD_FACTOR}x its size)"
            )
        budget[0] -= need
    if dtype.kind == "c":  # complex arrays are stored as interleaved real/imaginary parts
        real = np.asarray(flat, dtype=np.empty(0, dtype).real.dtype)
        return real.view(dtype).reshape(shape)
    return np.asarray(flat, dtype=dtype).reshape(shape)


def _object_hook(dct: dict, budget: list[int] | None = None):
    if "__ndarray__" in dct:
        value = dct["__ndarray__"]
        if not isinstance(value, list) or len(value) != 3:
            raise RowError("array is not stored as [shape, dtype, values]")
        return _ndarray(*value, budget=budget)
    if "__complex__" in dct:
        return complex(*dct["__complex__"])
    if "__complex_ndarray__" in dct:  # pre-2019 ASE
        re, im = (np.asarray(x) for x in dct["__complex_ndarray__"])
        return re + 1j * im
    if "__datetime__" in dct:
        return datetime.datetime.fromisoformat(dct["__datetime__"])
    if "__ase_objtype__" in dct:
        dct = dict(dct)
        objtype = dct.pop("__ase_objtype__")
        if objtype == "cell":  # the only object type a row's geometry uses; keep it a plain array
            return np.asarray(dct["array"], dtype=np.float64)
        try:
            from ase.io.jsonio import create_ase_object, numpyfy

            return create_ase_object(objtype, numpyfy(dct))
        except Exception:  # an unknown or broken object in ``data`` should not make the row unreadable
            dct["__ase_objtype__"] = objtype
            return dct
    return dct


def decode(text: str | bytes):
    """Decode ASE-flavoured JSON; plain lists stay lists (callers convert the fields they use).

    Arrays may materialise at most ``RECORD_ALLOWANCE + RECORD_FACTOR * len(text)`` bytes in all (the
    per-record budget of :mod:`mlip_datasets.safe_pickle`); more raises :class:`RowError`.
    """
    total = RECORD_ALLOWANCE + RECORD_FACTOR * len(text)
    budget = [total, total]
    return json.loads(text, object_hook=lambda dct: _object_hook(dct, budget))


def _default(obj):
    if hasattr(obj, "todict"):
        dct = dict(obj.todict())
        if hasattr(obj, "ase_objtype"):
            dct["__ase_objtype__"] = obj.ase_objtype
        return dct
    if isinstance(obj, np.ndarray):
        flat = obj.ravel()
        if np.iscomplexobj(obj):
            flat = flat.view(obj.real.dtype)
        return {"__ndarray__": (obj.shape, str(obj.dtype), flat.tolist())}
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, datetime.datetime):
        return {"__datetime__": obj.isoformat()}
    if isinstance(obj, complex):
        return {"__complex__": (obj.real, obj.imag)}
    raise TypeError(f"cannot store an object of type {type(obj).__name__}")


_ENCODER = json.JSONEncoder(default=_default)  # same separators as ase.io.jsonio.encode


def encode(obj) -> str:
    """Encode like :func:`ase.io.jsonio.encode`."""
    return _ENCODER.encode(obj)


# --- row -> Structure ------------------------------------------------------------------------------------


def _array(value, name: str, dtype, shape: tuple) -> np.ndarray:
    """``value`` as an array of ``shape`` (-1 = any length); accepts jsonio arrays and plain nested lists."""
    try:
        arr = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise RowError(f"{name} is not a numeric array ({err})") from None
    if arr.ndim != len(shape) or any(want not in (-1, got) for want, got in zip(shape, arr.shape)):
        want = "(" + ", ".join("N" if d == -1 else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
        raise RowError(f"{name} has shape {arr.shape}, expected {want}")
    return arr


def _pbc(value) -> np.ndarray:
    if value is None:
        return np.zeros(3, dtype=bool)
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return np.array([bool(int(value) >> i & 1) for i in range(3)])  # SQLite-style bitmask
    arr = np.asarray(value, dtype=bool).reshape(-1)
    if arr.size == 1:
        return np.repeat(arr, 3)
    if arr.size != 3:
        raise RowError(f"pbc has {arr.size} entries, expected 3")
    return arr


def _cell(value) -> np.ndarray:
    if value is None:
        return np.zeros((3, 3))
    if isinstance(value, dict) and "array" in value:  # Cell.todict() without the objtype marker
        value = value["array"]
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 3:  # orthorhombic lengths, as Atoms(cell=[a, b, c]) accepts
        return np.diag(arr.reshape(3))
    if arr.size != 9:
        raise RowError(f"cell has shape {arr.shape}, expected (3, 3)")
    return arr.reshape(3, 3)


def fixed_from_constraints(constraints, natoms: int) -> np.ndarray | None:
    """FixAtoms constraints (any of the encodings ASE has used) as a per-atom mask; others are ignored."""
    if not constraints:
        return None
    if isinstance(constraints, str):  # SQLite rows keep constraints as a JSON string
        constraints = decode(constraints)
    fixed = None
    for c in constraints:
        if not isinstance(c, dict):
            continue
        name = str(c.get("name") or c.get("__name__") or "")
        kwargs = c.get("kwargs", c)  # old encoding: {"__name__": "ase.constraints.FixAtoms", "indices": ...}
        if name.rsplit(".", 1)[-1] != "FixAtoms":
            continue
        if fixed is None:
            fixed = np.zeros(natoms, dtype=bool)
        try:
            if kwargs.get("indices") is not None:
                fixed[np.asarray(kwargs["indices"], dtype=np.int64).reshape(-1)] = True
            elif kwargs.get("mask") is not None:
                fixed |= _array(kwargs["mask"], "FixAtoms mask", bool, (natoms,))
        except IndexError:
            raise RowError(f"FixAtoms indices out of range for {natoms} atoms") from None
    return fixed


def _find(key: str, *sources: dict):
    for source in sources:
        if source and key in source and source[key] is not None:
            return source[key]
    return None


def _scalar(value, name: str):
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.size != 1:
        raise RowError(f"{name} has shape {arr.shape}, expected a number")
    return arr.reshape(()).item()


def row_to_structure(row: dict, keys: LabelKeys) -> Structure:
    """Map a decoded row dict onto a :class:`Structure`; raises :class:`RowError` when it is malformed.

    Labels are looked up under ``keys`` names at the top level (calculator results), then in
    ``key_value_pairs``, then in ``data``; charge/spin/sid/fid in ``data`` first (OMol25), then in
    ``key_value_pairs``. Everything else in ``key_value_pairs`` and ``data`` becomes ``info``.
    """
    if not isinstance(row, dict):
        raise RowError(f"row is a {type(row).__name__}, expected a JSON object")
    for required in ("numbers", "positions"):
        if row.get(required) is None:
            raise RowError(f"row has no {required}")
    kvp = row.get("key_value_pairs") or {}
    data = row.get("data") or {}
    if not isinstance(kvp, dict) or not isinstance(data, dict):
        raise RowError("key_value_pairs and data must be JSON objects")
    numbers = _array(row["numbers"], "numbers", np.int64, (-1,))
    n = len(numbers)
    energy = _find(keys.energy, row, kvp, data)
    if energy is None and keys.energy == "energy":
        energy = row.get("free_energy")
    forces = _find(keys.forces, row, kvp, data)
    stress = _find(keys.stress, row, kvp, data)
    tags = row.get("tags")
    if stress is not None:
        stress = np.asarray(stress, dtype=np.float64)
        if stress.size not in (6, 9):
            raise RowError(f"{keys.stress} has shape {stress.shape}, expected (6,) or (3, 3)")
    taken = {keys.energy, keys.forces, keys.stress, keys.charge, keys.spin, "sid", "fid"}
    results = {k: row[k] for k in _EXTRA_PROPERTIES if row.get(k) is not None}  # magmoms, charges ...
    info = {k: v for k, v in {**results, **kvp, **data}.items() if k not in taken}
    return Structure(
        numbers=numbers,
        positions=_array(row["positions"], "positions", np.float64, (n, 3)),
        cell=_cell(row.get("cell")),
        pbc=_pbc(row.get("pbc")),
        energy=_scalar(energy, keys.energy),
        forces=None if forces is None else _array(forces, keys.forces, np.float64, (n, 3)),
        stress=stress,
        charge=_scalar(_find(keys.charge, data, kvp), keys.charge),
        spin=_scalar(_find(keys.spin, data, kvp), keys.spin),
        tags=None if tags is None else _array(tags, "tags", np.int64, (n,)),
        fixed=fixed_from_constraints(row.get("constraints"), n),
        sid=_find("sid", data, kvp),
        fid=_find("fid", data, kvp),
        info=info,
    )


# --- Structure -> row ------------------------------------------------------------------------------------


def _plain_number(x):
    """OMol25 stores integral charge/spin as JSON ints; keep other values as they are."""
    if isinstance(x, (float, np.floating)) and float(x).is_integer():
        return int(x)
    return x


def _plain(obj):
    """numpy scalars -> Python scalars, recursively: ASE's SQLite encoder (``o2b``) rejects them."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {key: _plain(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(value) for value in obj]
    return obj


def calculator_extras(s: Structure) -> dict:
    """Entries of ``s.info`` that belong on an ASE calculator beside the labels (``magmoms``, ``dipole`` ...):
    ASE property names, per-atom ones only with one row per atom."""
    extras = {}
    for name in _EXTRA_PROPERTIES:
        value = s.info.get(name)
        if value is None:
            continue
        if name in _PER_ATOM_PROPERTIES and (np.ndim(value) < 1 or np.shape(value)[0] != s.natoms):
            continue
        extras[name] = value
    return extras


def row_data(s: Structure) -> dict:
    """The ``data`` dict for ``s``: its ``info`` plus charge, spin, sid and fid (where fairchem looks), less
    what :func:`calculator_extras` puts on the calculator."""
    on_calculator = calculator_extras(s)
    data = _plain({k: v for k, v in s.info.items() if k not in on_calculator})
    for name in _META:
        value = _plain(getattr(s, name))
        if value is not None:
            data[name] = _plain_number(value) if name in ("charge", "spin") else value
    return data


def structure_to_row(s: Structure, mtime: float | None = None, user: str | None = None) -> dict:
    """The dict ase-db-backends' ``LMDBDatabase`` writes for ``s`` as Atoms with a SinglePointCalculator.

    Same fields in the same order: numbers, positions, unique_id, pbc/cell, tags, calculator,
    calculator_parameters, energy, forces, stress (Voigt), [other calculator results from ``info``: magmoms
    ...], free_energy, ctime, user, mtime, [key_value_pairs], data, [constraints].
    """
    t = now() if mtime is None else mtime
    row: dict = {"numbers": s.numbers, "positions": s.positions, "unique_id": uuid.uuid4().hex}
    # atoms2dict stores pbc/cell only when set; AtomsRow then appends the missing defaults, hence the order
    if s.pbc.any():
        row["pbc"] = s.pbc
    row["cell"] = s.cell
    row.setdefault("pbc", s.pbc)
    if s.tags is not None:
        row["tags"] = s.tags
    results = calculator_extras(s)
    if s.energy is not None:
        results["energy"] = results["free_energy"] = s.energy
    if s.forces is not None:
        results["forces"] = s.forces
    if s.stress is not None:
        results["stress"] = stress_to_voigt(s.stress)
    if results:
        row["calculator"] = "unknown"  # SinglePointCalculator.name
        row["calculator_parameters"] = {}
        row.update((name, results[name]) for name in CALC_PROPERTIES if name in results)
    row["ctime"] = t
    row["user"] = os.getenv("USER") if user is None else user
    row["mtime"] = t
    row["data"] = row_data(s)
    if s.fixed is not None and s.fixed.any():
        row["constraints"] = [{"name": "FixAtoms", "kwargs": {"indices": np.flatnonzero(s.fixed).tolist()}}]
    return row


def check_structure_shapes(s: Structure, path: str | Path, record) -> None:
    """Refuse to write labels whose shapes do not match the atoms (they would be unreadable later)."""
    n = s.natoms
    for name, want in (("forces", (n, 3)), ("tags", (n,)), ("fixed", (n,))):
        value = getattr(s, name)
        if value is not None and np.shape(value) != want:
            raise DataError(path, f"{name} has shape {np.shape(value)}, expected {want}", record=record)


__all__ = [
    "CALC_PROPERTIES",
    "RowError",
    "calculator_extras",
    "decode",
    "encode",
    "fixed_from_constraints",
    "row_data",
    "row_to_structure",
    "structure_to_row",
    "check_structure_shapes",
]
