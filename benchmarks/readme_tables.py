"""The README's benchmark tables, rendered from their JSON files in ``benchmarks/results/``.

Each table in README.md sits between ``<!-- table: NAME -->`` and ``<!-- /table -->``; :data:`TABLES` says
which JSON files it comes from, which function renders it and which command regenerates the JSON. A table
measured on code that has changed since carries a note saying so (``stale``) until that command is rerun.
``tests/test_readme_numbers.py`` checks that every marked block equals what its JSON renders to.

    python benchmarks/readme_tables.py            # list the tables whose README block differs from its JSON
    python benchmarks/readme_tables.py --write    # rewrite those blocks
    python benchmarks/readme_tables.py --commands # the commands that regenerate the stale tables' JSON
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = "benchmarks/results"
README = ROOT / "README.md"
BLOCK = re.compile(r"<!-- table: (?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- /table -->", re.S)


# ------------------------------------------------------------------------------------------ formatting
def _sig(x: float, digits: int) -> str:
    """``x`` to ``digits`` significant digits in plain notation, with thousands separators."""
    decimals = max(digits - 1 - math.floor(math.log10(abs(x))), 0) if x else 0
    return f"{x:,.{decimals}f}"


def _short(x: float) -> str:
    """Two significant digits: plain from 0.1 up, else ``2.4e-4``; an exact zero is ``0``."""
    if x == 0:
        return "0"
    if abs(x) >= 0.1:
        return f"{x:.2g}"
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ tables
def bench_data(doc: dict) -> str:
    """Write, first-pass and warm-pass read rates per format (``bench_data.py``)."""
    names = {"native": "native store", "aselmdb": "aselmdb", "oc20": "OC20 legacy LMDB", "extxyz": "extxyz"}
    rows = []
    for r in doc["results"]:
        warm = f"{r['warm_pass_per_s']:,.0f}" + (" (in memory)" if r["format"] == "extxyz" else "")
        faster = (
            "-" if r["format"] == "native" else f"{r['native_speedup_first']:.1f}x / {r['native_speedup_warm']:.1f}x"
        )
        rows.append(
            [
                names[r["format"]],
                f"{r['write_s']:.2f}",
                f"{r['first_pass_per_s']:,.0f}",
                warm,
                f"{r['bytes'] / 1e6:.0f}",
                faster,
            ]
        )
    text = _table(
        [
            "format",
            f"write {doc['n']:,} (s)",
            "first pass (structures/s)",
            "warm pass (structures/s)",
            "size (MB)",
            "native is faster by",
        ],
        rows,
    )
    g = doc.get("graph_build")
    if g:
        text += (
            f"\n\nBuilding the graph of a decoded frame (neighbour list at {g['cutoff']:g} A) takes "
            f"{g['us_per_frame']:.0f} us; decoding it from the native store "
            f"{g['native_decode_us_per_frame']:.0f} us."
        )
    return text


#: Cu supercells shown (every size is in the JSON).
NEIGHBOR_ATOMS = (4, 108, 500, 2048, 10976)


def bench_neighbors(doc: dict) -> str:
    """Best-of-repeats ms per backend on periodic fcc Cu (``bench_neighbors.py``)."""
    rows = []
    for r in doc["results"]:
        if r["system"].startswith("Cu") and r["atoms"] in NEIGHBOR_ATOMS:
            ms = [r["seconds"][k] * 1e3 for k in ("vesin", "matscipy", "ase")]
            rows.append([f"{r['atoms']:,}", *(_sig(t, 2 if t < 1 else 3) for t in ms)])
    return _table(["atoms", "vesin (1 thread)", "matscipy", "ASE"], rows)


def bench_tp(doc: dict) -> str:
    """rank-gaunt and folded cg against e3nn per L (``mlip bench tp``)."""
    by = {(r["L"], r["method"]): r for r in doc["rows"] if r["status"] == "ok"}
    rows = []
    for L in sorted({r["L"] for r in doc["rows"]}):
        e, g, c = by[(L, "e3nn")], by[(L, "rank-gaunt")], by[(L, "cg")]
        rows.append(
            [
                str(L),
                f"{e['fwd_bwd_ms']:.1f}",
                f"{g['fwd_bwd_ms']:.1f}",
                str(g["rank"]),
                f"{g['speedup_vs_e3nn']:.1f}x",
                f"{c['speedup_vs_e3nn']:.1f}x",
                f"{g['peak_mem_mb']:.0f}",
                f"{e['peak_mem_mb']:.0f}",
            ]
        )
    return _table(
        [
            "L",
            "e3nn fwd+bwd (ms)",
            "rank-gaunt (ms)",
            "rank R",
            "speed-up",
            "cg (folded) speed-up",
            "rank-gaunt peak MB",
            "e3nn peak MB",
        ],
        rows,
    )


def acac(doc: dict) -> str:
    """Test errors and throughput of 20-minute acetylacetone trainings (``acac/run_all.py``)."""
    names = {"tdn": "tdn (32 ch, L = 1, 2 int.)", "gaunt": "gaunt", "cg": "cg", "mace": "MACE"}
    mace = doc["results"]["mace"]
    rows = []
    for name, r in doc["results"].items():
        # mlip's count is approximate (state-dict floats minus tensor-product constants); MACE's is exact
        params = f"{r['parameters_approx']:,}" if name == "mace" else f"~{round(r['parameters_approx'], -2):,}"
        rows.append(
            [
                names[name],
                params,
                f"{r['test_energy_rmse_meV']:.2f}",
                f"{r['test_energy_rmse_meV_per_atom']:.3f}",
                f"{r['test_forces_rmse']:.1f}",
                f"{r['test_forces_mae']:.1f}",
                f"{r['steps']:,}",
                f"{r['structures_per_s']:.1f}",
                f"{r['median_step_ms']:.1f}",
                f"{r['structures_per_s'] / mace['structures_per_s']:.1f}x",
            ]
        )
    return _table(
        [
            "model",
            "parameters",
            "test E RMSE (meV)",
            "test E RMSE (meV/atom)",
            "test F RMSE (meV/A)",
            "test F MAE (meV/A)",
            "steps in 20 min",
            "structures/s",
            "median step (ms)",
            "throughput vs MACE",
        ],
        rows,
    )


def transip(acac_doc: dict, bpa_doc: dict) -> str:
    """TransIP variants against tdn on acac and 3BPA (``transip/run_all.py``)."""
    # the driver's first label for (b); the README calls the weights what the recipe calls them
    labels = {"(b) alignment loss, tuned weights": "(b) alignment loss, automatic weights"}
    rows = []
    for doc in (acac_doc, bpa_doc):
        data = {"acac": "acac", "3bpa": "3BPA"}[doc["dataset"]]
        for name, r in doc["results"].items():
            m, q = r["eval"]["metrics"], r["eval"]["equivariance"]
            rot, inv = q["rotation"], _inversion(q)
            rows.append(
                [
                    data,
                    labels.get(name, name),
                    f"{m['forces_rmse']:.1f}",
                    f"{m['energy_per_atom_rmse']:.3f}",
                    f"{_short(rot['energy_mev_per_atom'])} / {_short(rot['force_rel'])}",
                    f"{_short(inv['energy_mev_per_atom'])} / {_short(inv['force_rel'])}",
                    f"{r['steps']:,}",
                    f"{r['structures_per_s']:.1f}",
                ]
            )
    return _table(
        [
            "data",
            "model",
            "test F RMSE (meV/A)",
            "test E RMSE (meV/atom)",
            "rotation: E / F rel.",
            "inversion: E / F rel.",
            "steps",
            "structures/s",
        ],
        rows,
    )


def _renamed(results: dict) -> dict:
    """Results measured before the symmetry type ``reflection`` was renamed ``inversion``, with the new name."""
    return {("inversion" if k == "reflection" else k): v for k, v in results.items()}


def _inversion(results: dict) -> dict:
    return _renamed(results)["inversion"]


def symmetry_discovery(doc: dict) -> str:
    """Final verdicts of the automatic symmetry weights per data set (``transip/symmetry_discovery.py``)."""
    cases = {
        "symmetric": "EMT only",
        "uniaxial": "+ easy axis along z (`uniaxial`, 3 eV)",
        "field": "+ bond dipoles in a field along z (`field`, 3 eV/A)",
        "chiral": "+ handedness term (`chiral`, 10 eV/A^3)",
        "canonical": "EMT only, every molecule in its template orientation",
    }
    rows = []
    for case, r in doc["results"].items():
        if r["expected_holds"] is None:  # the unregularised control: quoted in the text
            continue
        types = ("rotation", "inversion")
        cells = [f"{'yes' if r[t]['holds'] else 'no'} / {r[t]['gap']:+.3f} / {r[t]['weight']:.3g}" for t in types]
        missed = [t for t in types if int(r[t]["holds"]) != r["expected_holds"][t]]
        found = "yes" if not missed else "no: " + " and ".join(missed) + " missed"
        rows.append([cases[case], *cells, found, f"{r['valid_forces_rmse']:.0f}"])
    return _table(
        [
            "data",
            "rotation: holds / gap / weight",
            "inversion: holds / gap / weight",
            "labels' symmetry found",
            "valid F RMSE (meV/A)",
        ],
        rows,
    )


def train_step(two: dict, three: dict) -> str:
    """Median training-step time per family and L, 2 and 3 interactions (``bench_train_step.py``)."""

    def by(doc):
        return {(r["family"], r["lmax"]): r for r in doc["rows"]}

    b2, b3 = by(two), by(three)
    rows = []
    for family in dict.fromkeys(r["family"] for r in two["rows"]):
        r1, r2 = b2[(family, 1)], b2[(family, 2)]
        rows.append(
            [
                family,
                f"{r1['median_ms']:.1f}",
                f"{r2['median_ms']:.1f}",
                f"{r1['structures_per_s']:.0f} / {r2['structures_per_s']:.0f}",
                f"{b3[(family, 1)]['median_ms']:.1f} / {b3[(family, 2)]['median_ms']:.1f}",
            ]
        )
    return _table(
        ["family", "L = 1 (ms)", "L = 2 (ms)", "structures/s (L = 1 / 2)", "3 interactions, L = 1 / 2 (ms)"], rows
    )


def calculator(doc: dict) -> str:
    """MD steps/s relative to MACE's calculator (``bench_calculator.py``)."""
    systems = {"cu64": "64-atom Cu", "cu1000": "1,000-atom Cu", "mol15": "15-atom molecule"}
    families = ("tdn", "gaunt", "cg")
    ratio = {(r["system"], r["dtype"], r["family"]): r["md_vs_mace"] for r in doc["rows"] if "md_vs_mace" in r}
    keys = dict.fromkeys((s, d) for s, d, _ in ratio)
    rows = [[systems[s], d] + [f"{ratio[(s, d, f)]:.2f}x" for f in families] for s, d in keys]
    return _table(["system", "dtype", *families], rows)


def relax(doc: dict) -> str:
    """Batched relaxation against a loop of ASE optimizers (``bench_relax.py``)."""
    by = {(r["optimizer"], r["path"]): r for r in doc["rows"]}
    rows = []
    for opt in dict.fromkeys(r["optimizer"] for r in doc["rows"]):
        a, b = by[(opt, "ase-loop")], by[(opt, "batched")]
        rows.append(
            [
                opt,
                f"{a['seconds']:.2f}",
                f"{b['seconds']:.2f}",
                f"{a['steps']} / {b['steps']}",
                f"{a['model_calls']} / {b['model_calls']}",
                f"{a['converged']} / {b['converged']} of {doc['meta']['provenance']['sizes']['structures']}",
                f"{b['speedup']:.1f}x",
            ]
        )
    return _table(
        [
            "optimizer",
            "loop of ASE optimizers (s)",
            "batched (s)",
            "steps (ASE / batched)",
            "model calls (ASE / batched)",
            "converged (ASE / batched)",
            "speed-up",
        ],
        rows,
    )


def scale(doc: dict) -> str:
    """A million-structure store against a thousand-structure one (``bench_scale.py``)."""
    small, large = doc["training"]["small"], doc["training"]["large"]
    n_small, n_large = doc["stores"]["small"]["structures"], doc["stores"]["large"]["structures"]
    rows = [
        [
            f"{n:,} structures ({doc['stores'][k]['bytes'] / 1e9:.2f} GB)",
            f"{r['startup_s']:.1f}",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['worker_peak_rss_mb']:.0f}",
            f"{r['step_ms']:.0f}",
            f"{100 * r['data_wait_share']:.1f}%",
        ]
        for k, n, r in (("small", n_small, small), ("large", n_large, large))
    ]
    table = _table(
        ["training store", "start-up (s)", "peak RSS (MB)", "worker peak RSS (MB)", "step (ms)", "waiting for data"],
        rows,
    )
    info, stats = doc["data_commands"]["info"], doc["data_commands"]["stats"]
    return (
        table + f"\n\n`mlip data info` on the {n_large:,}-structure store: {info['seconds']:.1f} s, peak RSS "
        f"{info['peak_mb']:.0f} MB; `mlip data stats`: {stats['seconds']:.1f} s, {stats['peak_mb']:.0f} MB (both read "
        f"the statistics stored at write time); writing it took {doc['stores']['large']['write_s']:.0f} s."
    )


def export(doc: dict) -> str:
    """Exported artifacts against the Python model (``bench_export.py``)."""
    names = doc["systems"]
    rows = []
    for r in doc["rows"]:
        rows.append(
            [
                r["path"],
                *(f"{1000 * r[n]:.2f}" + (f" ({r['speedup'][n]:.1f}x)" if "speedup" in r else "") for n in names),
                f"{r['load_s']:.1f}" if "load_s" in r else "-",
                f"{r['export_s']:.0f}" if "export_s" in r else "-",
            ]
        )
    return _table(
        ["path", *(f"ms per call, {names[n]}" for n in names), "load (s)", "export (s)"],
        rows,
    )


def torchsim(doc: dict) -> str:
    """Batched NVE in TorchSim against a loop of ASE calculators (``bench_torchsim.py``)."""
    sizes = doc["meta"]["provenance"]["sizes"]
    rows = [
        [
            "loop of ASE calculators" if r["path"] == "ase-loop" else "TorchSim, batched",
            f"{r['seconds']:.2f}",
            f"{r['molecule_steps_per_s']:.0f}",
            str(r["model_calls"]),
            f"{r.get('speedup', 1.0):.1f}x",
        ]
        for r in doc["rows"]
    ]
    lo, mean, hi = sizes["atoms_min_mean_max"]
    return (
        _table(["path", "time (s)", "molecule-steps/s", "model calls", "speed-up"], rows)
        + f"\n\n{sizes['molecules']} molecules of {lo}-{hi} atoms, {sizes['steps']} NVE steps; largest difference of"
        f" final positions between the two: {doc['meta']['max_final_position_difference_A']:.1e} A."
    )


def ensemble_steps(doc: dict) -> str:
    """Ensemble step and prediction time against K separate models (``bench_ensemble.py steps``)."""
    rows = [
        [
            str(r["members"]),
            f"{r['ensemble_step_ms']:.1f}",
            f"{r['ensemble_vs_one_member']:.2f}x",
            f"{r['separate_step_ms']:.1f}",
            f"{r['separate_vs_one_member']:.2f}x",
            f"{r['predict_vs_one_member']:.2f}x",
        ]
        for r in doc["rows"]
    ]
    return _table(
        [
            "members K",
            "ensemble step (ms)",
            "vs one member",
            "K separate models (ms per step of all K)",
            "vs one member",
            "energy+forces vs one member",
        ],
        rows,
    )


def ensemble_calibration(doc: dict) -> str:
    """Calibration of the acac ensemble on 300 K and 600 K frames (``bench_ensemble.py calibration``)."""
    names = {"test_300K": "test_MD_300K (650)", "hot_600K": "train_600K (500, hotter)", "both": "both together"}
    rows = [
        [
            names[k],
            f"{r['forces_rmse']:.1f}",
            f"{1000 * r['mean_structure_uncertainty']:.1f}",
            f"{r['spearman']:.2f}",
            f"{r['forces_nll']:.2f}",
            f"{r['miscalibration_area']:.2f}",
        ]
        for k, r in doc["sets"].items()
    ]
    table = _table(
        [
            "test set",
            "force RMSE (meV/A)",
            "mean predicted uncertainty (meV/A)",
            "Spearman (per structure)",
            "force NLL",
            "miscalibration area",
        ],
        rows,
    )
    sel = doc["selection"]
    return (
        table + f"\n\nThe {sel['n']} structures `mlip select` picks from the 600 K frames have a mean force RMSE of "
        f"{sel['picked_mean_force_rmse']:.0f} meV/A against {sel['random_mean_force_rmse']:.0f} +- "
        f"{sel['random_mean_force_rmse_std']:.0f} meV/A for {sel['n']} random frames (20 draws); "
        f"{sel['picked_in_worst_tenth']} of them are in the worst tenth of the pool."
    )


