"""MACE side of the acetylacetone training benchmark: train a MACE model under a wall-clock budget, report test RMSEs.

Runs in MACE's own virtual environment (mace-torch pins e3nn 0.4.4) and does not import mlip. The model is
`mace.modules.ScaleShiftMACE` built with the arguments `mace_run_train --model MACE --num_channels 32 --max_L 1
--num_interactions 2 --r_max 5 --correlation 3` would use; data go through MACE's `AtomicData` and its
torch_geometric `Batch`. The training loop is our own so that the protocol (split, E0s, loss, optimiser,
schedule, EMA, validation, budget, timing) is the one `mlip train` uses; see benchmarks/acac/README.md.

    /work/venvs/mace/bin/python benchmarks/acac/mace_train.py --threads 1 --time-budget 1200 --out mace.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import ase.io
import numpy as np
import torch

# e3nn 0.4.4 and MACE's TorchScript annotations warn on every import under torch 2.13; the warnings are harmless.
warnings.filterwarnings("ignore", category=UserWarning)
import e3nn  # noqa: E402
import mace  # noqa: E402
from e3nn import o3  # noqa: E402
from mace import data as mdata  # noqa: E402
from mace import modules  # noqa: E402
from mace.tools import torch_geometric  # noqa: E402
from mace.tools.utils import AtomicNumberTable  # noqa: E402

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "acac"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-file", type=Path, default=DATA / "train_300K.xyz")
    p.add_argument("--test-file", type=Path, default=DATA / "test_MD_300K.xyz")
    p.add_argument("--n-train", type=int, default=450, help="first N of the permuted frames train; the rest validate")
    p.add_argument(
        "--split",
        help="train,valid[,test] fractions of --train-file instead of --n-train, drawn as mlip's data.split is "
        "(mlip_datasets.split.split_indices without groups); with three parts the third is the test set and "
        "--test-file is not read",
    )
    p.add_argument(
        "--e0s-file",
        type=Path,
        help="extxyz of isolated atoms (one atom per frame, its energy): E0s from it instead of least squares",
    )
    p.add_argument(
        "--extra-test",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="also score the best model on this extxyz (repeatable); reported under test_extra[NAME]",
    )
    p.add_argument("--save-model", type=Path, help="torch.save the best EMA model here (MACECalculator loads it)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of numpy.random.default_rng(...).permutation")
    p.add_argument("--batch-size", type=int, default=5)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--energy-weight", type=float, default=1.0)
    p.add_argument("--forces-weight", type=float, default=10.0)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--clip-norm", type=float, default=10.0)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--final-lr-fraction", type=float, default=0.01)
    p.add_argument("--ema-decay", type=float, default=0.99, help="d = min(decay, (1+n)/(10+n)) at update n")
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument(
        "--select-by",
        choices=["loss", "forces"],
        default="loss",
        help="best EMA weights by validation loss (w_E*RMSE_E/atom^2 + w_F*RMSE_F^2, as mlip train) "
        "or by validation force RMSE",
    )
    p.add_argument("--max-nan-steps", type=int, default=5, help="abort after this many non-finite steps in a row")
    p.add_argument("--time-budget", type=float, default=1200.0, help="seconds of training (validation excluded)")
    p.add_argument("--eval-batch-size", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    # Model size (MACE CLI names); everything else is MACE's CLI default.
    p.add_argument("--num-channels", type=int, default=32)
    p.add_argument("--max-L", type=int, default=1)
    p.add_argument("--num-interactions", type=int, default=2)
    p.add_argument("--r-max", type=float, default=5.0)
    p.add_argument("--correlation", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("results.json"))
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------- data and stats


def read_frames(path: Path) -> list[dict]:
    """Frames of an extxyz file as dicts: numbers [N], positions [N,3], energy (float64 eV), forces [N,3]."""
    frames = []
    for i, atoms in enumerate(ase.io.read(path, ":")):
        calc = atoms.calc.results if atoms.calc is not None else {}
        energy = calc.get("energy", atoms.info.get("energy"))
        forces = calc.get("forces", atoms.arrays.get("forces"))
        if energy is None or forces is None:
            sys.exit(f"mace_train: error: {path} frame {i} has no energy or forces")
        frames.append(
            {
                "numbers": atoms.numbers.copy(),
                "positions": atoms.positions.copy(),
                "pbc": atoms.pbc.copy(),
                "cell": np.array(atoms.cell),
                "energy": float(energy),
                "forces": np.asarray(forces, float),
            }
        )
    return frames


def read_isolated(path: Path) -> dict[int, float]:
    """Atomic number -> energy of the one-atom frames of an extxyz file (energy in the info line or results)."""
    energies = {}
    for atoms in ase.io.read(path, ":"):
        if len(atoms) == 1:
            calc = atoms.calc.results if atoms.calc is not None else {}
            energies[int(atoms.numbers[0])] = float(calc.get("energy", atoms.info.get("energy")))
    return energies


def split_parts(n: int, fractions: list[float], seed: int) -> list[np.ndarray]:
    """The index sets of mlip's ``data.split`` (mlip_datasets.split.split_indices without groups), written out here
    because this script runs in MACE's venv, which has no mlip."""
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.round(np.cumsum(fractions) * n).astype(int)
    bounds[-1] = n
    return [np.sort(part) for part in np.split(order, bounds[:-1])]


def fit_statistics(train: list[dict], elements: list[int], isolated: dict[int, float] | None = None) -> dict:
    """E0s (``isolated`` atom energies, else least squares of energy on element counts), mean per-atom interaction
    energy, RMS force component."""
    counts = np.array([[np.sum(f["numbers"] == z) for z in elements] for f in train], dtype=float)  # [S, Z]
    energies = np.array([f["energy"] for f in train])
    if isolated:
        missing = [z for z in elements if z not in isolated]
        if missing:
            sys.exit(f"mace_train: error: no isolated-atom energy for elements {missing}")
        e0s = np.array([isolated[z] for z in elements])
    else:
        e0s, *_ = np.linalg.lstsq(counts, energies, rcond=None)  # minimum-norm solution when rank deficient
    natoms = counts.sum(axis=1)
    shift = float(np.mean((energies - counts @ e0s) / natoms))
    scale = float(np.sqrt(np.mean(np.concatenate([f["forces"].ravel() for f in train]) ** 2)))
    return {"elements": elements, "e0s": e0s.tolist(), "shift": shift, "scale": scale}


def to_atomic_data(frames: list[dict], z_table, r_max: float) -> list:
    """MACE AtomicData graphs (built once, as MACE's own training does) in torch's default dtype."""
    graphs = []
    for f in frames:
        config = mdata.Configuration(
            atomic_numbers=f["numbers"],
            positions=f["positions"],
            properties={"energy": f["energy"], "forces": f["forces"]},
            property_weights={"energy": 1.0, "forces": 1.0},
            cell=f["cell"],
            pbc=tuple(bool(x) for x in f["pbc"]),
        )
        graphs.append(mdata.AtomicData.from_config(config, z_table=z_table, cutoff=r_max))
    return graphs


def collate(graphs: list, indices) -> dict:
    """One batch dict for the model from MACE's torch_geometric Batch."""
    return torch_geometric.Batch.from_data_list([graphs[i] for i in indices]).to_dict()


# ------------------------------------------------------------------------------------------------------ model


def build_model(args: argparse.Namespace, stats: dict, avg_num_neighbors: float) -> torch.nn.Module:
    """ScaleShiftMACE with the arguments of `mace_run_train --model MACE` at the given size, except the shift:
    the protocol's mean per-atom interaction energy instead of MACE's 0 (`--model MACE` hard-codes shift 0)."""
    hidden = o3.Irreps((args.num_channels * o3.Irreps.spherical_harmonics(args.max_L)).sort()[0].simplify())
    return modules.ScaleShiftMACE(
        r_max=args.r_max,
        num_bessel=8,
        num_polynomial_cutoff=5,
        max_ell=3,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        # --model MACE replaces the residual first block by the plain one.
        interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
        num_interactions=args.num_interactions,
        num_elements=len(stats["elements"]),
        hidden_irreps=hidden,
        edge_irreps=None,
        atomic_energies=np.array(stats["e0s"]),
        apply_cutoff=True,
        avg_num_neighbors=avg_num_neighbors,
        atomic_numbers=stats["elements"],
        use_reduced_cg=False,
        use_so3=False,
        use_edge_irreps_first=False,
        cueq_config=None,
        pair_repulsion=False,
        distance_transform="None",
        correlation=args.correlation,
        gate=modules.gate_dict["silu"],
        MLP_irreps=o3.Irreps("16x0e"),
        atomic_inter_scale=stats["scale"],
        atomic_inter_shift=stats["shift"],
        radial_MLP=[64, 64, 64],
        radial_type="bessel",
        heads=["Default"],
        embedding_specs=None,
        use_embedding_readout=False,
        use_last_readout_only=False,
        use_agnostic_product=False,
    )


# ------------------------------------------------------------------------------------------- train and evaluate


def lr_factor(step: int, progress: float, args: argparse.Namespace) -> float:
    """Linear warmup over the first steps times cosine decay to final_lr_fraction at progress = elapsed/budget = 1."""
    warm = min(1.0, (step + 1) / args.warmup_steps) if args.warmup_steps > 0 else 1.0
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return warm * (args.final_lr_fraction + (1.0 - args.final_lr_fraction) * cosine)


def interaction_targets(frames: list[dict], stats: dict) -> np.ndarray:
    """E_ref - sum(E0) per frame in float64: the model's E0 sum is a constant, so comparing interaction energies
    gives the same error as comparing totals without float32 rounding of ~-9400 eV totals (ulp ~1 meV). [S]"""
    e0 = dict(zip(stats["elements"], stats["e0s"]))
    return np.array([f["energy"] - sum(e0[int(z)] for z in f["numbers"]) for f in frames])


def evaluate(model, graphs: list, frames: list[dict], targets: np.ndarray, batch_size: int) -> dict:
    """Energy (meV per structure and per atom) and force (meV/A) RMSE and MAE of ``model`` on ``frames``."""
    de, de_atom, df = [], [], []
    for start in range(0, len(graphs), batch_size):
        idx = list(range(start, min(start + batch_size, len(graphs))))
        out = model(collate(graphs, idx), training=False, compute_force=True)
        e = out["interaction_energy"].detach().double().numpy() - targets[idx]
        n = np.array([len(frames[i]["numbers"]) for i in idx])
        de.append(e)
        de_atom.append(e / n)
        df.append(
            out["forces"].detach().double().numpy().ravel() - np.concatenate([frames[i]["forces"].ravel() for i in idx])
        )
    de, de_atom, df = (np.concatenate(x) * 1000.0 for x in (de, de_atom, df))
    rmse = lambda x: float(np.sqrt(np.mean(x**2)))  # noqa: E731
    mae = lambda x: float(np.mean(np.abs(x)))  # noqa: E731
    return {
        "energy_rmse_meV": rmse(de),
        "energy_rmse_meV_per_atom": rmse(de_atom),
        "forces_rmse_meV_per_A": rmse(df),
        "energy_mae_meV": mae(de),
        "energy_mae_meV_per_atom": mae(de_atom),
        "forces_mae_meV_per_A": mae(df),
        "structures": len(graphs),
    }


def train(args, model, graphs, frames, targets, val_graphs, val_frames, val_targets) -> dict:
    """The protocol's loop; returns timings, the validation curve and the best EMA state (``--select-by``)."""
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)
    ema_params, params = list(ema.parameters()), list(model.parameters())
    rng = np.random.default_rng(args.seed)
    targets_t = torch.tensor(targets, dtype=torch.get_default_dtype())
    natoms_t = torch.tensor([len(f["numbers"]) for f in frames], dtype=torch.get_default_dtype())

    step, structures, train_s, val_s, skipped, nan_streak = 0, 0, 0.0, 0.0, 0, 0
    data_ms, compute_ms, curve = [], [], []
    best = {"metric": math.inf}
    order, cursor = rng.permutation(len(graphs)), 0

    def validate():
        nonlocal val_s, best
        start = time.perf_counter()
        metrics = evaluate(ema, val_graphs, val_frames, val_targets, args.eval_batch_size)
        # selection metric in eV units, as mlip train's validation loss
        metric = args.forces_weight * (metrics["forces_rmse_meV_per_A"] / 1000) ** 2
        if args.select_by == "loss":
            metric += args.energy_weight * (metrics["energy_rmse_meV_per_atom"] / 1000) ** 2
        curve.append({"step": step, "train_s": train_s, "metric": metric, **metrics})
        if metric < best["metric"]:
            best = {**metrics, "metric": metric, "step": step, "state": copy.deepcopy(ema.state_dict())}
        val_s += time.perf_counter() - start
        print(
            f"step {step:6d}  train {train_s:7.1f} s  val E {metrics['energy_rmse_meV']:8.2f} meV  "
            f"F {metrics['forces_rmse_meV_per_A']:8.2f} meV/A",
            flush=True,
        )

    while train_s < args.time_budget:
        t0 = time.perf_counter()
        if cursor >= len(order):  # new epoch, reshuffled
            order, cursor = rng.permutation(len(graphs)), 0
        idx = order[cursor : cursor + args.batch_size]
        cursor += args.batch_size
        batch = collate(graphs, idx)
        t1 = time.perf_counter()

        for group in opt.param_groups:
            group["lr"] = args.lr * lr_factor(step, train_s / args.time_budget, args)
        out = model(batch, training=True, compute_force=True)
        e_err = (out["interaction_energy"] - targets_t[idx]) / natoms_t[idx]
        f_err = out["forces"] - batch["forces"]
        loss = args.energy_weight * e_err.pow(2).mean() + args.forces_weight * f_err.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        ok = bool(torch.isfinite(loss))
        if ok:
            loss.backward()
            ok = bool(torch.isfinite(torch.nn.utils.clip_grad_norm_(params, args.clip_norm)))
        if ok:
            opt.step()
            # EMA with mlip's ramp: ema = d * ema + (1 - d) * weights, d = min(decay, (1 + n) / (10 + n))
            d = min(args.ema_decay, (2 + step) / (11 + step))
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1.0 - d)
        t2 = time.perf_counter()

        train_s += t2 - t0
        if not ok:  # skip the step, as mlip train does
            skipped, nan_streak = skipped + 1, nan_streak + 1
            opt.zero_grad(set_to_none=True)
            if nan_streak >= args.max_nan_steps:
                sys.exit(f"mace_train: error: {nan_streak} steps in a row had a NaN/inf loss or gradient")
            continue
        nan_streak = 0
        data_ms.append((t1 - t0) * 1e3)
        compute_ms.append((t2 - t1) * 1e3)
        step += 1
        structures += len(idx)
        if step % args.val_every == 0:
            validate()
    if not curve or curve[-1]["step"] != step:
        validate()

    tail = slice(10, None) if step > 10 else slice(None)
    total_ms = [d + c for d, c in zip(data_ms, compute_ms)]
    return {
        "steps": step,
        "epochs": structures / len(graphs),
        "structures": structures,
        "train_s": train_s,
        "validation_s": val_s,
        "structures_per_s": structures / train_s,
        "median_step_ms": statistics.median(total_ms[tail]),
        "median_data_ms": statistics.median(data_ms[tail]),
        "median_compute_ms": statistics.median(compute_ms[tail]),
        "data_s": sum(data_ms) / 1e3,
        "compute_s": sum(compute_ms) / 1e3,
        "mean_compute_ms": statistics.fmean(compute_ms),
        "skipped_steps": skipped,
        "final_loss": loss.item(),
        "validation_curve": curve,
        "best": best,
    }


