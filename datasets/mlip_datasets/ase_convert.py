"""Conversion between :class:`Structure` and :class:`ase.Atoms`."""

from __future__ import annotations

import numpy as np

from .keys import DEFAULT_KEYS, LabelKeys
from .record import Structure, stress_to_voigt

_RESERVED_INFO = {"sid", "fid", "charge", "spin", "energy", "free_energy", "stress"}


def _lookup(atoms, key: str, per_atom: bool):
    """Find a label: calculator results first, then arrays (per-atom) or info.

    Per-atom labels fall back to ``info`` too: ASE database rows keep custom arrays in ``data``.
    """
    calc = atoms.calc
    if calc is not None and key in getattr(calc, "results", {}):
        return calc.results[key]
    if per_atom and key in atoms.arrays:
        return atoms.arrays[key]
    return atoms.info.get(key)


def atoms_to_structure(atoms, keys: LabelKeys = DEFAULT_KEYS) -> Structure:
    """Read numbers, geometry, labels, tags, FixAtoms constraints, charge/spin from ``atoms``."""
    from ase.constraints import FixAtoms

    n = len(atoms)
    fixed = None
    fixed_idx = [c.get_indices() for c in atoms.constraints if isinstance(c, FixAtoms)]
    if fixed_idx:
        fixed = np.zeros(n, dtype=bool)
        for idx in fixed_idx:
            fixed[idx] = True
    elif "move_mask" in atoms.arrays:  # raw OC20 S2EF extxyz: move_mask=1 means free
        fixed = ~atoms.arrays["move_mask"].astype(bool)
    tags = atoms.get_tags() if "tags" in atoms.arrays else None
    info = {k: v for k, v in atoms.info.items() if k not in _RESERVED_INFO and k not in keys.as_dict().values()}
    energy = _lookup(atoms, keys.energy, per_atom=False)
    if energy is None and keys.energy == "energy" and atoms.calc is not None:
        energy = atoms.calc.results.get("free_energy")
    return Structure(
        numbers=atoms.numbers,
        positions=atoms.positions,
        cell=np.asarray(atoms.cell),
        pbc=atoms.pbc,
        energy=None if energy is None else float(np.asarray(energy).reshape(())),
        forces=_lookup(atoms, keys.forces, per_atom=True),
        stress=_lookup(atoms, keys.stress, per_atom=False),
        charge=atoms.info.get(keys.charge),
        spin=atoms.info.get(keys.spin),
        tags=tags,
        fixed=fixed,
        sid=atoms.info.get("sid"),
        fid=atoms.info.get("fid"),
        info=info,
    )


def structure_to_atoms(s: Structure):
    """Build :class:`ase.Atoms`; labels go on a SinglePointCalculator, charge/spin/sid/fid into ``info``."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixAtoms

    atoms = Atoms(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=s.pbc)
    if s.tags is not None:
        atoms.set_tags(s.tags)
    if s.fixed is not None and s.fixed.any():
        atoms.set_constraint(FixAtoms(mask=s.fixed))
    atoms.info.update(s.info)
    for name in ("charge", "spin", "sid", "fid"):
        value = getattr(s, name)
        if value is not None:
            atoms.info[name] = value
    results = {}
    if s.energy is not None:
        results["energy"] = s.energy
        results["free_energy"] = s.energy
    if s.forces is not None:
        results["forces"] = s.forces
    if s.stress is not None:
        results["stress"] = stress_to_voigt(s.stress)
    if results:
        atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms
