"""Inputs and checks shared by the data tests (imported by name; tests/datasets is on sys.path under pytest's
default import mode)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib

import lmdb
import numpy as np

from mlip_datasets.record import Structure

#: every field of a Structure, in declaration order
FIELDS = (
    "numbers",
    "positions",
    "cell",
    "pbc",
    "energy",
    "forces",
    "stress",
    "charge",
    "spin",
    "tags",
    "fixed",
    "sid",
    "fid",
    "info",
)
#: tolerances for the fields OC20 files store as float32 (positions, cell, forces, stress)
FLOAT32 = dict.fromkeys(("positions", "cell", "forces", "stress"), 1e-6)
_OPTIONAL = ("energy", "forces", "stress", "charge", "spin", "tags", "fixed", "ids")


def random_structures(n: int, seed: int = 0, *, complete: bool = False) -> list[Structure]:
    """Random structures: even ones periodic (triclinic cell, pbc TTT or TTF), odd ones molecules (no cell, no pbc).

    Each optional field (energy, forces, stress, charge, spin, tags, fixed, sid with fid) is present with
    probability 0.6, so records mix every combination of missing labels; ``complete`` gives every record all of
    them. Floats are random float64 bits; stress is symmetric (Voigt storage keeps six numbers); a fixed mask has
    at least one fixed atom (ASE stores fixed atoms as a constraint, so "none fixed" reads back as no mask); sids
    mix ints and strings and are unique over (seed, index); every third record has ``info`` (a string, an int, a
    list and a float array).
    """
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        natoms = int(rng.integers(1, 13))
        periodic = k % 2 == 0
        present = dict(zip(_OPTIONAL, np.ones(len(_OPTIONAL), bool) if complete else rng.random(len(_OPTIONAL)) < 0.6))
        a = rng.normal(size=(3, 3))
        fixed = rng.random(natoms) < 0.5
        fixed[rng.integers(natoms)] = True
        out.append(
            Structure(
                numbers=rng.integers(1, 119, natoms),
                positions=rng.normal(size=(natoms, 3)) * 3,
                cell=np.diag(rng.uniform(5, 9, 3)) + rng.normal(scale=0.3, size=(3, 3))
                if periodic
                else np.zeros((3, 3)),
                pbc=[True, True, k % 4 == 0] if periodic else False,
                energy=float(rng.normal() * 100) if present["energy"] else None,
                forces=rng.normal(size=(natoms, 3)) if present["forces"] else None,
                stress=a + a.T if present["stress"] else None,
                charge=float(rng.integers(-2, 3)) if present["charge"] else None,
                spin=float(rng.integers(1, 4)) if present["spin"] else None,
                tags=rng.integers(0, 3, natoms) if present["tags"] else None,
                fixed=fixed if present["fixed"] else None,
                sid=(f"system-{seed}-{k}" if k % 2 else 1000 * seed + k) if present["ids"] else None,
                fid=k if present["ids"] else None,
                info={"source": "random", "k": k, "level": [1, 2], "vec": np.arange(3.0) * k} if k % 3 == 0 else {},
            )
        )
    return out


def _python(x):
    return x.item() if isinstance(x, np.generic) else x


def _same_value(x, y) -> bool:
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        return np.array_equal(x, y)
    return x == y


def assert_same_structure(
    a: Structure,
    b: Structure,
    *,
    tolerance: dict[str, float] | None = None,
    info: bool = True,
    exact_types: bool = False,
) -> None:
    """``b`` holds what ``a`` holds: every field, ``info`` too unless ``info=False``.

    A field missing on one side must be missing on the other; arrays keep their dtype and shape. Floats must be
    equal, or within ``tolerance[name]`` (absolute plus relative) for the fields it names (text formats print
    fewer digits, OC20 files store float32: :data:`FLOAT32`). sid and fid keep their kind (``"17"`` is not ``17``,
    a numpy integer counts as an int); with ``exact_types`` every scalar keeps its exact type (a store that
    promises exact round trips).
    """
    tolerance = tolerance or {}
    for name in FIELDS if info else FIELDS[:-1]:
        x, y = getattr(a, name), getattr(b, name)
        if name == "info":
            assert x.keys() == y.keys(), f"info keys {sorted(x)} != {sorted(y)}"
            for key, value in x.items():
                assert _same_value(value, y[key]), f"info[{key!r}]: {value!r} != {y[key]!r}"
            continue
        assert (x is None) == (y is None), f"{name}: {x!r} vs {y!r}"
        if x is None:
            continue
        tol = tolerance.get(name, 0.0)
        if isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray) and x.dtype == y.dtype and x.shape == y.shape, f"{name}: {y!r}"
            if tol:
                np.testing.assert_allclose(y, x, rtol=tol, atol=tol, err_msg=name)
            else:
                np.testing.assert_array_equal(y, x, err_msg=name)
        else:
            same = abs(y - x) <= tol * (1 + abs(x)) if tol else x == y
            assert same, f"{name}: {x!r} != {y!r}"
            if exact_types or name in ("sid", "fid"):
                kinds = (type(x), type(y)) if exact_types else (type(_python(x)), type(_python(y)))
                assert kinds[0] is kinds[1], f"{name}: {type(x).__name__} became {type(y).__name__}"


# ---- hostile files: read in a fresh process, with its peak memory and time ---------------------------------
#: what reading a hostile file may cost a fresh process, imports included
PEAK_MB = 300
SECONDS = 60

_READ_ALL = """
import json, resource, time
t = time.perf_counter()
from mlip_datasets.errors import DataError
from mlip_datasets.io import open_dataset
errors, n = [], None
try:
    with open_dataset({path!r}) as ds:
        n = len(ds)
        for i in range(n):
            try:
                ds[i]
            except DataError as err:
                errors.append(str(err))