def ensemble_active(doc: dict) -> str:
    """Active learning on EMT data, select against random (``bench_ensemble.py active``)."""
    curves = doc["curves"]
    rows = [
        [str(s["labelled"]), f"{s['forces_rmse']:.0f}", f"{r['forces_rmse']:.0f}"]
        for s, r in zip(curves["select"], curves["random"])
    ]
    return _table(["labelled structures", "test force RMSE, `mlip select` (meV/A)", "random picks (meV/A)"], rows)


def transip_sizes(*sweeps: dict) -> str:
    """Learned equivariance against augmentation per training-set size (``transip/size_sweep.py``), one sweep per
    data set."""
    names = {
        "tdn": "tdn",
        "aug": "TransIP, augmentation",
        "align": "TransIP, fixed alignment",
        "learned": "TransIP, learned transformation + augmentation",
    }
    rows, gains = [], []
    for doc in sweeps:
        weight = doc.get("learned_weight", 0.01)  # the recipe's 0.01 unless the sweep set another
        tag = "" if weight == 0.01 else f" (weight {weight:g})"
        for size, arms in doc["results"].items():
            for arm, r in arms.items():
                m, q = r["eval"]["metrics"], r["eval"]["equivariance"]
                rot, inv = q["rotation"], q["inversion"]
                rows.append(
                    [
                        doc["dataset"],
                        size,
                        names[arm] + (tag if arm == "learned" else ""),
                        f"{m['forces_rmse']:.1f}",
                        f"{m['forces_mae']:.1f}",
                        f"{m['energy_per_atom_rmse']:.2f}",
                        f"{_short(rot['energy_mev_per_atom'])} / {_short(rot['force_rel'])}",
                        f"{_short(inv['energy_mev_per_atom'])} / {_short(inv['force_rel'])}",
                        f"{r['steps']:,}",
                    ]
                )
        gains += [
            f"{doc['dataset']} {size}{tag}: {100 * g:+.0f}%"
            for size, g in doc["learned_gain_over_augmentation"].items()
        ]
    return (
        _table(
            [
                "data",
                "train size",
                "model",
                "F RMSE (meV/A)",
                "F MAE (meV/A)",
                "E RMSE (meV/atom)",
                "rotation: E (meV/atom) / F rel.",
                "inversion: E / F rel.",
                "steps",
            ],
            rows,
        )
        + "\n\nForce-RMSE change of the learned transformation against augmentation (positive: better): "
        + "; ".join(gains)
        + "."
    )


def _vs(x: float, peer: float | None, higher_is_better: bool) -> str:
    """`` (3.2x MACE)``: how many times better than the peer (empty without one)."""
    if not peer:
        return ""
    return f" ({(x / peer if higher_is_better else peer / x):.1f}x)"


def medium_speed(doc: dict) -> str:
    """Medium models against MACE at the same size (``medium/bench_speed.py``): training step, MD, memory."""
    mace = f"mace{doc['mace_interactions'][0]}"
    arms = list(dict.fromkeys(r["arm"] for r in doc["train"]))
    step = {r["arm"]: r["median_step_ms"] for r in doc["train"]}
    md = {(r["arm"], r["system"]): r["md_steps_per_s"] for r in doc["md"]}
    memory = {r["arm"]: r for r in doc["memory"] if r["system"] == "cu10000"}
    largest = doc["largest_cell"]
    rows = []
    for arm in arms:
        peer = arm != mace
        cells = [f"{step[arm]:,.0f}{_vs(step[arm], step[mace] if peer else None, False)}"]
        for system in ("mol27", "cu64", "cu1000"):
            rate = md[(arm, system)]
            cells.append(f"{_sig(rate, 2)}{_vs(rate, md[(mace, system)] if peer else None, True)}")
        m = memory.get(arm, {})
        if m.get("fits"):
            cells += [f"{m['call_s']:.1f}", f"{m['peak_rss_mb'] / 1024:.1f}"]
        else:
            cells += ["-", f"over {m.get('memory_limit_gb', doc.get('memory_limit_gb', '?')):g} (did not fit)"]
        cells.append(f"{largest[arm]['atoms_in_machine_memory']:,}" if arm in largest else "-")
        rows.append(["MACE" if arm == mace else arm, *cells])
    return _table(
        [
            "model",
            "training step, 3BPA batch of 5 (ms)",
            "MD steps/s, 27-atom 3BPA",
            "64-atom Cu",
            "1,000-atom Cu",
            "E+F 10,000-atom Cu (s)",
            "peak memory (GB)",
            "largest Cu cell in 24 GB (atoms, extrapolated)",
        ],
        rows,
    )


