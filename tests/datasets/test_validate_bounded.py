"""``mlip data validate`` on coincident atoms: memory linear in the atom count, the record still reported."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np

from mlip_datasets.record import Structure
from mlip_datasets.validate import check_structure


def _structure(positions, cell=None, pbc=False):
    n = len(positions)
    return Structure(
        numbers=np.full(n, 29),
        positions=np.asarray(positions, dtype=np.float64),
        cell=np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64),
        pbc=np.broadcast_to(pbc, (3,)).copy(),
    )


def test_coincident_atoms_counted_without_a_quadratic_neighbour_list():
    s = _structure(np.zeros((50, 3)))
    (message,) = check_structure(s)
    assert message.startswith("at least 50 atoms are closer than 0.1 A") and "0.000 A apart" in message


def test_close_pair_across_cube_boundary_and_periodic_image_still_found():
    s = _structure([[0.0, 0, 0], [-0.04, 0, 0], [5.0, 0, 0]])
    (message,) = check_structure(s)
    assert "2 atoms are closer than 0.1 A" in message and "0.040 A apart" in message
    s = _structure([[0.01, 1, 1], [3.58, 1, 1]], cell=np.eye(3) * 3.6, pbc=True)
    (message,) = check_structure(s)
    assert "2 atoms are closer than 0.1 A" in message and "0.030 A apart" in message
    assert check_structure(_structure([[0.0, 0, 0], [0.5, 0, 0]])) == []


def test_validate_3000_coincident_atoms_in_bounded_memory(tmp_path):
    path = tmp_path / "coincident.extxyz"
    lines = ["3000", 'Properties=species:S:1:pos:R:3 pbc="F F F"'] + ["Cu 1.0 1.0 1.0"] * 3000
    good = ["2", 'Properties=species:S:1:pos:R:3 pbc="F F F"', "Cu 0 0 0", "Cu 0 0 2.5"]
    path.write_text("\n".join(good + lines) + "\n")
    small = tmp_path / "small.extxyz"
    small.write_text("\n".join(good) + "\n")
    # The baseline is taken after a small validation has done every import (torch alone is 200-300 MB, and varies
    # between environments); what is bounded is what the 3,000-atom record adds (a full pair list took 1.3 GB).
    script = textwrap.dedent(
        f"""
        import re
        from mlip_datasets.io import open_dataset
        from mlip_datasets.validate import validate

        def peak():
            return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))

        with open_dataset({str(small)!r}) as reader:
            validate(reader)
        before = peak()
        with open_dataset({str(path)!r}) as reader:
            problems, bad = validate(reader)
        print(bad, [str(p) for p in problems])
        print("HWM", peak() - before)
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    first, second = run.stdout.strip().splitlines()[-2:]
    assert first.startswith("1 [") and "at least 3000 atoms are closer than 0.1 A" in first
    added_mb = int(second.split()[1]) / 1024
    assert added_mb < 150, f"validating the record added {added_mb:.0f} MB to the peak"
