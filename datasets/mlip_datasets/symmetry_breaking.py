"""Energy terms that break one spatial symmetry on purpose, added to generated data (``mlip data generate``).

Models that learn equivariance (TransIP) tune one regulariser weight per symmetry type; to check that the
tuning finds which symmetry the data really has, the data must break one and keep the other. O(3) is generated
by the rotations and the inversion ``r -> -r``, and each term below keeps or breaks the two independently:

============  =========  =========  ============================================================================
term          rotations  inversion  energy
============  =========  =========  ============================================================================
``chiral``    kept       broken     ``s * sum_i v1_i . (v2_i x v3_i)``: a pseudoscalar (handedness of each
                                    atom's surroundings); ``v_a,i = sum_j g_a(r_ij) fc(r_ij) r_ij``
``uniaxial``  broken     kept       ``s * sum_{i<j} fc(r_ij) ((z . r_ij / r_ij)^2 - 1/3)``: an easy axis along z
``field``     broken     broken     ``-s * sum_{i<j} fc(r_ij) (chi_j - chi_i) (z . r_ij)``: bond dipoles
                                    (Pauling electronegativity difference) in a uniform field along z
============  =========  =========  ============================================================================

All terms depend only on relative positions within ``CUTOFF`` (translation- and permutation-invariant, smooth
at the cutoff through ``fc(r) = (1 - r/CUTOFF)^2``), so the symmetry broken is exactly the one named. Forces are
exact (autograd in float64). ``s`` (``strength``) is in eV (``uniaxial``), eV/A (``field``) or eV/A^3
(``chiral``).
"""

from __future__ import annotations

import numpy as np

TERMS = ("chiral", "uniaxial", "field")
CUTOFF = 4.0  # Angstrom
#: radial centres (A) of the three vectors of the chiral term: bonded, second and third neighbours
CHIRAL_CENTRES = (1.1, 2.0, 2.9)
CHIRAL_WIDTH = 0.4
#: Pauling electronegativities of the elements the generator makes
PAULING = {1: 2.20, 6: 2.55, 7: 3.04, 8: 3.44, 28: 1.91, 29: 1.90, 46: 2.20, 47: 1.93, 78: 2.28, 79: 2.54}


def _cutoff_fn(r):
    return (1.0 - r / CUTOFF).clamp(min=0.0) ** 2


def _energy(kind: str, numbers, vectors, src, dst, num_atoms: int):
    import torch

    r = vectors.norm(dim=1)
    fc = _cutoff_fn(r)
    z = vectors[:, 2]
    if kind == "uniaxial":
        return 0.5 * (fc * ((z / r) ** 2 - 1.0 / 3.0)).sum()  # both directions of each pair: halve
    if kind == "field":
        missing = sorted({int(n) for n in numbers.tolist()} - set(PAULING))
        if missing:
            raise ValueError(f"field term: no electronegativity for atomic numbers {missing}")
        chi = torch.tensor([PAULING[int(n)] for n in numbers.tolist()], dtype=vectors.dtype)
        return -0.5 * (fc * (chi[dst] - chi[src]) * z).sum()
    if kind == "chiral":
        v = []
        for mu in CHIRAL_CENTRES:
            w = torch.exp(-0.5 * ((r - mu) / CHIRAL_WIDTH) ** 2) * fc
            v.append(vectors.new_zeros(num_atoms, 3).index_add(0, src, w[:, None] * vectors))
        return (v[0] * torch.linalg.cross(v[1], v[2])).sum()
    raise ValueError(f"unknown symmetry-breaking term {kind!r}; choose from {', '.join(TERMS)}")


def breaking_term(
    kind: str, numbers: np.ndarray, positions: np.ndarray, cell: np.ndarray | None, pbc, strength: float
) -> tuple[float, np.ndarray]:
    """Energy (eV) and forces (eV/A) of one term (see the module table) for one structure.

    Shapes:
        numbers (N,), positions (N, 3), cell (3, 3) or None -> float, (N, 3).
    """
    import torch

    from .graph import edge_vectors
    from .neighbors import neighbor_list

    if kind not in TERMS:
        raise ValueError(f"unknown symmetry-breaking term {kind!r}; choose from {', '.join(TERMS)}")
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
    src, dst, shifts = neighbor_list(np.asarray(positions, dtype=np.float64), cell, pbc, CUTOFF)
    if len(src) == 0:  # isolated atoms: every term is a sum over pairs
        return 0.0, np.zeros((len(positions), 3))
    pos = torch.tensor(positions, dtype=torch.float64, requires_grad=True)
    s, d = torch.from_numpy(src), torch.from_numpy(dst)
    vectors = edge_vectors(
        pos,
        torch.from_numpy(cell),
        torch.from_numpy(shifts.astype(np.float64)),
        torch.stack([s, d]),
        torch.zeros(len(positions), dtype=torch.long),
    )
    energy = strength * _energy(kind, np.asarray(numbers), vectors, s, d, len(positions))
    (grad,) = torch.autograd.grad(energy, pos)
    return float(energy.detach()), (-grad).numpy()


def add_breaking_term(frames, kind: str, strength: float):
    """Yield ``frames`` (:class:`~mlip_datasets.record.Structure`) with the term added to energy and forces."""
    for frame in frames:
        energy, forces = breaking_term(kind, frame.numbers, frame.positions, frame.cell, frame.pbc, strength)
        frame.energy = frame.energy + energy
        frame.forces = frame.forces + forces
        frame.info["symmetry_breaking"] = f"{kind}:{strength:g}"
        yield frame
