"""Ensembles (issue 15): their cost, their calibration away from the training data, and active learning.

Three parts, each writing its own JSON under ``benchmarks/results/``:

``steps``        training step time of an acac ``tdn`` (the acac/tdn recipe's model: 32 channels, L = 1, 2
                 interactions, batch 5) as one ensemble of K = 1, 4, 8 members against K separate models trained
                 one after another (each a run of its own), and the energy+forces time of the ensemble on one
                 batch; on a quiet machine (the load average is recorded).
``calibration``  an ensemble trained on acac ``train_300K.xyz`` (recipes/acac/tdn-ensemble.yaml) scored on
                 ``test_MD_300K.xyz`` and on the hotter ``train_600K.xyz`` (structures its training data does
                 not cover): per-structure Spearman correlation of predicted uncertainty and actual force
                 error, Gaussian NLL, and the actual force error of the 50 structures ``mlip select`` picks
                 from the 600 K pool against 50 random picks (20 draws).
``active``       an active-learning loop on EMT data (labels are free): from 50 labelled structures, add 50 per
                 round picked by ``mlip select`` or at random, 5 rounds, retraining an ensemble each round; test
                 force error against labelled structures for both, plotted.

    python benchmarks/bench_ensemble.py steps --threads 2
    python benchmarks/bench_ensemble.py calibration --model RUN_DIR
    python benchmarks/bench_ensemble.py active --work bench_out/active
    python benchmarks/bench_ensemble.py steps --quick     # a few steps: checks it runs
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import load_average, provenance, write_report  # noqa: E402  (benchmarks/report.py)

ROOT = Path(__file__).resolve().parents[1]
ACAC = ROOT.parent / "shared" / "data" / "acac"
RESULTS = ROOT / "benchmarks" / "results"
ACAC_MODEL = {"family": "tdn", "cutoff": 5.0, "channels": 32, "lmax": 1, "num_interactions": 2}


# ------------------------------------------------------------------------------------------------ steps
def _train(recipe: dict, run_dir: Path) -> dict:
    """Train ``recipe`` into ``run_dir``; seconds of compute per step (data loading excluded) and in all."""
    import csv

    from mlip_cli.train import Recipe, run_training

    result = run_training(Recipe.from_dict(recipe), run_dir)
    with open(run_dir / "metrics.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    return {"steps": result.steps, "compute_s": float(last["compute_s"]), "elapsed_s": float(last["elapsed_s"])}


def _acac_recipe(members: int, steps: int, seed: int, threads: int) -> dict:
    return {
        "name": f"ensemble-{members}",
        "model": {**ACAC_MODEL, "ensemble": members},
        "data": {"train": str(ACAC / "train_300K.xyz"), "split": [0.9, 0.1], "batch_size": 5, "max_valid": 5},
        "loss": {"energy": 1.0, "forces": 10.0},
        "optim": {"lr": 5e-3, "warmup_steps": 10},
        "run": {"max_steps": steps, "valid_every": steps, "seed": seed, "threads": threads, "dtype": "float32"},
    }


def _predict_ms(run_dir: Path, repeats: int) -> float:
    """Energy+forces time (ms) of the trained model on one batch of 5 acac frames (eval mode)."""
    from ase.io import read

    from mlip_cli.checkpoint import load_model
    from mlip_datasets.graph import collate_graphs, structure_to_graph
    from mlip_datasets.record import Structure

    model = load_model(run_dir / "last.pt")
    frames = read(ACAC / "test_MD_300K.xyz", ":5")
    batch = collate_graphs([structure_to_graph(Structure.from_atoms(a), model.cutoff, model.dtype) for a in frames])
    model(batch)
    start = time.perf_counter()
    for _ in range(repeats):
        model(batch)
    return 1000 * (time.perf_counter() - start) / repeats


def steps(args) -> None:
    import shutil

    import torch

    torch.set_num_threads(args.threads)
    load_before = load_average()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    n = 6 if args.quick else args.steps
    rows = []
    for k in (1, 4, 8):
        one = _train(_acac_recipe(k, n, 0, args.threads), work / f"ensemble{k}")
        separate = (
            [one]
            if k == 1
            else [_train(_acac_recipe(1, n, s, args.threads), work / f"single{k}_{s}") for s in range(k)]
        )
        row = {
            "members": k,
            "ensemble_step_ms": 1000 * one["compute_s"] / one["steps"],
            "separate_step_ms": 1000 * sum(r["compute_s"] for r in separate) / n,
            "ensemble_predict_ms": _predict_ms(work / f"ensemble{k}", 3 if args.quick else 50),
        }
        rows.append(row)
        print(row, flush=True)
    base = rows[0]["ensemble_step_ms"]
    for row in rows:
        row["ensemble_vs_one_member"] = row["ensemble_step_ms"] / base
        row["separate_vs_one_member"] = row["separate_step_ms"] / base
        row["predict_vs_one_member"] = row["ensemble_predict_ms"] / rows[0]["ensemble_predict_ms"]
    report = {
        "benchmark": "ensemble training step and prediction time against separate models",
        "provenance": provenance(
            threads=args.threads,
            dtype="float32",
            sizes={"model": ACAC_MODEL, "batch_structures": 5, "atoms_per_structure": 15, "steps_per_run": n},
            load_before=load_before,
        ),
        "goal": "K = 8 members cost at most 2.5x one member per training step",
        "rows": rows,
    }
    lines = ["| members | ensemble step (ms) | x one member | K separate (ms) | x one member | predict x one |"]
    lines.append("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        lines.append(
            f"| {r['members']} | {r['ensemble_step_ms']:.1f} | {r['ensemble_vs_one_member']:.2f} | "
            f"{r['separate_step_ms']:.1f} | {r['separate_vs_one_member']:.2f} | {r['predict_vs_one_member']:.2f} |"
        )
    if not args.quick:
        write_report(
            Path(args.out or RESULTS / f"bench_ensemble_steps_threads{args.threads}.json"), report, "\n".join(lines)
        )
    else:
        print("\n".join(lines))


# ------------------------------------------------------------------------------------------------ calibration
def _evaluate(model, path: Path):
    from mlip_cli.evaluation import evaluate_model, open_graphs

    return evaluate_model(model, open_graphs(path, model.cutoff, model.dtype), batch_size=20, rotations=0)


def calibration(args) -> None:
    import torch
    from ase.io import read, write

    from mlip_cli.checkpoint import load_model
    from mlip_cli.select import select_file
    from mlip_cli.uncertainty import plot_calibration

    torch.set_num_threads(args.threads)
    load_before = load_average()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)
    sets = {"test_300K": ACAC / "test_MD_300K.xyz", "hot_600K": ACAC / "train_600K.xyz"}
    both = work / "test_300K_and_hot_600K.extxyz"
    write(both, read(sets["test_300K"], ":") + read(sets["hot_600K"], ":"))
    sets["both"] = both
    rows = {}
    reports = {}
    for name, path in sets.items():
        report = _evaluate(model, path)
        reports[name] = report
        c = report.calibration
        rows[name] = {
            "structures": report.structures,
            "forces_rmse": report.metrics["forces_rmse"],
            "forces_mae": report.metrics["forces_mae"],
            "energy_per_atom_rmse": report.metrics["energy_per_atom_rmse"],
            **{k: v for k, v in c.as_dict().items() if k not in ("curve",)},
            "mean_structure_uncertainty": float(np.mean(c.structure_uncertainty)),
        }
        print(name, rows[name], flush=True)
        plot_calibration(c, RESULTS / f"bench_ensemble_calibration_{name}.png", title=f"acac ensemble, {name}")
    # selection from the hot pool: the true force error of the picks against random picks of the same size
    hot = reports["hot_600K"].calibration.structure_force_rmse  # eV/A, in file order
    picked = select_file(model, sets["hot_600K"], work / "picked.extxyz", args.n, overwrite=True).picked
    picked_rmse = 1000 * hot[[p.index for p in picked]]
    rng = np.random.default_rng(0)
    random_means = [1000 * float(np.mean(hot[rng.choice(len(hot), args.n, replace=False)])) for _ in range(20)]
    selection = {
        "pool": "hot_600K",
        "n": args.n,
        "picked_mean_force_rmse": float(np.mean(picked_rmse)),
        "random_mean_force_rmse": float(np.mean(random_means)),
        "random_mean_force_rmse_std": float(np.std(random_means)),
        "pool_mean_force_rmse": 1000 * float(np.mean(hot)),
        "picked_in_worst_tenth": int(np.sum(picked_rmse >= 1000 * np.quantile(hot, 0.9))),
    }
    print(selection, flush=True)
    report = {
        "benchmark": "ensemble calibration away from the training data (acac 300 K model on 600 K frames)",
        "provenance": provenance(
            threads=args.threads,
            dtype=str(model.dtype).removeprefix("torch."),
            sizes={"members": model.num_members, "model": str(args.model), **{k: rows[k]["structures"] for k in rows}},
            load_before=load_before,
        ),
        "goal": "Spearman of per-structure predicted uncertainty against actual force error at least 0.5",
        "sets": rows,
        "selection": selection,
    }
    write_report(Path(args.out or RESULTS / "bench_ensemble_calibration.json"), report)


# ------------------------------------------------------------------------------------------------ active
#: Pool composition (share of the pool) and the test set (50 of each kind): the pool is mostly near-equilibrium
#: bulk, so random picks rarely see the kinds a uniform test set weighs equally.
POOL_KINDS = {"bulk": 0.80, "slab": 0.10, "hot_bulk": 0.05, "cluster": 0.05}
AL_MODEL = {"family": "tdn", "cutoff": 4.5, "channels": 16, "lmax": 1, "num_interactions": 2, "ensemble": 4}


def emt_structure(kind: str, rng: np.random.Generator):
    """One Cu/Au structure of ``kind`` with EMT energy and forces (ASE's EMT is fitted for both metals)."""
    from ase.build import bulk, fcc111
    from ase.calculators.emt import EMT
    from ase.cluster import Icosahedron

    if kind in ("bulk", "hot_bulk"):
        atoms = bulk("Cu", "fcc", a=3.6 * (1 + rng.uniform(-0.03, 0.03)), cubic=True) * (2, 2, 1)
        rattle = rng.uniform(0.02, 0.06) if kind == "bulk" else rng.uniform(0.15, 0.25)
    elif kind == "slab":
        atoms = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
        rattle = rng.uniform(0.05, 0.1)
    else:
        atoms = Icosahedron("Cu", noshells=2)
        atoms.center(vacuum=6.0)
        rattle = 0.1
    atoms.numbers[rng.random(len(atoms)) < 0.3] = 79
    atoms.positions += rng.normal(0.0, rattle, size=atoms.positions.shape)
    atoms.calc = EMT()
    atoms.get_forces()
    atoms.info["kind"] = kind
    return atoms


def _write_pool(work: Path, pool_size: int, seed: int) -> tuple[Path, Path]:
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    def frozen(atoms):  # keep the labels as stored results, not as a live EMT calculator
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f)
        return atoms

    rng = np.random.default_rng(seed)
    kinds = rng.choice(list(POOL_KINDS), size=pool_size, p=list(POOL_KINDS.values()))
    pool = [frozen(emt_structure(k, rng)) for k in kinds]
    for i, atoms in enumerate(pool):
        atoms.info["pool_index"] = i
    test = [frozen(emt_structure(k, rng)) for k in POOL_KINDS for _ in range(50)]
    work.mkdir(parents=True, exist_ok=True)
    write(work / "pool.extxyz", pool)
    write(work / "test.extxyz", test)
    return work / "pool.extxyz", work / "test.extxyz"


