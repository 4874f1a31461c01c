"""A plain ASE script using MLIPCalculator (the README example): relax with BFGS, then Langevin MD.

Usage: python example_ase_script.py CHECKPOINT
"""

import sys

from ase import units
from ase.build import molecule
from ase.md.langevin import Langevin
from ase.optimize import BFGS

from mlip_cli import MLIPCalculator

atoms = molecule("CH3OH")
atoms.calc = MLIPCalculator.from_checkpoint(sys.argv[1], device="cpu", dtype="float64")

opt = BFGS(atoms, logfile=None)
converged = opt.run(fmax=0.05, steps=200)
print("relaxed:", converged, opt.nsteps, "steps, E =", atoms.get_potential_energy(), "eV")

dyn = Langevin(atoms, timestep=0.5 * units.fs, temperature_K=300, friction=0.01 / units.fs, fixcm=False)
dyn.run(20)
print("md: T =", atoms.get_temperature(), "K after", dyn.nsteps, "steps")
