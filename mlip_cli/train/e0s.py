"""Per-element reference energies (E0s) from the recipe's ``data.e0s``: fitted, averaged, or isolated atoms."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mlip_datasets.stats import average_e0s, fit_e0s, isolated_atoms

from .recipe import E0_METHODS, RecipeError

__all__ = ["resolve_e0s"]


def resolve_e0s(
    spec: Any,
    compositions: np.ndarray,
    energies: np.ndarray,
    elements: list[int],
    isolated: Mapping[int, float],
) -> tuple[dict[int, float], str]:
    """The E0s ``{Z: eV}`` for ``elements`` and a line saying where they came from.

    Args:
        spec: ``data.e0s`` (see :class:`~mlip_cli.train.recipe.DataSection`).
        compositions, energies: atom counts per element and energies of the labelled training structures.
        isolated: isolated-atom energies found in the training data (``auto`` uses them first).

    Shapes:
        compositions (S, len(elements)), energies (S,).

    Raises:
        RecipeError: a file or mapping that lacks an element of the training data, or names an unknown one.
    """
    if isinstance(spec, str) and spec in E0_METHODS:
        if spec == "average":
            return (average_e0s(compositions, energies, elements) if len(energies) else {}), "mean energy per atom"
        known = {z: e for z, e in isolated.items() if z in elements} if spec == "auto" else {}
        if not len(energies):
            return known, "isolated atoms in the training data" if known else "none (no energy labels)"
        e0s = fit_e0s(compositions, energies, elements, known=known)
        if not known:
            return e0s, "least squares over the training energies"
        fitted = [z for z in elements if z not in known]
        rest = f"; least squares for Z={fitted}" if fitted else ""
        return e0s, f"isolated atoms in the training data{rest}"
    if isinstance(spec, Mapping):
        given, where = {_element(k): float(v) for k, v in spec.items()}, "data.e0s"
    else:
        given, where = _read_isolated_atoms(Path(str(spec))), str(spec)
    missing = [z for z in elements if z not in given]
    if missing:
        raise RecipeError(f"recipe: {where} gives no E0 for element(s) {_names(missing)} of the training data")
    return {z: given[z] for z in elements}, f"isolated atoms from {where}"


def _read_isolated_atoms(path: Path) -> dict[int, float]:
    from mlip_datasets.io import open_dataset
    from mlip_datasets.torch_data import natoms_of

    if not path.exists():
        raise RecipeError(
            f"recipe: data.e0s {str(path)!r} is neither a method ({', '.join(E0_METHODS)}) nor an existing file"
        )
    with open_dataset(path) as reader:
        found = isolated_atoms(reader, natoms_of(reader))
    if not found:
        raise RecipeError(f"recipe: data.e0s file {path} holds no isolated atom (one atom with an energy)")
    return {z: energy for z, (_, energy) in found.items()}


def _element(name: Any) -> int:
    from ..models.config import ConfigError, _atomic_number

    try:
        return _atomic_number(name)
    except (ConfigError, ValueError, TypeError):
        raise RecipeError(f"recipe: data.e0s: {name!r} is not an element symbol or atomic number") from None


def _names(numbers: list[int]) -> str:
    from ase.data import chemical_symbols

    return ", ".join(chemical_symbols[z] if 0 <= z < len(chemical_symbols) else f"Z={z}" for z in numbers)