def _al_recipe(train: Path, steps: int, threads: int) -> dict:
    return {
        "name": "active",
        "model": AL_MODEL,
        "data": {"train": str(train), "split": [0.9, 0.1], "batch_size": 10},
        "loss": {"energy": 1.0, "forces": 10.0},
        "optim": {"lr": 1e-2, "warmup_steps": 20},
        "run": {"max_steps": steps, "valid_every": max(steps // 4, 1), "seed": 0, "threads": threads},
    }


def _select(run_dir: Path, candidates: list, n: int, out: Path, seed: int) -> list[int]:
    """``mlip select`` on the unlabelled candidates: their ``pool_index`` in pick order."""
    from ase.io import write

    from mlip_cli.checkpoint import load_model
    from mlip_cli.select import select_file

    unlabelled = out.with_name(out.stem + "_candidates.extxyz")
    stripped = [a.copy() for a in candidates]  # positions only: selection must not see the labels
    for a, source in zip(stripped, candidates):
        a.info = {"pool_index": source.info["pool_index"]}
    write(unlabelled, stripped)
    report = select_file(load_model(run_dir), unlabelled, out, n, seed=seed, overwrite=True)
    return [int(candidates[p.index].info["pool_index"]) for p in report.picked]


def _test_errors(run_dir: Path, test: Path) -> dict:
    """Force RMSE (meV/A) of the ensemble mean on the test set, overall (every kind weighs the same) and per kind."""
    from ase.io import read

    from mlip_cli.calculator import MLIPCalculator

    calc = MLIPCalculator.from_checkpoint(run_dir, dtype="float64")
    per_kind: dict[str, list[float]] = {}
    for atoms in read(test, ":"):
        want = atoms.get_forces()
        atoms.calc = calc
        per_kind.setdefault(atoms.info["kind"], []).append(float(np.mean((atoms.get_forces() - want) ** 2)))
    rmse = {k: 1000 * float(np.sqrt(np.mean(v))) for k, v in per_kind.items()}
    return {"forces_rmse": 1000 * float(np.sqrt(np.mean([np.mean(v) for v in per_kind.values()]))), "per_kind": rmse}


def active(args) -> None:
    import shutil

    import torch
    from ase.io import read, write

    from mlip_cli.train import Recipe, run_training

    torch.set_num_threads(args.threads)
    load_before = load_average()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    pool_path, test_path = _write_pool(work, args.pool, seed=0)
    pool = read(pool_path, ":")
    curves = {}
    for arm in ("select", "random"):
        rng = np.random.default_rng(args.seed)
        labelled = [int(i) for i in rng.choice(len(pool), size=args.start, replace=False)]
        curve = []
        for round_ in range(args.rounds + 1):
            train = work / arm / f"round{round_}.extxyz"
            train.parent.mkdir(parents=True, exist_ok=True)
            write(train, [pool[i] for i in labelled])
            run = work / arm / f"run{round_}"
            run_training(Recipe.from_dict(_al_recipe(train, args.steps, args.threads)), run)
            errors = _test_errors(run, test_path)
            kinds = {k: sum(pool[i].info["kind"] == k for i in labelled) for k in POOL_KINDS}
            curve.append({"labelled": len(labelled), **errors, "labelled_kinds": kinds})
            print(arm, curve[-1], flush=True)
            if round_ == args.rounds:
                break
            rest = sorted(set(range(len(pool))) - set(labelled))
            if arm == "random":
                picked = [int(i) for i in rng.choice(rest, size=args.add, replace=False)]
            else:
                picked = _select(
                    run, [pool[i] for i in rest], args.add, work / arm / f"picked{round_}.extxyz", args.seed
                )
            labelled += picked
        curves[arm] = curve
    report = {
        "benchmark": "active learning on EMT Cu/Au: mlip select against random picks",
        "provenance": provenance(
            threads=args.threads,
            dtype="float32",
            sizes={
                "pool": args.pool,
                "pool_kinds": POOL_KINDS,
                "test_per_kind": 50,
                "start": args.start,
                "add_per_round": args.add,
                "rounds": args.rounds,
                "steps_per_training": args.steps,
                "model": AL_MODEL,
            },
            load_before=load_before,
        ),
        "curves": curves,
    }
    out = Path(args.out or RESULTS / "bench_ensemble_active.json")
    write_report(out, report)
    _plot_active(curves, out.with_suffix(".png"))


def _plot_active(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for arm, curve in curves.items():
        ax.plot([c["labelled"] for c in curve], [c["forces_rmse"] for c in curve], "o-", label=f"{arm}")
    ax.set_xlabel("labelled structures")
    ax.set_ylabel("test force RMSE (meV/A)")
    ax.set_title("Active learning on EMT Cu/Au (ensemble of 4 tdn)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("steps", help="training step time against separate models")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--work", default="bench_out/ensemble_steps")
    p.add_argument("--out", default=None)
    p.add_argument("--quick", action="store_true")
    p.set_defaults(run=steps)
    p = sub.add_parser("calibration", help="calibration of a trained acac ensemble on hotter data")
    p.add_argument("--model", required=True, help="run directory or checkpoint of recipes/acac/tdn-ensemble")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--work", default="bench_out/ensemble_calibration")
    p.add_argument("--out", default=None)
    p.set_defaults(run=calibration)
    p = sub.add_parser("active", help="active-learning loop on EMT data")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--pool", type=int, default=1500)
    p.add_argument("--start", type=int, default=50)
    p.add_argument("--add", type=int, default=50)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="bench_out/active")
    p.add_argument("--out", default=None)
    p.set_defaults(run=active)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