def medium_accuracy(*docs: dict) -> str:
    """Medium models against MACE per data set and budget (``medium/run_accuracy.py``).

    A budget's families may come from several runs (two jobs at a time); each is compared with the MACE run of the
    same data set and budget, whichever report holds it.
    """
    mace_f = {
        (doc["dataset"], doc["budget_s"]): doc["results"]["mace"]["eval"]["metrics"]["forces_rmse"]
        for doc in docs
        if "mace" in doc["results"]
    }
    rows = []
    for doc, (_, _, arms, *_) in zip(docs, MEDIUM_ACCURACY_RUNS, strict=True):
        peer_f = mace_f.get((doc["dataset"], doc["budget_s"]))
        for arm in arms.split():  # the arms the run lists, not every arm its report holds (some were rerun)
            r = doc["results"][arm]
            m = r["eval"]["metrics"]
            hot = r.get("hot", {}).get("hot_600K")
            rows.append(
                [
                    doc["dataset"],
                    f"{doc['budget_s'] / 60:.0f}",
                    "MACE" if arm == "mace" else arm,
                    f"{r['steps']:,}",
                    f"{r['median_step_ms']:,.0f}",
                    f"{m['forces_rmse']:.1f}{_vs(m['forces_rmse'], peer_f if arm != 'mace' else None, False)}",
                    f"{m['energy_per_atom_rmse']:.2f}",
                    f"{hot['metrics']['forces_rmse']:.1f}" if hot else "-",
                ]
            )
    return _table(
        [
            "data",
            "budget (min)",
            "model",
            "steps",
            "median step (ms)",
            "test F RMSE (meV/A; x better than MACE)",
            "test E RMSE (meV/atom)",
            "600 K F RMSE (meV/A)",
        ],
        rows,
    )


def gpu_check(doc: dict) -> str:
    """Triton against torch kernels on a CUDA GPU (``gpu_check.py``): agreement, message time, medium models."""
    worst = {}
    for r in doc["kernels"]:
        worst[r["dtype"]] = max(worst.get(r["dtype"], 0.0), *r["rel_err"].values())
    auto = sorted({r["auto"] for r in doc["kernels"]})
    rows = [
        [
            "message + 1st and 2nd derivatives, largest relative difference",
            ", ".join(f"{_short(e)} ({d})" for d, e in worst.items()) + f"; `auto` picks {'/'.join(auto)}",
        ]
    ]
    for r in doc["message"]:
        rows.append(
            [
                f"message fwd+bwd, {r['nodes']:,} nodes, {r['edges']:,} edges, C = {r['C']}, R = {r['R']} (ms)",
                f"torch {_sig(r['torch_ms'], 3)}, triton {_sig(r['triton_ms'], 3)} ({r['triton_speedup']:.1f}x)",
            ]
        )
    by = {(r["family"], r["backend"]): r for r in doc["model"]}
    for family in dict.fromkeys(r["family"] for r in doc["model"]):
        t, g = by[(family, "torch")], by[(family, "triton")]
        rows.append(
            [
                f"{family}-medium, E+F of {t['cu_atoms']:,}-atom Cu: ms, peak GB",
                f"torch {_sig(t['cu_energy_forces_ms'], 3)} / {t['cu_peak_gb']:.1f}, "
                f"triton {_sig(g['cu_energy_forces_ms'], 3)} / {g['cu_peak_gb']:.1f} "
                f"({t['cu_energy_forces_ms'] / g['cu_energy_forces_ms']:.1f}x)",
            ]
        )
        rows.append(
            [
                f"{family}-medium, training step, 5 / 64 molecules (ms)",
                f"torch {t['train_step_ms_batch5']:.0f} / {t['train_step_ms_batch64']:.0f}, "
                f"triton {g['train_step_ms_batch5']:.0f} / {g['train_step_ms_batch64']:.0f}",
            ]
        )
    return _table(["measured on " + doc["gpu"], "result"], rows)


def gpu_calculator(doc: dict) -> str:
    """ASE MD steps/s on the GPU, medium models against MACE at the same size (``gpu_check.py --parts calc``)."""
    names = {"mol15": "15-atom molecule", "cu64": "64-atom Cu", "cu1000": "1,000-atom Cu", "cu10000": "10,000-atom Cu"}
    rate = {(r["arm"], r["system"]): r["md_steps_per_s"] for r in doc["calc"]}
    arms = [a for a in dict.fromkeys(r["arm"] for r in doc["calc"]) if a != "mace2"]
    rows = []
    for system in dict.fromkeys(r["system"] for r in doc["calc"]):
        mace = rate[("mace2", system)]
        cells = [f"{_sig(rate[(a, system)], 3)}{_vs(rate[(a, system)], mace, True)}" for a in arms]
        rows.append([names.get(system, system), *cells, _sig(mace, 3)])
    return _table(["MD steps/s on " + doc["gpu"], *arms, "MACE"], rows)


def stability(*docs: dict) -> str:
    """Time to the first bond-topology change in Langevin MD (``bench_stability.py``), per arm and temperature."""
    rows = []
    for doc in docs:
        for r in doc["summary"]:
            first = "-" if r["first_event_ps"] is None else _sig(r["first_event_ps"], 3)
            run_ps = r.get("run_ps", r["max_ps"])  # shorter than max_ps where a wall-time cap censored the runs
            median = f"> {run_ps:.3g}" if r["median_ps"] is None else _sig(r["median_ps"], 3)
            what = sorted({x["kind"] or x["event"] for x in doc["rows"] if x["arm"] == r["arm"] and not x["censored"]})
            rows.append(
                [
                    "MACE" if r["arm"] == "mace" else r["arm"],
                    doc["meta"]["system"],
                    f"{r['temperature_K']:g}",
                    f"{run_ps:.3g}",
                    f"{r['runs']}",
                    f"{r['events']}",
                    first,
                    median,
                    ", ".join(what) or "-",
                ]
            )
    return _table(
        ["model", "data", "T (K)", "run length (ps)", "seeds", "topology changes", "first (ps)", "median (ps)", "what"],
        rows,
    )


