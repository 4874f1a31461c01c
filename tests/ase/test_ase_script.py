"""A plain ASE script (the README example) runs against a checkpoint in a fresh interpreter."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def test_readme_example_script_relaxes_and_runs_md(trained_checkpoint):
    script = Path(__file__).with_name("example_ase_script.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a tiny model: one thread, no oversubscription in CI
    out = subprocess.run(
        [sys.executable, str(script), str(trained_checkpoint)], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr
    relaxed = re.search(r"relaxed: (True|False) (\d+) steps, E = (\S+) eV", out.stdout)
    assert relaxed and relaxed.group(1) == "True" and int(relaxed.group(2)) > 0
    md = re.search(r"md: T = (\S+) K after 20 steps", out.stdout)
    assert md and float(md.group(1)) > 0
