"""``mlip export``: a trained model as one file that plain ``torch`` loads and runs, without ``mlip`` installed.

Two formats, both ``.pt2`` files traced from the same program (:func:`export_program`):

* ``"aoti"`` (default): an AOTInductor package (``torch._inductor.aoti_compile_and_package``): the graph compiled
  to C++ for this machine's CPU. Needs a C++ compiler when exporting (about a minute per model), none to load;
  tied to the torch version and the CPU architecture. Load with ``torch._inductor.aoti_load_package(path)``.
* ``"program"``: the ``torch.export`` program itself (``torch.export.save``): portable, no compiler anywhere, as
  fast as the Python model. Load with ``torch.export.load(path).module()``.

Contract (both formats; one structure per call, CPU, NequIP/MACE-style: the caller builds the neighbour list)::

    energy, forces, stress = model(positions, numbers, cell, pbc, edge_index, shifts, charge, spin)

    positions   (N, 3)  float64  Cartesian, A
    numbers     (N,)    int64    atomic numbers (elements not in the model give NaN outputs)
    cell        (3, 3)  float64  cell vectors as rows, A (any values when pbc is all False)
    pbc         (3,)    bool
    edge_index  (2, E)  int64    [sender, receiver] pairs within the cutoff, both directions of every pair
    shifts      (E, 3)  float64  integer cell shifts: r_e = positions[receiver] - positions[sender] + shifts @ cell
    charge, spin  ()    float64  total charge and spin multiplicity (no current family reads them)
    ->
    energy      ()      float64  eV
    forces      (N, 3)  model dtype, eV/A, -dE/dpositions
    stress      (3, 3)  model dtype, eV/A^3, (1/V) dE/dstrain (ASE sign: positive under tension); zeros when
                                 no axis is periodic

``N`` and ``E`` are dynamic (any ``N >= 1``, ``E >= 0``). Forces and stress are autograd derivatives traced
into the file. The model's cutoff, elements and dtype are stored in the file as ``mlip_export.json``
(:data:`METADATA_FILE`; for ``"program"`` read it with ``torch.export.load(path, extra_files={name: ""})``,
for ``"aoti"`` it is the package's metadata, ``loader.get_metadata()``).

How: ``torch.export`` cannot trace ``torch.autograd.grad`` itself, so the wrapper (energy plus its autograd
forces and stress) is first traced by ``make_fx`` with symbolic sizes, which records the backward as plain aten
ops, and that graph is exported with dynamic ``N`` and ``E``. The message kernels run on the ``"naive"`` pure
torch backend there (the chunked ``"torch"`` kernels loop over edge chunks, which a trace would unroll for one
size; Triton kernels are GPU-only), and the element lookup skips its Python checks (a NaN guard in the graph
replaces them). The result is checked against the Python model on two inputs of different sizes before the
file is written.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._version import __version__
from .errors import UsageError, require_new_output
from .nn.embedding import MAX_Z

__all__ = [
    "EXPORT_FORMATS",
    "METADATA_FILE",
    "ExportError",
    "ExportReport",
    "DeployedPotential",
    "why_not_exportable",
    "export_program",
    "export_model",
]

#: Artifact formats (module docstring), the default first.
EXPORT_FORMATS = ("aoti", "program")
#: Name of the JSON metadata stored in the artifact.
METADATA_FILE = "mlip_export.json"
#: Version of the input/output contract written into the metadata.
CONTRACT = "mlip-deployed/1"

INPUT_NAMES = ("positions", "numbers", "cell", "pbc", "edge_index", "shifts", "charge", "spin")
OUTPUT_NAMES = ("energy", "forces", "stress")


class ExportError(UsageError):
    """A model that cannot be exported, or an export that failed its check (one line)."""


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_model` wrote."""

    path: str
    format: str
    family: str
    dtype: str
    elements: list[int]
    cutoff: float
    bytes: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _OneStructure:
    """The batch attributes :meth:`Potential.forward` reads, for one structure given as tensors."""

    def __init__(self, numbers, positions, cell, pbc, edge_index, shifts, charge, spin):
        self.numbers, self.positions, self.edge_index, self.shifts = numbers, positions, edge_index, shifts
        self.cell, self.pbc = cell.reshape(1, 3, 3), pbc.reshape(1, 3)
        self.batch = torch.zeros_like(numbers)
        self.natoms = numbers.new_zeros(1)  # only its length (one structure) is read
        self.charge, self.spin = charge.reshape(1), spin.reshape(1)
        self.charge_mask = self.spin_mask = torch.ones(1, dtype=torch.bool, device=numbers.device)