# ----------------------------------------------------------------------------------------------------- main


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "e3nn": e3nn.__version__,
        "mace": mace.__version__,
        "numpy": np.__version__,
        "ase": ase.__version__,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(getattr(torch, args.dtype))
    torch.manual_seed(args.seed)

    start = time.perf_counter()
    frames = read_frames(args.train_file)
    if args.split:
        parts = split_parts(len(frames), [float(x) for x in args.split.split(",")], args.split_seed)
        train_frames, val_frames = ([frames[i] for i in part] for part in parts[:2])
        test_frames = [frames[i] for i in parts[2]] if len(parts) == 3 else read_frames(args.test_file)
    else:
        perm = np.random.default_rng(args.split_seed).permutation(len(frames))
        train_frames = [frames[i] for i in perm[: args.n_train]]
        val_frames = [frames[i] for i in perm[args.n_train :]]
        test_frames = read_frames(args.test_file)
    elements = sorted({int(z) for f in frames + test_frames for z in f["numbers"]})
    isolated = read_isolated(args.e0s_file) if args.e0s_file else None
    stats = fit_statistics(train_frames, elements, isolated)
    z_table = AtomicNumberTable(elements)
    graphs, val_graphs, test_graphs = (
        to_atomic_data(f, z_table, args.r_max) for f in (train_frames, val_frames, test_frames)
    )
    # MACE normalises messages by the mean number of neighbours of the training graphs.
    avg_num_neighbors = sum(g.edge_index.shape[1] for g in graphs) / sum(g.num_nodes for g in graphs)
    targets, val_targets, test_targets = (
        interaction_targets(f, stats) for f in (train_frames, val_frames, test_frames)
    )
    prep_s = time.perf_counter() - start

    model = build_model(args, stats, avg_num_neighbors)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(
        f"MACE {args.num_channels} channels, max_L {args.max_L}, {args.num_interactions} interactions: "
        f"{n_params:,} parameters; {len(graphs)} train / {len(val_graphs)} val / {len(test_graphs)} test; "
        f"avg neighbours {avg_num_neighbors:.2f}; {args.dtype}, {args.threads} thread(s)",
        flush=True,
    )

    result = train(args, model, graphs, train_frames, targets, val_graphs, val_frames, val_targets)
    best = result.pop("best")
    model.load_state_dict(best.pop("state"))
    if args.save_model:
        args.save_model.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model, args.save_model)
    start = time.perf_counter()
    test = evaluate(model, test_graphs, test_frames, test_targets, args.eval_batch_size)
    test_s = time.perf_counter() - start
    test_extra = {}
    for spec in args.extra_test:
        name, _, path = spec.partition("=")
        extra = read_frames(Path(path))
        extra_graphs = to_atomic_data(extra, z_table, args.r_max)
        test_extra[name] = evaluate(model, extra_graphs, extra, interaction_targets(extra, stats), args.eval_batch_size)

    report = {
        "model": "mace",
        "parameters": n_params,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "statistics": stats,
        "avg_num_neighbors": avg_num_neighbors,
        "data_prep_s": prep_s,
        "training": result,
        "best_validation": best,
        "test": test,
        "test_s": test_s,
        "test_extra": test_extra,
        "versions": versions(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "load_average": os.getloadavg(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(args.out)
    print(
        f"\nsteps {result['steps']}  epochs {result['epochs']:.1f}  train {result['train_s']:.1f} s  "
        f"validation {result['validation_s']:.1f} s"
    )
    print(
        f"step {result['median_step_ms']:.1f} ms (data {result['median_data_ms']:.1f} + compute "
        f"{result['median_compute_ms']:.1f})  {result['structures_per_s']:.1f} structures/s"
    )
    print(
        f"test (best EMA, step {best['step']}): E RMSE {test['energy_rmse_meV']:.2f} meV "
        f"({test['energy_rmse_meV_per_atom']:.3f} meV/atom)  F RMSE {test['forces_rmse_meV_per_A']:.2f} meV/A"
        f"  -> {args.out}"
    )


if __name__ == "__main__":
    main()