except DataError as err:
    errors.append(str(err))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
try:  # Linux carries ru_maxrss over from the forking pytest process; VmHWM is this image's own peak
    peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
except (OSError, IndexError):
    pass
print(json.dumps({{"len": n, "errors": errors, "peak_mb": peak, "seconds": time.perf_counter() - t}}))
"""


def read_in_subprocess(path) -> dict:
    """Open ``path`` and read every record in a fresh process: ``len``, ``errors`` (one line each), ``peak_mb`` and
    ``seconds``, asserting both stay under :data:`PEAK_MB` and :data:`SECONDS`."""
    code = _READ_ALL.format(path=str(path))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=SECONDS, env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["peak_mb"] < PEAK_MB and result["seconds"] < SECONDS, result
    return result


def mlip_subprocess(*args) -> subprocess.CompletedProcess:
    """``mlip ARGS...`` in a fresh process (its own memory, real exit code), output wide enough not to wrap."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    cmd = [sys.executable, "-m", "mlip_cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=SECONDS, env=env)


def one_error_line(out: subprocess.CompletedProcess) -> str:
    """The single line mentioning an error in a finished ``mlip`` process, with no traceback."""
    lines = [line for line in out.stderr.splitlines() + out.stdout.splitlines() if "error" in line.lower()]
    assert "Traceback" not in out.stderr and len(lines) == 1, out.stderr + out.stdout
    return lines[0]


def put_aselmdb_values(path, values: dict):
    """Overwrite (or add) keys of an aselmdb file as ASE writes them: dicts, lists and ints as zlib-compressed
    JSON, bytes as they are. Returns ``path``."""
    env = lmdb.open(str(path), subdir=False, map_size=1 << 26, lock=False)
    with env.begin(write=True) as txn:
        for key, value in values.items():
            raw = value if isinstance(value, bytes) else zlib.compress(json.dumps(value).encode())
            txn.put(str(key).encode("ascii"), raw)
    env.close()
    return path