# ------------------------------------------------------------------------------------------ registry
@dataclass(frozen=True)
class Table:
    render: Callable[..., str]
    sources: tuple[str, ...]  # JSON files under benchmarks/results/, passed to ``render`` in this order
    commands: tuple[str, ...]  # what regenerates them, from the repository root
    stale: str | None = None  # why the numbers no longer describe the current code (None: they do)


PY = ".venv/bin/python"
_BEFORE_DATALOADER = (
    "measured before training read its data through DataLoader workers; the batches and models are meant to be the "
    "same (0 vs 2 workers give bit-identical weights in the tests), but these runs were not repeated, and throughput "
    "and step counts may differ"
)
_BEFORE_FRAMES = (
    _BEFORE_DATALOADER + "; also before TransIP's frame averaging handled degenerate principal axes and its "
    "regularisers reused the forward pass's tokens (both meant to give the same numbers here: these molecules' axes "
    "are distinct, and the tests find the same regulariser values)"
)
# run_accuracy.py runs (data set, minutes, arms as the report names them, report suffix, options beyond --arms), two
# jobs at a time; one report each, table rows in this order. medium_acac_30min.json also holds a transip trained at
# the recipe's earlier lr (5e-3, before 0077a17): its row comes from the rerun in medium_acac_30min_transip.json
_DEPTH4 = "--set model.num_interactions=4 --tag 4int"  # the depth experiment: tdn-medium with 4 interactions
MEDIUM_ACCURACY_RUNS = (
    ("acac", 30, "tdn mace gaunt cg", "", ""),
    ("acac", 30, "transip", "_transip", ""),
    ("acac", 30, "tdn-4int", "_tdn_4int", _DEPTH4),
    ("acac", 90, "tdn mace", "", ""),
    ("acac", 90, "gaunt cg", "_gaunt_cg", ""),
    ("acac", 90, "transip", "_transip", ""),
    ("acac", 90, "tdn-4int", "_tdn_4int", _DEPTH4),
    ("3bpa", 30, "tdn mace", "", ""),
    ("3bpa", 30, "gaunt cg", "_gaunt_cg", ""),
    ("3bpa", 30, "transip", "_transip", ""),
    ("3bpa", 90, "tdn mace", "", ""),
    ("3bpa", 90, "gaunt cg", "_gaunt_cg", ""),
    ("3bpa", 90, "transip", "_transip", ""),
)

