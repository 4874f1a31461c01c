"""Units of labelled data: names as files and users write them, and their factors into mlip's units.

mlip works in Angstrom, eV and eV/Angstrom. Files that say their units name them in several spellings: SPICE
writes ``bohr``, ``hartree``, ``hartree/bohr``; modelforge writes pint strings (``nanometer``,
``kilojoule_per_mole``, ``kilojoule_per_mole / nanometer``); users write ``kcal/mol`` or ``eV/A``. Forces are an
energy unit over a length unit. Constants are CODATA 2018.
"""

from __future__ import annotations

import functools
import re

KINDS = ("length", "energy", "forces")
#: mlip's own units, the target of every conversion
BASE = {"length": "angstrom", "energy": "ev", "forces": "ev/angstrom"}

_BOHR = 0.529177210903  # Angstrom
_HARTREE = 27.211386245988  # eV
_EV_PER_KJ_MOL = 1 / 96.48533212331  # 1 eV = e * N_A J/mol = 96.485... kJ/mol

LENGTH = {
    "angstrom": 1.0,
    "a": 1.0,
    "ang": 1.0,
    "å": 1.0,
    "bohr": _BOHR,
    "a0": _BOHR,
    "bohr_radius": _BOHR,
    "nm": 10.0,
    "nanometer": 10.0,
    "nanometre": 10.0,
    "pm": 0.01,
    "picometer": 0.01,
}
ENERGY = {
    "ev": 1.0,
    "electron_volt": 1.0,
    "electronvolt": 1.0,
    "mev": 1e-3,
    "hartree": _HARTREE,
    "ha": _HARTREE,
    "eh": _HARTREE,
    "kcal/mol": 4.184 * _EV_PER_KJ_MOL,
    "kilocalorie/mole": 4.184 * _EV_PER_KJ_MOL,
    "kj/mol": _EV_PER_KJ_MOL,
    "kilojoule/mole": _EV_PER_KJ_MOL,
}
_PLURALS = {"angstroms": "angstrom", "nanometers": "nanometer", "hartrees": "hartree", "mole": "mol"}
_OVER_MOL_AND_LENGTH = re.compile(r"^(.+)/\((mol|mole)\*(.+)\)$")  # kcal/(mol*angstrom)


def _normalise(unit: str) -> str:
    u = unit.strip().lower().replace(" ", "").replace("_per_", "/").replace("·", "*")
    for plural, singular in _PLURALS.items():
        u = re.sub(rf"\b{plural}\b", singular, u)
    return u.replace("kilocalorie/mol", "kilocalorie/mole").replace("kilojoule/mol", "kilojoule/mole")


@functools.lru_cache(maxsize=256)  # files repeat a few spellings per dataset, over and over
def factor(unit: str, kind: str) -> float:
    """Multiplier from ``unit`` into Angstrom / eV / eV per Angstrom (``kind``: length, energy or forces).

    Raises:
        ValueError: an unknown unit or kind, naming the unit.
    """
    u = _normalise(str(unit))
    if kind == "length" and u in LENGTH:
        return LENGTH[u]
    if kind == "energy" and u in ENERGY:
        return ENERGY[u]
    if kind == "forces":
        grouped = _OVER_MOL_AND_LENGTH.match(u)
        if grouped:
            u = f"{grouped[1]}/mol/{grouped[3]}"
        if "/" in u:
            energy, length = u.rsplit("/", 1)
            energy = _normalise(energy)
            if energy in ENERGY and length in LENGTH:
                return ENERGY[energy] / LENGTH[length]
    if kind not in KINDS:
        raise ValueError(f"unknown kind of unit {kind!r} (known: {', '.join(KINDS)})")
    known = {"length": LENGTH, "energy": ENERGY}.get(kind)
    hint = ", ".join(sorted(known)) if known else "an energy unit over a length unit, e.g. hartree/bohr"
    raise ValueError(f"unknown {kind} unit {unit!r} (known: {hint})")


def same_unit(a: str, b: str, kind: str) -> bool:
    """Whether two spellings name the same unit (``kj/mol`` and ``kilojoule_per_mole``)."""
    return abs(factor(a, kind) / factor(b, kind) - 1) < 1e-9


def parse_units(text: str) -> dict[str, str]:
    """``"energy=hartree,length=bohr"`` -> ``{"energy": "hartree", "length": "bohr"}``, each unit checked.

    Raises:
        ValueError: a malformed entry, an unknown kind or unit, or a kind given twice.
    """
    units: dict[str, str] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        kind, sep, unit = (p.strip() for p in entry.partition("="))
        if not sep or not kind or not unit:
            raise ValueError(f"{entry!r} is not KIND=UNIT (e.g. energy=hartree,length=bohr)")
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r} in {entry!r} (known: {', '.join(KINDS)})")
        if kind in units:
            raise ValueError(f"{kind} is given twice")
        factor(unit, kind)
        units[kind] = unit
    if not units:
        raise ValueError("no units given (e.g. energy=hartree,length=bohr)")
    return units
