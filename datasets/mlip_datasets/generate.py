"""Synthetic data made with ASE's EMT calculator: OC20-like slab+adsorbate frames and rattled molecules.

EMT is crude physics but fast (milliseconds per call), deterministic and shipped with ASE, so it gives
realistic-looking data for demos, tests and benchmarks without downloads.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .record import Structure

METALS = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt")
FACETS = ("fcc111", "fcc100")
ADSORBATES = ("H", "O", "N", "C", "OH", "CO", "NH", "CH", "NO", "N2")
MOLECULES = (
    "H2O",
    "NH3",
    "CH4",
    "CO2",
    "CH3OH",
    "HCOOH",
    "C2H6",
    "C2H4",
    "H2CO",
    "CH3CN",
    "OH",
    "NO",
    "CH3",
    "CN",
    "N2H4",
    "CH3CHO",
    "HCO",
    "NH2",
)
KINDS = ("slab-adsorbate", "molecule")


def _slab(rng: np.random.Generator, size: tuple[int, int, int]):
    from ase.build import add_adsorbate, fcc100, fcc111, molecule

    metal = METALS[rng.integers(len(METALS))]
    facet = FACETS[rng.integers(len(FACETS))]
    build = fcc111 if facet == "fcc111" else fcc100
    slab = build(metal, size=size, vacuum=8.0)
    layer = slab.get_tags()  # ase.build numbers layers 1 (top) .. nlayers (bottom)
    name = ADSORBATES[rng.integers(len(ADSORBATES))]
    ads = molecule(name) if len(name) > 1 else None
    site = "ontop" if rng.random() < 0.5 else ("fcc" if facet == "fcc111" else "hollow")
    if ads is None:
        add_adsorbate(slab, name, height=1.2 + 0.6 * rng.random(), position=site)
    else:
        if ads.positions[0, 2] > ads.positions[1:, 2].mean():
            ads.rotate(180, "x")  # bind through the first atom: put it below the rest
        add_adsorbate(slab, ads, height=1.6 + 0.4 * rng.random(), position=site, mol_index=0)
    nslab = len(layer)
    # OC20 tags: 0 sub-surface, 1 surface, 2 adsorbate; the bottom half of the slab is fixed
    nlayers = size[2]
    tags = np.full(len(slab), 2, dtype=np.int64)
    tags[:nslab] = np.where(layer <= nlayers // 2, 1, 0)
    fixed = np.zeros(len(slab), dtype=bool)
    fixed[:nslab] = layer > nlayers // 2
    slab.set_tags(tags)
    return slab, fixed, f"{name}/{metal}({facet[3:]})"


def slab_adsorbate(
    n: int,
    seed: int = 0,
    frames_per_system: int = 5,
    size: tuple[int, int, int] = (3, 3, 4),
    max_force: float | None = None,
) -> Iterator[Structure]:
    """Yield ``n`` frames from short EMT relaxations of random adsorbates on fcc slabs.

    Each system (``sid``) is rattled, then relaxed with FIRE; every step is a frame (``fid``) until
    ``frames_per_system`` frames are taken. Energies are total EMT energies (not adsorption energies).
    ``max_force`` (eV/A) drops frames with a larger force component: EMT is not fitted for H, C, N, O, and a
    rattled adsorbate can start with forces of 100+ eV/A that would dominate a small training set.
    """
    from ase.calculators.emt import EMT
    from ase.constraints import FixAtoms
    from ase.optimize import FIRE

    rng = np.random.default_rng(seed)
    made, sid = 0, 0
    while made < n:
        atoms, fixed, label = _slab(rng, size)
        atoms.set_constraint(FixAtoms(mask=fixed))
        atoms.rattle(stdev=0.1, seed=int(rng.integers(2**31)))
        atoms.calc = EMT()
        frames: list[Structure] = []

        def record():
            if max_force is not None and np.abs(atoms.get_forces(apply_constraint=False)).max() > max_force:
                return
            frames.append(
                Structure(
                    numbers=atoms.numbers,
                    positions=atoms.positions,
                    cell=np.asarray(atoms.cell),
                    pbc=atoms.pbc,
                    energy=atoms.get_potential_energy(),
                    forces=atoms.get_forces(apply_constraint=False),
                    tags=atoms.get_tags(),
                    fixed=fixed,
                    sid=sid,
                    fid=len(frames),
                    info={"system": label, "energy_kind": "total"},
                )
            )

        opt = FIRE(atoms, logfile=None)
        opt.attach(record)
        opt.run(fmax=0.05, steps=frames_per_system - 1 if max_force is None else 4 * frames_per_system)
        frames = frames[:frames_per_system]
        yield from frames[: n - made]
        made += min(len(frames), n - made)
        sid += 1


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A Haar-random rotation matrix: a normalised Gaussian quaternion is uniform on SO(3)'s double cover."""
    w, x, y, z = (q := rng.normal(size=4)) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def molecules(n: int, seed: int = 0, rattle: float = 0.05, random_orientation: bool = False) -> Iterator[Structure]:
    """Yield ``n`` rattled small molecules with EMT energy/forces and OMol25-style charge and spin.

    Spin is the multiplicity of the neutral molecule's lowest state by electron parity (1 or 2).
    ``random_orientation`` turns each molecule by a uniformly random rotation (ASE's templates share
    orientations, e.g. symmetry axes along z).
    """
    from ase.build import molecule
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    for i in range(n):
        name = MOLECULES[rng.integers(len(MOLECULES))]
        atoms = molecule(name)
        if random_orientation:
            atoms.positions = atoms.positions @ _random_rotation(rng).T
        atoms.rattle(stdev=rattle, seed=int(rng.integers(2**31)))
        atoms.calc = EMT()
        electrons = int(atoms.numbers.sum())
        yield Structure(
            numbers=atoms.numbers,
            positions=atoms.positions,
            energy=atoms.get_potential_energy(),
            forces=atoms.get_forces(),
            charge=0,
            spin=1 + electrons % 2,
            sid=i,
            fid=0,
            info={"system": name, "energy_kind": "total"},
        )


def generate(
    kind: str, n: int, seed: int = 0, breaking: str | None = None, strength: float = 1.0, **options
) -> Iterator[Structure]:
    """Dispatch on ``kind`` (one of :data:`KINDS`); ``options`` go to the kind's generator.

    ``breaking`` adds a symmetry-breaking term of that ``strength``
    (:mod:`mlip_datasets.symmetry_breaking`); molecules are then randomly oriented, so the term's axis is the
    only preferred direction in the data.
    """
    if kind == "slab-adsorbate":
        frames = slab_adsorbate(n, seed, **options)
    elif kind == "molecule":
        if breaking is not None:
            options.setdefault("random_orientation", True)
        frames = molecules(n, seed, **options)
    else:
        raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    if breaking is None:
        return frames
    from .symmetry_breaking import add_breaking_term

    return add_breaking_term(frames, breaking, strength)
