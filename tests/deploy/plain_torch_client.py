"""A client of an ``mlip export`` artifact that needs only numpy and torch (the README's "Export" example).

    python plain_torch_client.py MODEL.pt2 {aoti,program} OUT.npz STRUCTURE.npz...

Each STRUCTURE.npz holds ``positions (N, 3)``, ``numbers (N,)``, ``cell (3, 3)``, ``pbc (3,)``; OUT.npz gets
``energy_K``, ``forces_K``, ``stress_K`` for the K-th structure. The neighbour list is built here, brute force.
"""

import itertools
import json
import sys

import numpy as np
import torch


def neighbour_edges(positions, cell, pbc, cutoff):
    """Every ordered pair (i, j, shift) with ``|positions[j] - positions[i] + shift @ cell| < cutoff``, except an
    atom with itself at zero shift: ``edge_index (2, E)`` and integer ``shifts (E, 3)``. O(N^2) images: small
    systems only (atoms may lie anywhere; periodic axes get enough images to cover the cutoff)."""
    positions, cell = np.asarray(positions, dtype=float), np.asarray(cell, dtype=float)
    inverse = np.linalg.inv(cell) if any(pbc) else np.zeros((3, 3))
    frac = positions @ inverse
    spread = frac.max(axis=0) - frac.min(axis=0) if len(positions) else np.zeros(3)
    # planes of the lattice are 1/|b_k| apart (b_k the reciprocal vectors, columns of the inverse)
    reps = [int(np.ceil(cutoff * np.linalg.norm(inverse[:, k]) + spread[k])) if pbc[k] else 0 for k in range(3)]
    shifts = np.array(list(itertools.product(*(range(-n, n + 1) for n in reps))), dtype=float)
    vectors = positions[None, :, None] - positions[:, None, None] + (shifts @ cell)[None, None]  # [i, j, shift]
    distance = np.linalg.norm(vectors, axis=-1)
    i, j, s = np.nonzero((distance < cutoff) & (distance > 0))
    return np.stack([i, j]), shifts[s]


def load(path, fmt):
    """The exported function and its metadata (cutoff, elements, dtype, ...)."""
    if fmt == "aoti":
        model = torch._inductor.aoti_load_package(path)
        return model, json.loads(model.get_metadata()["mlip_export.json"])
    extra = {"mlip_export.json": ""}
    program = torch.export.load(path, extra_files=extra)
    return program.module(), json.loads(extra["mlip_export.json"])


def main(path, fmt, out, *structures):
    model, meta = load(path, fmt)
    results = {}
    for k, name in enumerate(structures):
        s = np.load(name)
        edge_index, shifts = neighbour_edges(s["positions"], s["cell"], s["pbc"], meta["cutoff"])
        energy, forces, stress = model(
            torch.tensor(s["positions"], dtype=torch.float64),
            torch.tensor(s["numbers"], dtype=torch.int64),
            torch.tensor(s["cell"], dtype=torch.float64),
            torch.tensor(s["pbc"], dtype=torch.bool),
            torch.tensor(edge_index, dtype=torch.int64),
            torch.tensor(shifts, dtype=torch.float64),
            torch.tensor(0.0, dtype=torch.float64),  # total charge
            torch.tensor(1.0, dtype=torch.float64),  # spin multiplicity
        )
        results |= {f"energy_{k}": energy.numpy(), f"forces_{k}": forces.numpy(), f"stress_{k}": stress.numpy()}
    np.savez(out, **results)


if __name__ == "__main__":
    main(*sys.argv[1:])
