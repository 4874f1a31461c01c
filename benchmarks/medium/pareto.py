"""Pareto plot of the medium models (issue 17): test force RMSE against training time and against MD speed.

    .venv/bin/python benchmarks/medium/pareto.py --dataset acac \\
        --accuracy benchmarks/results/medium_acac_30min.json benchmarks/results/medium_acac_30min_transip.json \\
        benchmarks/results/medium_acac_90min.json benchmarks/results/medium_acac_90min_gaunt_cg.json \\
        benchmarks/results/medium_acac_90min_transip.json benchmarks/results/medium_acac_30min_tdn_4int.json \\
        benchmarks/results/medium_acac_90min_tdn_4int.json \\
        --speed benchmarks/results/medium_speed_threads1.json --out benchmarks/results/medium_pareto_acac.png
    .venv/bin/python benchmarks/medium/pareto.py --dataset 3bpa \\
        --accuracy benchmarks/results/medium_3bpa_30min.json benchmarks/results/medium_3bpa_30min_gaunt_cg.json \\
        benchmarks/results/medium_3bpa_30min_transip.json benchmarks/results/medium_3bpa_90min.json \\
        benchmarks/results/medium_3bpa_90min_gaunt_cg.json benchmarks/results/medium_3bpa_90min_transip.json \\
        --speed benchmarks/results/medium_speed_threads1.json --out benchmarks/results/medium_pareto_3bpa.png

Left: each arm's test force RMSE at each training budget (``run_accuracy.py`` reports, one per budget). Right: the
force RMSE at the longest budget against ASE MD steps/s of the same architecture on the 27-atom 3BPA molecule
(``bench_speed.py``; untrained weights of the same size, so speed does not depend on the budget). Lower left is
better in both panels.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mlip_cli.train.plots import save_figure

MD_SYSTEM = "mol27"


def points(accuracy: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """Arm -> [(budget in minutes, test force RMSE)] sorted by budget; where two reports hold the same arm and
    budget, the later one (a rerun) counts."""
    out: dict[str, dict[float, float]] = {}
    for doc in accuracy:
        for arm, r in doc["results"].items():
            out.setdefault(arm, {})[doc["budget_s"] / 60] = r["eval"]["metrics"]["forces_rmse"]
    return {arm: sorted(p.items()) for arm, p in out.items()}


def md_speed(speed: dict, mace_interactions: int) -> dict[str, float]:
    """Arm -> MD steps/s on :data:`MD_SYSTEM`; MACE's row is the one with the accuracy runs' interactions."""
    rates = {}
    for row in speed["md"]:
        if row["system"] != MD_SYSTEM:
            continue
        arm = row["arm"]
        if arm.startswith("mace"):
            if int(arm[4:]) != mace_interactions:
                continue
            arm = "mace"
        rates[arm] = row["md_steps_per_s"]
    return rates


def plot(accuracy: list[dict], speed: dict | None, dataset: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    curves = points(accuracy)
    fig, axes = plt.subplots(1, 2 if speed else 1, figsize=(10 if speed else 5.5, 4.2), squeeze=False)
    left = axes[0, 0]
    for arm, p in curves.items():
        left.plot(*zip(*p), marker="o", label=arm)
    budgets = [b for p in curves.values() for b, _ in p]
    left.set_xlim(0, max(100.0, 1.1 * max(budgets)))  # room for the 90-minute budget beside the 30-minute one
    left.set_xlabel("training budget (minutes, 1 CPU thread)")
    left.set_ylabel("test force RMSE (meV/A)")
    left.set_yscale("log")
    left.legend()
    if speed:
        right = axes[0, 1]
        rates = md_speed(speed, accuracy[0].get("mace_interactions", 2))
        for arm, p in curves.items():
            if arm in rates:
                # each arm at its own longest budget; a legend, since points of equal accuracy and speed overlap
                right.scatter(rates[arm], p[-1][1], label=f"{arm} ({p[-1][0]:.0f} min)")
        right.legend()
        right.set_xscale("log")
        right.set_yscale("log")
        for axis in (right.xaxis, right.yaxis, left.yaxis):  # 1-2-5 ticks in plain numbers on the log axes
            axis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        right.set_xlabel(f"MD steps/s ({MD_SYSTEM}, 1 thread, float32)")
        right.set_ylabel("test force RMSE at the longest budget run (meV/A)")
    return save_figure(fig, out, title=f"{dataset}: medium models against MACE")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="acac")
    ap.add_argument("--accuracy", nargs="+", type=Path, required=True, help="run_accuracy.py reports")
    ap.add_argument("--speed", type=Path, help="bench_speed.py report")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    accuracy = [json.loads(p.read_text()) for p in args.accuracy]
    speed = json.loads(args.speed.read_text()) if args.speed else None
    print(plot(accuracy, speed, args.dataset, args.out))


if __name__ == "__main__":
    main()