class DeployedPotential(nn.Module):
    """The exported function: one structure's tensors -> ``(energy, forces, stress)`` (module docstring).

    Args:
        model: a :class:`~mlip_cli.models.Potential`; used as it is (:func:`export_program` passes a copy set up
            for tracing).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self,
        positions: torch.Tensor,
        numbers: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
        edge_index: torch.Tensor,
        shifts: torch.Tensor,
        charge: torch.Tensor,
        spin: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        table = self.model.element_table.z_to_index
        safe = numbers.clamp(0, MAX_Z)  # out-of-range numbers become 0, an unknown element
        known = ((table[safe] >= 0) & (safe == numbers)).all()
        batch = _OneStructure(safe, positions, cell, pbc, edge_index, shifts, charge, spin)
        out = self.model(batch, compute_forces=True, compute_stress=True, create_graph=False)
        nan = torch.full((), float("nan"), dtype=torch.float64)
        energy = torch.where(known, out["energy"][0], nan)
        forces = torch.where(known, out["forces"], nan.to(out["forces"].dtype))
        stress = torch.where(known, out["stress"][0], nan.to(out["stress"].dtype))
        return energy, forces, stress


def why_not_exportable(model: nn.Module) -> str | None:
    """Why ``model`` cannot be exported (one line), or None when it can."""
    from .models import Potential, is_ensemble

    if not (isinstance(model, Potential) or is_ensemble(model)):
        return f"not an mlip potential ({type(model).__name__})"
    return None


def _tracing_copy(model: nn.Module) -> nn.Module:
    """A CPU copy of ``model`` set up for symbolic tracing: pure-torch message kernels, no Python input checks."""
    from .nn.conv import EdgeConvolution

    # Weights as constants: the traced forces and stress are explicit ops, and outputs should not require grad.
    from .nn.embedding import ElementTable

    model = copy.deepcopy(model).cpu().eval().requires_grad_(False)
    for module in model.modules():  # every member's, in an ensemble
        if isinstance(module, ElementTable):
            module.check_numbers = False
        if isinstance(module, EdgeConvolution):
            module.backend = "naive"
    if hasattr(model.config, "message_backend"):
        model.config.message_backend = "naive"
    return model


def _example(model: nn.Module, num_atoms: int) -> tuple[torch.Tensor, ...]:
    """Inputs for tracing and checking: ``num_atoms`` atoms of the model's elements within the cutoff, all pairs as
    edges, in a periodic box (so the stress is traced on a real cell)."""
    elements = model.config.elements
    cutoff = float(model.config.cutoff)
    corners = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0.5]], dtype=torch.float64)
    positions = corners[:num_atoms] * (0.35 * cutoff) + 0.01 * torch.arange(num_atoms * 3).reshape(-1, 3)
    numbers = torch.tensor([elements[i % len(elements)] for i in range(num_atoms)], dtype=torch.long)
    pairs = [(i, j) for i in range(num_atoms) for j in range(num_atoms) if i != j]
    edge_index = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2).T.contiguous()
    shifts = torch.zeros(edge_index.shape[1], 3, dtype=torch.float64)
    cell = torch.eye(3, dtype=torch.float64) * (3.0 * cutoff)
    pbc = torch.ones(3, dtype=torch.bool)
    scalar = torch.zeros((), dtype=torch.float64)
    return positions, numbers, cell, pbc, edge_index, shifts, scalar, scalar + 1.0


def _dynamic_shapes() -> tuple:
    atoms, edges = torch.export.Dim("num_atoms", min=1), torch.export.Dim("num_edges", min=0)
    return ({0: atoms}, {0: atoms}, None, None, {1: edges}, {0: edges}, None, None)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]


def export_program(model: nn.Module) -> torch.export.ExportedProgram:
    """The ``torch.export`` program of :class:`DeployedPotential` around ``model``, dynamic in ``N`` and ``E``.

    Raises:
        ExportError: the model cannot be exported or traced (one line saying why).
    """
    import torch.fx.experimental._config as fx_config
    from torch.fx.experimental.proxy_tensor import make_fx

    why = why_not_exportable(model)
    if why:
        raise ExportError(f"cannot export this model: {why}")
    deployed = DeployedPotential(_tracing_copy(model))
    example = _example(model, 5)  # 5 atoms, 20 edges: sizes distinct from the fixed 2 and 3
    try:
        # backed_size_oblivious: sizes 0 and 1 are not special-cased, so one trace holds for N = 1 and E = 0.
        with fx_config.patch(backed_size_oblivious=True):
            graph = make_fx(deployed, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*example)
            return torch.export.export(graph, example, dynamic_shapes=_dynamic_shapes(), strict=False)
    except Exception as err:  # tracing errors come from deep inside torch; the first line says what failed
        raise ExportError(f"cannot export family {model.family!r}: {_first_line(err)}") from err


def _check(run, model: nn.Module) -> None:
    """``run`` (the exported function) against the Python model on two structures of different sizes."""
    reference = DeployedPotential(_tracing_copy(model))
    tol = 1e-8 if model.dtype == torch.float64 else 1e-3
    for num_atoms in (5, 3):
        inputs = _example(model, num_atoms)
        expected = reference(*inputs)
        got = run(*inputs)
        for name, a, b in zip(OUTPUT_NAMES, expected, got):
            scale = float(a.abs().max()) if a.numel() else 0.0
            err = float((a - b).abs().max()) if a.numel() else 0.0
            if not err <= tol * max(scale, 1.0):
                raise ExportError(
                    f"the exported {name} differs from the Python model's by {err:.2g} on {num_atoms} atoms; "
                    "not written"
                )


def _metadata(model: nn.Module, fmt: str) -> dict[str, Any]:
    return {
        "contract": CONTRACT,
        "format": fmt,
        "mlip_version": __version__,
        "torch_version": torch.__version__,
        "family": model.family,
        "ensemble": int(model.config.ensemble),  # > 1: the outputs are the members' mean
        "elements": [int(z) for z in model.config.elements],
        "cutoff": float(model.config.cutoff),
        "dtype": str(model.dtype).removeprefix("torch."),
        "inputs": list(INPUT_NAMES),
        "outputs": list(OUTPUT_NAMES),
        "shifts": "integer cell shifts: r_e = positions[edge_index[1]] - positions[edge_index[0]] + shifts @ cell",
        "stress": "(3, 3) eV/A^3, ASE sign (positive under tension); zeros without periodic axes",
    }


def _write(program: torch.export.ExportedProgram, model: nn.Module, fmt: str, path: Path) -> None:
    """Write ``path`` in ``fmt`` after checking the artifact as it will be loaded (a temporary file first)."""
    metadata = _metadata(model, fmt)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".pt2", dir=path.parent)
    os.close(fd)
    try:
        if fmt == "program":
            torch.export.save(program, tmp, extra_files={METADATA_FILE: json.dumps(metadata)})
            run = torch.export.load(tmp).module()
        else:
            # AOTInductor metadata values must be strings: the JSON document under one key.
            options = {"aot_inductor.metadata": {METADATA_FILE: json.dumps(metadata)}}
            inductor_log = logging.getLogger("torch._inductor")
            level = inductor_log.level
            inductor_log.setLevel(logging.ERROR)  # e.g. "_linalg_det is missing a c-shim" (it runs, via a fallback)
            try:
                torch._inductor.aoti_compile_and_package(program, package_path=tmp, inductor_configs=options)
            except Exception as err:
                raise ExportError(
                    f"AOTInductor compilation failed ({_first_line(err)}); --format program needs no compiler"
                ) from err
            finally:
                inductor_log.setLevel(level)
            run = torch._inductor.aoti_load_package(tmp)
        _check(run, model)
        os.replace(tmp, path)
    except OSError as err:
        raise ExportError(f"{path}: cannot write the export ({err.strerror or err}); nothing was written") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def export_model(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    fmt: str = "aoti",
    dtype: str | torch.dtype | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Export the model of ``checkpoint`` (EMA weights when present) to ``out`` (module docstring).

    Args:
        checkpoint: a ``.pt`` checkpoint or run directory (:func:`~mlip_cli.checkpoint.load_model`).
        out: the file to write (``.pt2``); written only once it loads and matches the Python model.
        fmt: ``"aoti"`` or ``"program"`` (:data:`EXPORT_FORMATS`).
        dtype: float32/float64 of the exported model (default: the checkpoint's).
        overwrite: replace ``out`` if it exists.

    Raises:
        UsageError: bad ``fmt``, ``out`` exists without ``overwrite`` or its folder does not.
        ExportError: the model cannot be exported, or the export failed its check.
    """
    from .checkpoint import load_model

    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    path = Path(out)
    if path.is_dir():
        raise UsageError(f"{path} is a directory; give the file to write (e.g. model.pt2)")
    require_new_output(path, overwrite)
    if not path.parent.is_dir():
        raise UsageError(f"{path.parent} is not a directory")
    start = time.perf_counter()
    model = load_model(checkpoint, device="cpu", dtype=dtype)
    with warnings.catch_warnings():  # torch's own deprecation notices from inside export and compile
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        program = export_program(model)
        _write(program, model, fmt, path)
    return ExportReport(
        path=str(path),
        format=fmt,
        family=model.family,
        dtype=str(model.dtype).removeprefix("torch."),
        elements=[int(z) for z in model.config.elements],
        cutoff=float(model.config.cutoff),
        bytes=path.stat().st_size,
        seconds=time.perf_counter() - start,
    )