TABLES: dict[str, Table] = {
    "bench_data": Table(
        bench_data, ("bench_data.json",), (f"{PY} benchmarks/bench_data.py --n 10000 --out {RESULTS}/bench_data.json",)
    ),
    "bench_neighbors": Table(
        bench_neighbors,
        ("bench_neighbors.json",),
        (f"{PY} benchmarks/bench_neighbors.py --json {RESULTS}/bench_neighbors.json",),
    ),
    "bench_tp": Table(
        bench_tp,
        ("bench_tp_threads1.json",),
        (
            f".venv/bin/mlip bench tp --l-max 6 --threads 1 --out {RESULTS}/bench_tp_threads1.json "
            f"--plot {RESULTS}/bench_tp_threads1.png",
        ),
    ),
    "acac": Table(
        acac,
        ("acac_20min_threads1.json",),
        (
            f"{PY} benchmarks/acac/run_all.py --budget 1200 --threads 1 --parallel 2 "
            f"--out {RESULTS}/acac_20min_threads1.json",
        ),
        stale=_BEFORE_DATALOADER,
    ),
    "transip": Table(
        transip,
        ("acac_transip_20min_threads1.json", "3bpa_transip_20min_threads1.json"),
        tuple(
            f"{PY} benchmarks/transip/run_all.py --dataset {d} --budget 1200 --threads 1 --parallel 2 "
            f"--out {RESULTS}/{d}_transip_20min_threads1.json"
            for d in ("acac", "3bpa")
        ),
        stale=_BEFORE_FRAMES,
    ),
    "symmetry_discovery": Table(
        symmetry_discovery,
        ("symmetry_discovery.json",),
        (f"{PY} benchmarks/transip/symmetry_discovery.py --parallel 2 --out {RESULTS}/symmetry_discovery",),
    ),
    "train_step": Table(
        train_step,
        ("bench_train_step_threads1.json", "bench_train_step_3int_threads1.json"),
        (
            f"{PY} benchmarks/bench_train_step.py --threads 1 --json {RESULTS}/bench_train_step_threads1.json",
            f"{PY} benchmarks/bench_train_step.py --threads 1 --interactions 3 "
            f"--json {RESULTS}/bench_train_step_3int_threads1.json",
        ),
    ),
    "calculator": Table(
        calculator,
        ("bench_calculator.json",),
        (f"{PY} benchmarks/bench_calculator.py --repeats 2 --min-time 1.5 --out {RESULTS}/bench_calculator.json",),
    ),
    "relax": Table(
        relax,
        ("bench_relax.json",),
        (f"{PY} benchmarks/bench_relax.py --out {RESULTS}/bench_relax.json",),
    ),
    "scale": Table(
        scale,
        ("bench_scale.json",),
        (f"{PY} benchmarks/bench_scale.py --work bench_out/scale --out {RESULTS}/bench_scale.json",),
    ),
    "export": Table(
        export, ("bench_export.json",), (f"{PY} benchmarks/bench_export.py --out {RESULTS}/bench_export.json",)
    ),
    "torchsim": Table(
        torchsim, ("bench_torchsim.json",), (f"{PY} benchmarks/bench_torchsim.py --out {RESULTS}/bench_torchsim.json",)
    ),
    "transip_sizes": Table(
        transip_sizes,
        ("transip_sizes_acac.json", "transip_sizes_3bpa.json", "transip_sizes_acac_weight0.1.json"),
        (
            f"{PY} benchmarks/transip/size_sweep.py --dataset acac --sizes 50 100 250 450 --budget 240 --parallel 2 "
            f"--out {RESULTS}/transip_sizes_acac.json",
            f"{PY} benchmarks/transip/size_sweep.py --dataset 3bpa --sizes 100 400 --budget 240 --parallel 2 "
            f"--out {RESULTS}/transip_sizes_3bpa.json",
            f"{PY} benchmarks/transip/size_sweep.py --dataset acac --sizes 50 100 --arms aug learned "
            f"--learned-weight 0.1 --budget 240 --parallel 1 --work bench_out/transip-sizes-acac-w0.1 "
            f"--out {RESULTS}/transip_sizes_acac_weight0.1.json",
        ),
    ),
    "medium_speed": Table(
        medium_speed,
        ("medium_speed_threads1.json",),
        (f"{PY} benchmarks/medium/bench_speed.py --out {RESULTS}/medium_speed_threads1.json",),
    ),
    "medium_accuracy": Table(
        medium_accuracy,
        tuple(f"medium_{d}_{minutes}min{suffix}.json" for d, minutes, _, suffix, _ in MEDIUM_ACCURACY_RUNS),
        tuple(
            f"{PY} benchmarks/medium/run_accuracy.py --dataset {d} --budget {60 * minutes} --threads 1 --parallel 2 "
            f"--arms {' '.join(arm.split('-')[0] for arm in arms.split())} {options}".rstrip()
            + f" --out {RESULTS}/medium_{d}_{minutes}min{suffix}.json"
            for d, minutes, arms, suffix, options in MEDIUM_ACCURACY_RUNS
        ),
    ),
    "gpu_check": Table(
        gpu_check,
        ("gpu_check_h200.json",),
        ("python benchmarks/gpu_check.py --out benchmarks/results/gpu_check_h200.json  # on the GPU machine",),
    ),
    "gpu_calculator": Table(
        gpu_calculator,
        ("gpu_calc_h200.json",),
        (
            "python benchmarks/gpu_check.py --parts calc --min-time 5 --out benchmarks/results/gpu_calc_h200.json"
            "  # on the GPU machine, with mace-torch",
        ),
    ),
    "stability_3bpa_medium": Table(
        stability,
        (
            "bench_stability_3bpa_tdn_medium.json",
            "bench_stability_3bpa_mace_medium.json",
            "bench_stability_3bpa_gaunt_cg_medium.json",
            "bench_stability_3bpa_transip_medium.json",
        ),
        (
            f"{PY} benchmarks/bench_stability.py --system 3bpa --model tdn=bench_out/medium-3bpa-1800s/tdn "
            f"--temperatures 300 --seeds 5 --max-ps 5 --threads 1 "
            f"--json {RESULTS}/bench_stability_3bpa_tdn_medium.json",
            f"{PY} benchmarks/bench_stability.py --system 3bpa --mace mace=bench_out/medium-3bpa-1800s/mace/mace.model "
            f"--temperatures 300 --seeds 1 --max-ps 1.5 --threads 1 "
            f"--json {RESULTS}/bench_stability_3bpa_mace_medium.json",
            f"{PY} benchmarks/bench_stability.py --system 3bpa --engine torchsim "
            f"--model gaunt=bench_out/medium-3bpa-1800s/gaunt --model cg=bench_out/medium-3bpa-1800s/cg "
            f"--temperatures 300 --seeds 5 --max-ps 50 --max-minutes 15 --threads 1 "
            f"--json {RESULTS}/bench_stability_3bpa_gaunt_cg_medium.json",
            f"{PY} benchmarks/bench_stability.py --system 3bpa --engine torchsim "
            f"--model transip=bench_out/medium-3bpa-1800s/transip "
            f"--temperatures 300 --seeds 5 --max-ps 50 --max-minutes 15 --threads 1 "
            f"--json {RESULTS}/bench_stability_3bpa_transip_medium.json",
        ),
    ),
    "stability_acac_medium": Table(
        stability,
        (
            "bench_stability_acac_tdn_medium_300K.json",
            "bench_stability_acac_tdn_medium_600K.json",
            "bench_stability_acac_tdn_medium_600K_ase.json",
            "bench_stability_acac_gaunt_medium_300K.json",
            "bench_stability_acac_gaunt_medium_600K.json",
            "bench_stability_acac_cg_medium_300K.json",
            "bench_stability_acac_cg_medium_600K.json",
            "bench_stability_acac_mace_medium_600K.json",
            "bench_stability_acac_transip_medium_300K.json",
            "bench_stability_acac_transip_medium_600K.json",
        ),
        (
            # each family's 5 replicas at one temperature, under the wall-time cap (minutes) it ran with
            *(
                f"{PY} benchmarks/bench_stability.py --system acac --engine torchsim "
                f"--model {f}=bench_out/medium-acac-5400s/{f} --temperatures {t} "
                f"--seeds 5 --max-ps 50 --max-minutes {minutes} --threads 1 "
                f"--json {RESULTS}/bench_stability_acac_{f}_medium_{t}K.json"
                for f, t, minutes in (
                    ("tdn", 300, 45),
                    ("tdn", 600, 42),
                    ("gaunt", 300, 18),
                    ("gaunt", 600, 25),
                    ("cg", 300, 18),
                    ("cg", 600, 25),
                    ("transip", 300, 7),
                    ("transip", 600, 15),
                )
            ),
            f"{PY} benchmarks/bench_stability.py --system acac --temperatures 600 --seeds 2 --max-ps 8 "
            f"--model 'tdn, ASE Langevin=bench_out/medium-acac-5400s/tdn' "
            f"--json {RESULTS}/bench_stability_acac_tdn_medium_600K_ase.json",
            f"{PY} benchmarks/bench_stability.py --system acac --engine torchsim "
            f"--mace mace=bench_out/medium-acac-5400s/mace/mace.model --temperatures 600 --seeds 5 --max-ps 50 "
            f"--max-minutes 38 --json {RESULTS}/bench_stability_acac_mace_medium_600K.json",
        ),
    ),
    "ensemble_steps": Table(
        ensemble_steps,
        ("bench_ensemble_steps_threads2.json",),
        (f"{PY} benchmarks/bench_ensemble.py steps --threads 2",),
    ),
    "ensemble_calibration": Table(
        ensemble_calibration,
        ("bench_ensemble_calibration.json",),
        (
            ".venv/bin/mlip train recipes/acac/tdn-ensemble.yaml --data ../shared/data/acac/train_300K.xyz "
            "--set data.e0s=$PWD/../shared/data/acac/isolated_atoms.xyz --out bench_out/acac-ensemble --threads 1",
            f"{PY} benchmarks/bench_ensemble.py calibration --model bench_out/acac-ensemble",
        ),
    ),
    "ensemble_active": Table(
        ensemble_active,
        ("bench_ensemble_active.json",),
        (f"{PY} benchmarks/bench_ensemble.py active",),
    ),
}


# ------------------------------------------------------------------------------------------ blocks
def _run_facts(doc: dict) -> tuple[float | None, str | None]:
    """Load average at the start and the code commit a JSON records (older JSONs: where each driver put it)."""
    prov = doc.get("provenance") or doc.get("meta", {}).get("provenance")
    if prov:
        code = prov["code"]
        commit = None if not code["commit"] else code["commit"][:7] + (" with local changes" if code["dirty"] else "")
        return prov["load_average"][0], commit
    load = None
    for path in (
        ("load_average",),
        ("machine", "load_average_before"),
        ("meta", "machine", "load_average"),
        ("machine", "load_before"),
        ("machine", "load_average"),
        ("meta", "load_avg_start_end"),
        ("meta", "load_avg_end"),
    ):
        value = doc
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            load = value[0] if isinstance(value, list) else value
            break
    code = doc.get("meta", {}).get("code") or {}
    commit = code.get("commit")
    return load, commit and commit[:7] + (" with local changes" if code.get("dirty") else "")


def render(name: str, results: Path | None = None) -> str:
    """The README block of table ``name`` (without its markers), from its JSON files."""
    table = TABLES[name]
    results = results or ROOT / RESULTS
    docs = [json.loads((results / source).read_text()) for source in table.sources]
    parts = []
    if table.stale:
        parts.append(f"> **Stale:** {table.stale}. Regenerate: " + "; ".join(f"`{c}`" for c in table.commands) + ".\n")
    parts.append(table.render(*docs) + "\n")
    facts = []
    for source, doc in zip(table.sources, docs):
        load, commit = _run_facts(doc)
        facts.append(
            f"`{RESULTS}/{source}` (load average {'not recorded' if load is None else f'{load:.1f}'}, "
            f"commit {commit or 'not recorded'})"
        )
    parts.append("Source: " + "; ".join(facts) + ".\n")
    return "\n".join(parts)


def blocks(text: str) -> dict[str, str]:
    """Marked tables in ``text``: name -> block body."""
    found: dict[str, str] = {}
    for m in BLOCK.finditer(text):
        if m["name"] in found:
            raise ValueError(f"table {m['name']!r} is marked twice")
        found[m["name"]] = m["body"]
    return found


def mismatches(text: str, results: Path | None = None) -> list[str]:
    """Names of the marked tables in ``text`` that differ from what their JSON renders to."""
    return [name for name, body in blocks(text).items() if body != render(name, results)]


def rewrite(text: str, results: Path | None = None) -> str:
    """``text`` with every marked block replaced by its rendering."""
    return BLOCK.sub(lambda m: f"<!-- table: {m['name']} -->\n{render(m['name'], results)}<!-- /table -->", text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="rewrite the README blocks that differ")
    ap.add_argument("--commands", action="store_true", help="print the commands regenerating stale tables")
    args = ap.parse_args(argv)
    if args.commands:
        for name, table in TABLES.items():
            if table.stale:
                print(f"# {name}: {table.stale}")
                print("\n".join(table.commands))
        return 0
    text = README.read_text()
    missing = sorted(set(TABLES) - set(blocks(text)))
    if missing:
        print(f"not marked in README.md: {', '.join(missing)}", file=sys.stderr)
    differing = mismatches(text)
    if args.write and differing:
        README.write_text(rewrite(text))
        print(f"rewrote: {', '.join(differing)}")
    elif differing:
        print(f"differ from their JSON: {', '.join(differing)} (--write to update)")
    return 1 if (missing or differing) and not args.write else 0


if __name__ == "__main__":
    sys.exit(main())
